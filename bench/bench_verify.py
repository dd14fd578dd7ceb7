"""Throughput of `store.verify()` (what `refundry records verify` runs) on one realistic store,
this tree against a baseline revision, in one run on one machine.

    .venv/bin/python bench/bench_verify.py [N] [--baseline REV] [--repeat K]
        [--stores sqlite,postgresql] [--postgres URL]

Builds one store per kind with this tree, once: N requests (default 50,000) recorded by
`refundry run --db` as bench_run_db.py makes them (history index on), then the lifecycle a
real store goes on to hold: of every ten cases held for review, six are approved (by one or
two reviewers, as the store's threshold demands) and two denied; half of the approved ones are
processed, and of those half refunded. Then each tree verifies that same store K times
(default 3, the trees taking turns so a load spike hits both), timed in its process with
`store.verify()` only (start-up and opening excluded), and the best run of each is printed as
events/s with the ratio. Verify only reads: both trees see the same bytes. Timing lives here,
never in the test suite.
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
import sys, time
from refundry.records.stores import open_store
store = open_store(sys.argv[1], create=False)
t0 = time.perf_counter()
result = store.verify()
print(time.perf_counter() - t0, result.count, result.ok, result.problem)
sys.exit(0 if result.ok else 1)
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


def timed(src: Path, db: str) -> tuple[float, int]:
    done = subprocess.run([sys.executable, "-c", VERIFY, db], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)})
    if done.returncode != 0:
        sys.exit(f"verify with {src}: {done.stdout[-500:]} {done.stderr[-2000:]}")
    seconds, count = done.stdout.split()[:2]
    return float(seconds), int(count)


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=50_000)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"))
    ap.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    ap.add_argument("--repeat", type=int, default=3)
    return ap.parse_args()


def main() -> None:
    args = options()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        trees = [(args.baseline, tree_of(args.baseline, tmp))] if args.baseline else []
        trees.append(("this tree", ROOT / "src"))
        for kind in args.stores.split(","):
            if kind == "postgresql" and not args.postgres:
                continue
            db = build(kind, args.n, args.postgres, tmp)
            best: dict[str, float] = {}
            events = 0
            for _ in range(args.repeat):
                for label, src in trees:
                    seconds, events = timed(src, db)
                    best[label] = min(best.get(label, seconds), seconds)
            for label, _src in trees:
                print(json.dumps({"tree": label, "store": kind, "events": events,
                                  "verify_seconds": round(best[label], 3),
                                  "events_per_second": round(events / best[label])}), flush=True)
            if args.baseline:
                print(json.dumps({"store": kind, "speed-up": round(
                    best[args.baseline] / best["this tree"], 2)}), flush=True)
            print(f"load average {os.getloadavg()}", flush=True)
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
