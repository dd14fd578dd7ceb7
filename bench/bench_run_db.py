"""Throughput of `refundry run --db` (history enrichment on, every decision recorded) and of
`refundry records verify`, on SQLite and PostgreSQL, 1 and 2 workers, this tree against a
baseline revision, in one run on one machine.

    .venv/bin/python bench/bench_run_db.py [N] [--baseline REV] [--workers 1,2]
        [--stores sqlite,postgresql] [--postgres URL]

Generates N requests (default 5,000) from 1,000 customers (each with an email and a card of
its own) over 60 transactions a customer may repeat, so the history lookups find matches; a third approved, a third denied, a third held
for review. Each (tree, store, workers) runs the CLI as a user would on a fresh store, and
prints the runner's requests/s (its own clock: reading, enriching, evaluating, recording,
writing, journalling) and per CPU second of the run, then `store.verify()` of that store as
events/s (timed in its process, start-up excluded). ``--baseline REV`` runs the same
on `git archive REV src schemas` first; PostgreSQL needs ``--postgres`` or REFUNDRY_TEST_POSTGRES_URL.
Timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from pg_server_cpu import ServerCPU

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "examples" / "request.json").read_text())


def generate(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            customer = i % 1_000
            req = {**EXAMPLE, "request_id": f"bench-{i:07d}",
                   "customer": {"id": f"cust-{customer}", "email": f"c{customer}@example.com"},
                   "transaction": {**EXAMPLE["transaction"], "id": f"ord-{customer}-{i % 60}",
                                   "payment_method": {"type": "card", "last4": f"{customer:04d}"}}}
            if i % 3 == 1:
                req["requested_at"] = "2024-04-20T10:00:00+02:00"
            elif i % 3 == 2:
                req["reason"] = "defective"
            fh.write(json.dumps(req) + "\n")


def tree_of(rev: str, tmp: Path) -> Path:
    """The ``src`` of revision ``rev``, unpacked under ``tmp`` (put first on PYTHONPATH)."""
    dest = tmp / f"rev-{rev.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "schemas"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


# `store.verify()` timed inside the process: the CLI's start-up (about a second) would be most
# of a verify of a few thousand events.
VERIFY = """
import sys, time
from refundry.records.stores import open_store
store = open_store(sys.argv[1], create=False)
t0 = time.perf_counter()
result = store.verify()
print(time.perf_counter() - t0, result.ok)
sys.exit(0 if result.ok else 1)
"""


def store_url(kind: str, pg: str | None, tmp: Path) -> str:
    if kind == "sqlite":
        return str(tmp / f"bench-{uuid.uuid4().hex[:8]}.db")
    assert pg is not None
    sep = "&" if "?" in pg else "?"
    return f"{pg}{sep}schema=bench_{uuid.uuid4().hex[:10]}"


def cli(src: Path, args: list[str], extra_env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(src), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "refundry.cli", *args], capture_output=True,
                          text=True, env=env)


def one(label: str, src: Path, kind: str, workers: int, data: Path, n: int, pg: str | None,
        tmp: Path) -> dict[str, object]:
    db = store_url(kind, pg, tmp)
    try:
        return measure(label, src, kind, workers, data, n, tmp, db)
    finally:
        if kind == "postgresql":  # a run's schema is its alone: never left behind
            import psycopg

            schema = db.rsplit("schema=", 1)[1]
            with psycopg.connect(str(pg), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def measure(label: str, src: Path, kind: str, workers: int, data: Path, n: int, tmp: Path,
            db: str) -> dict[str, object]:
    out = tmp / f"out-{uuid.uuid4().hex[:8]}.jsonl"
    with contextlib.ExitStack() as stack:
        # The database server's CPU for the run's connections, where it is PostgreSQL.
        pg = stack.enter_context(ServerCPU(db)) if kind == "postgresql" else None
        if pg:
            pg.start()
        cpu0 = _children_cpu()
        done = cli(src, ["run", "--source", "jsonl", "--input", str(data), "--out", str(out),
                         "--rulesets", str(ROOT / "rulesets"), "--workers", str(workers),
                         "--db", db, "--by", "bench"], pg.env if pg else None)
        cpu = _children_cpu() - cpu0
        if pg:
            pg.stop()
    if done.returncode != 0:
        sys.exit(f"{label} {kind} x{workers}: {done.stderr[-2000:]}")
    seconds = float(re.search(r"seconds (\d+\.\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    verified = subprocess.run([sys.executable, "-c", VERIFY, db], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(src)})
    if verified.returncode != 0:
        sys.exit(f"{label} {kind} verify: {verified.stdout[-500:]} {verified.stderr[-2000:]}")
    verify_s = float(verified.stdout.split()[0])
    return {"tree": label, "store": kind, "workers": workers, "requests": n,
            "run_seconds": seconds, "requests_per_second": round(n / seconds),
            # CPU of the run's own process and its workers (not the database server's): on a
            # machine others load, the rate per CPU second is what compares between trees.
            "cpu_seconds": round(cpu, 2), "requests_per_cpu_second": round(n / cpu),
            # The PostgreSQL server's CPU for the run's connections (its backends, from /proc).
            "pg_server_us_per_request": None if pg is None or pg.seconds is None
            else round(pg.seconds * 1e6 / n),
            "verify_seconds": round(verify_s, 3), "events_per_second": round(n / verify_s)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=5_000)
    ap.add_argument("--baseline", help="a git revision to measure first, e.g. main")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    kinds = [k for k in args.stores.split(",") if k != "postgresql" or args.postgres]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "requests.jsonl"
        generate(data, args.n)
        trees = [(args.baseline, tree_of(args.baseline, tmp))] if args.baseline else []
        trees.append(("this tree", ROOT / "src"))
        for label, src in trees:
            for kind in kinds:
                for workers in [int(w) for w in args.workers.split(",")]:
                    row = one(label, src, kind, workers, data, args.n, args.postgres, tmp)
                    print(json.dumps(row), flush=True)
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
