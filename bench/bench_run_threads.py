"""Where the parent of `refundry run --db --workers 2` spends its CPU: its main thread, the
process pool's result thread (and within it, unpickling each kind of result the workers send)
and its feeder thread (pickling the work), per request, from ``time.thread_time``.

    PYTHONPATH=TREE/src .venv/bin/python bench/bench_run_threads.py [N] [--workers 2]

A library run of bench_run_db.py's N requests (default 3,000) on a fresh SQLite store, in this
process; run it once per tree (``git archive REV src schemas`` for another), alternating.
Timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing.queues as mq
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import process
from multiprocessing import connection
from pathlib import Path
from typing import Any

from bench_run_db import ROOT, generate

spent: dict[str, float] = {}


def add(key: str, value: float) -> None:
    spent[key] = spent.get(key, 0.0) + value


def timed(key: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            add(key, time.thread_time() - t0)
    return call


def loads(inner: Callable[..., Any]) -> Callable[..., Any]:
    """The result thread's unpickling, by the kind of result (keys, decisions), with bytes."""
    def call(buf: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        got = inner(buf, *args, **kwargs)
        took = time.thread_time() - t0
        res = getattr(got, "result", None)
        kind = type(res[0]).__name__ if isinstance(res, list) and res else type(got).__name__
        add(f"unpickle {kind}", took)
        add(f"KB {kind}", len(buf) / 1e9)  # shown per request as µs are: bytes / 1e3
        return got
    return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=3_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    process._ExecutorManagerThread.run = timed(  # type: ignore[method-assign]
        "result thread", process._ExecutorManagerThread.run)
    connection._ForkingPickler.loads = loads(connection._ForkingPickler.loads)  # type: ignore[attr-defined]
    mq.Queue._feed = staticmethod(timed("feeder thread", mq.Queue._feed))  # type: ignore[attr-defined]
    mq._ForkingPickler.dumps = timed("pickle work", mq._ForkingPickler.dumps)  # type: ignore[attr-defined]

    from refundry.app import runner
    from refundry.core.engine import Engine
    from refundry.plugins.history import plugins_with_history
    from refundry.records.history import History
    from refundry.records.stores import open_store

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "in.jsonl"
        generate(data, args.n)
        engine = Engine.from_path([ROOT / "rulesets"])
        store = open_store(Path(tmp) / "s.db")
        history = History(store)
        record = runner.StoreRecorder(store, engine, "bench", index=history)
        t0, m0 = time.process_time(), time.thread_time()
        runner.run(source="jsonl", input_path=data, out=Path(tmp) / "o.jsonl",
                   workers=args.workers, rulesets=[ROOT / "rulesets"], engine=engine,
                   record=record, plugins=plugins_with_history(store, history),
                   id_key=store.salt)
        add("main thread", time.thread_time() - m0)
        time.sleep(0.5)  # the pool's threads end after the run returns
        add("process", time.process_time() - t0)
        store.close()
    print(", ".join(f"{k} {v * 1e6 / args.n:.1f}" for k, v in spent.items()),
          f"(µs or KB a request); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
