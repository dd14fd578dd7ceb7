"""Throughput of `store.verify()` (what `refundry records verify` runs) on one realistic store,
this tree against a baseline revision, in one run on one machine.

    .venv/bin/python bench/bench_verify.py [N] [--baseline REV] [--repeat K]
        [--stores sqlite,postgresql] [--postgres URL] [--workers N,...] [--floor]

Builds one store per kind with this tree, once: N requests (default 50,000) recorded by
`refundry run --db` as bench_run_db.py makes them (history index on), then the lifecycle a
real store goes on to hold: of every ten cases held for review, six are approved (by one or
two reviewers, as the store's threshold demands) and two denied; half of the approved ones are
processed, and of those half refunded. Then each tree verifies that same store K times
(default 3, the trees taking turns so a load spike hits both), timed in its process with
`store.verify()` only (start-up and opening excluded), and the best run of each is printed as
events/s with the ratio, and the CPU time per event of that run (the process and verify's
worker processes; and the process alone, with workers the serial part) and the least of any
run; `--workers 1,2` also times this tree, and the baseline with more than one, with
`verify(workers=N)`. `--floor` measures, with this tree, the CPU per event of only reading the
rows as the walk reads them, then hashing them too, then decoding them too: what no verify in
one process goes under. Verify only reads: both trees see the same bytes. A PostgreSQL store's
schema is dropped at the end. Timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_run_db import cli, generate, store_url, tree_of  # noqa: E402 - the same requests and trees

VERIFY = """
import resource, sys, time
from refundry.records.stores import open_store
store = open_store(sys.argv[1], create=False)
options = {} if sys.argv[2] == "default" else {"workers": int(sys.argv[2])}
t0, cpu0 = time.perf_counter(), time.process_time()
result = store.verify(**options)
children = resource.getrusage(resource.RUSAGE_CHILDREN)  # verify's worker processes, if any
own = time.process_time() - cpu0
cpu = own + children.ru_utime + children.ru_stime
print(time.perf_counter() - t0, result.count, cpu, own, result.ok, result.problem)
sys.exit(0 if result.ok else 1)
"""

# The floor under verify in one process, with this tree: CPU per event of reading every row as
# the walk reads it, then also hashing each body, then also decoding it as the walk does; all
# that verify adds is above the last one. Best of the repeats, in one process.
FLOOR = """
import hashlib, json, sys, time, gc
from refundry.records.events import _read_body
from refundry.records.stores import open_store
store = open_store(sys.argv[1], create=False)
gc.disable()  # as in the walk

def read():
    for row in store._chain_rows():
        pass

def hashed():
    for row in store._chain_rows():
        body = row[5] if isinstance(row[5], bytes) else row[5].encode()
        hashlib.sha256(body).hexdigest()

def decoded():
    for row in store._chain_rows():
        body = row[5] if isinstance(row[5], bytes) else row[5].encode()
        hashlib.sha256(body).hexdigest()
        _read_body(body, row[2])

count = store.checkpoint().count
out = {}
for name, stage in (("read", read), ("read+sha256", hashed), ("read+sha256+decode", decoded)):
    best = float("inf")
    for _ in range(int(sys.argv[2])):
        cpu0 = time.process_time()
        stage()
        best = min(best, time.process_time() - cpu0)
    out[name] = round(best / count * 1e6, 2)
print(json.dumps(out))
"""

# The lifecycle after the evaluations, with this tree's store API.
LIFECYCLE = """
import sys
from refundry.records.stores import open_store
store = open_store(sys.argv[1], create=False)
waiting = [c for c in store.cases("manual_review")]
approved = []
for i, case in enumerate(waiting):
    with store.batch():
        if i % 10 < 6:
            for reviewer in ("rev-a", "rev-b")[:case.required_approvals]:
                store.review(case.request_id, actor=reviewer, approve=True, reason="checked")
            approved.append(case.request_id)
        elif i % 10 < 8:
            store.review(case.request_id, actor="rev-a", approve=False, reason="used")
for i, rid in enumerate(approved[: len(approved) // 2]):
    store.mark(rid, "processed", actor="ops", reference=f"pay-{i}")
    if i % 2 == 0:
        store.mark(rid, "refunded", actor="ops", reference=f"pay-{i}")
print(store.checkpoint().count)
store.close()
"""


def build(kind: str, n: int, pg: str | None, tmp: Path) -> str:
    db = store_url(kind, pg, tmp)
    data = tmp / "requests.jsonl"
    generate(data, n)
    # An output of its own per store: the run's journal would skip requests already done.
    done = cli(ROOT / "src", ["run", "--source", "jsonl", "--input", str(data), "--out",
                              str(tmp / f"out-{kind}.jsonl"), "--rulesets", str(ROOT / "rulesets"),
                              "--db", db, "--by", "bench"])
    if done.returncode != 0:
        sys.exit(f"building the {kind} store: {done.stderr[-2000:]}")
    subprocess.run([sys.executable, "-c", LIFECYCLE, db], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return db


def timed(src: Path, db: str, workers: str = "default") -> tuple[float, int, float, float]:
    """Wall seconds of ``store.verify()``, the events, the CPU seconds of the process and its
    worker processes, and of the process alone (with workers, the serial part)."""
    done = subprocess.run([sys.executable, "-c", VERIFY, db, workers], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode != 0:
        sys.exit(f"verify with {src}: {done.stdout[-500:]} {done.stderr[-2000:]}")
    seconds, count, cpu, own = done.stdout.split()[:4]
    return float(seconds), int(count), float(cpu), float(own)


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=50_000)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"))
    ap.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--floor", action="store_true", help="also measure, with this tree, the CPU "
                    "per event of reading, hashing and decoding the rows alone (verify's floor)")
    ap.add_argument("--workers", default="", help="also time this tree with verify(workers=N) "
                    "for each N of a comma-separated list (the default call is always timed)")
    return ap.parse_args()


def drop(db: str, pg: str | None) -> None:
    """A bench store's PostgreSQL schema is its alone: never left behind."""
    if db.startswith("postgresql://"):
        import psycopg

        schema = db.rsplit("schema=", 1)[1]
        with psycopg.connect(str(pg), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    args = options()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        counts = [n for n in args.workers.split(",") if n]
        trees = []
        if args.baseline:
            base = tree_of(args.baseline, tmp)
            trees.append((args.baseline, base, "default"))
            # Its workers too: where both trees use them, that is the comparison to read.
            trees += [(f"{args.baseline}, workers={n}", base, n) for n in counts if n != "1"]
        trees.append(("this tree", ROOT / "src", "default"))
        trees += [(f"this tree, workers={n}", ROOT / "src", n) for n in counts]
        for kind in args.stores.split(","):
            if kind == "postgresql" and not args.postgres:
                continue
            db = build(kind, args.n, args.postgres, tmp)
            try:
                report(kind, db, trees, args)
            finally:
                drop(db, args.postgres)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")


def report(kind: str, db: str, trees: list[tuple[str, Path, str]], args: argparse.Namespace) -> None:
    best: dict[str, tuple[float, float, float]] = {}  # the fastest run's wall, CPU, own CPU
    least: dict[str, float] = {}  # the least CPU of any run: on a loaded machine, the steadier
    events = 0
    for _ in range(args.repeat):
        for label, src, workers in trees:
            seconds, events, cpu, own = timed(src, db, workers)
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, cpu, own)
            least[label] = min(cpu, least.get(label, cpu))
            print(f"  {label}: {seconds:.3f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    for label, _src, _workers in trees:
        seconds, cpu, own = best[label]
        print(json.dumps({"tree": label, "store": kind, "events": events,
                          "verify_seconds": round(seconds, 3),
                          "events_per_second": round(events / seconds),
                          "cpu_us_per_event": round(cpu / events * 1e6, 1),
                          "parent_cpu_us_per_event": round(own / events * 1e6, 1),
                          "least_cpu_us_per_event": round(least[label] / events * 1e6, 1)}),
              flush=True)
    if args.baseline:
        print(json.dumps({"store": kind, "speed-up": round(
            best[args.baseline][0] / best["this tree"][0], 2)}), flush=True)
    if args.floor:
        done = subprocess.run([sys.executable, "-c", FLOOR, db, str(args.repeat)],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        print(json.dumps({"store": kind, "floor_cpu_us_per_event": json.loads(done.stdout)}))
    print(f"load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
