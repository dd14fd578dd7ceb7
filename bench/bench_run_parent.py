"""The parent's CPU per request of a library ``run`` with ``--db`` (``time.process_time``
around ``Batch.run``: start-up, the workers and the database server excluded), for trees
alternated run by run, so a loaded machine's swings fall on both alike.

    .venv/bin/python bench/bench_run_parent.py [N] [--baseline REV] [--rounds 3]
        [--workers 1,2] [--stores sqlite,postgresql] [--postgres URL] [--profile FILE]

Each (round, store, workers) runs the baseline's tree then this one in fresh processes on
fresh stores and prints the parent's µs of CPU a request, the wall requests/s and the load.
``--profile FILE`` (this tree only, one run) writes the parent's cProfile stats instead.
Timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench_run_db import ROOT, generate, store_url, tree_of

CHILD = r"""
import cProfile, json, sys, time
from refundry.app import runner
from refundry.core.engine import Engine
from refundry.plugins.history import plugins_with_history
from refundry.records.history import History
from refundry.records.stores import open_store

data, out, db, workers, rulesets, profile = sys.argv[1:7]
engine = Engine.from_path([rulesets])
store = open_store(db)
history = History(store)
record = runner.StoreRecorder(store, engine, "bench", index=history)
plugins = plugins_with_history(store, history)
spent = {}
inner = runner.Batch.run
import os, threading
threads = {}
def sample(stop):
    # Each thread's CPU (utime + stime ticks), kept as last seen: the pool's threads (that
    # pickle the work and unpickle the results) end with the pool.
    while not stop.wait(0.02):
        for tid in os.listdir("/proc/self/task"):
            try:
                f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            threads[tid] = int(f[11]) + int(f[12])
stop = threading.Event()
sampler = threading.Thread(target=sample, args=(stop,), daemon=True)
def timed(self, *a, **k):
    prof = cProfile.Profile() if profile != "-" else None
    t0, w0 = time.process_time(), time.perf_counter()
    if prof: prof.enable()
    sampler.start()
    try:
        return inner(self, *a, **k)
    finally:
        if prof:
            prof.disable(); prof.dump_stats(profile)
        spent["cpu"], spent["wall"] = time.process_time() - t0, time.perf_counter() - w0
        stop.set(); sampler.join()
        tick = os.sysconf("SC_CLK_TCK")
        spent["main_thread"] = threads.get(str(os.getpid()), 0) / tick
        spent["other_threads"] = sum(v for k, v in threads.items() if k != str(os.getpid())) / tick
runner.Batch.run = timed
summary = runner.run(source="jsonl", input_path=data, out=out, workers=int(workers),
                     rulesets=[rulesets], engine=engine, record=record, plugins=plugins,
                     id_key=store.salt)
assert summary.kinds["request"] > 0 and not summary.dead_letters, summary.to_dict()
print(json.dumps(spent))
"""


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def once(src: Path, kind: str, workers: int, data: Path, tmp: Path, pg: str | None,
         profile: str = "-") -> dict[str, float]:
    db = store_url(kind, pg, tmp)
    out = tmp / f"out-{uuid.uuid4().hex[:8]}.jsonl"
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), db, str(workers),
                               str(ROOT / "rulesets"), profile], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(src)})
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        if kind == "postgresql":
            import psycopg

            schema = db.rsplit("schema=", 1)[1]
            with psycopg.connect(str(pg), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=3_000)
    ap.add_argument("--baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"))
    ap.add_argument("--profile", help="'-': one run of this tree, its threads' CPU")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "requests.jsonl"
        generate(data, args.n)
        here = ROOT / "src"
        if args.profile:
            kind, workers = args.stores.split(",")[0], int(args.workers.split(",")[0])
            got = once(here, kind, workers, data, tmp, args.postgres, args.profile)
            print(f"{kind} x{workers}: {got['cpu'] * 1e6 / args.n:.0f} us/request (threads: main "
                  f"{got['main_thread'] * 1e6 / args.n:.0f} incl. start-up, others "
                  f"{got['other_threads'] * 1e6 / args.n:.0f}), load {load()}")
            return
        trees = [("branch", here)]
        if args.baseline:
            trees.insert(0, (args.baseline, tree_of(args.baseline, tmp)))
        for r in range(args.rounds):
            for kind in args.stores.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    for label, src in trees:
                        before = load()
                        got = once(src, kind, workers, data, tmp, args.postgres)
                        print(f"round {r + 1} {kind} x{workers} {label:>8}: parent "
                              f"{got['cpu'] * 1e6 / args.n:5.0f} us/request (the pool's threads "
                              f"{got['other_threads'] * 1e6 / args.n:3.0f}), "
                              f"{args.n / got['wall']:6.0f} requests/s, load {before} -> {load()}",
                              flush=True)


if __name__ == "__main__":
    main()
