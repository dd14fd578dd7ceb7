"""What do approval records cost? Append and verify throughput on SQLite and PostgreSQL.

Appends are real ``store.record`` calls (masking, canonical JSON, SHA-256 chained to the head,
one serialised transaction each) and ``store.note`` calls, first from one process, then from
several at once on the same store; decisions are made beforehand so only recording is timed.
Verify recomputes the whole chain.

    python bench/bench_records.py                       # SQLite; PostgreSQL too when
                                                        # REFUNDRY_TEST_POSTGRES_URL is set
    python bench/bench_records.py --events 5000 --processes 4 --postgres postgresql://...

Each PostgreSQL run uses a schema of its own and drops it afterwards; SQLite runs use a
temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import refundry
from refundry.records.stores import open_store

ROOT = Path(__file__).resolve().parents[1]
REQUEST = json.loads((ROOT / "examples" / "request.json").read_text(encoding="utf-8"))


def _requests(prefix: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        req = copy.deepcopy(REQUEST)
        req["request_id"] = f"{prefix}-{i}"
        req["note"] = f"customer {i} says the size is wrong; card 4111 1111 1111 1111"
        out.append(req)
    return out


def _append(url: str, prefix: str, n: int) -> tuple[float, int]:
    """Record ``n`` cases then add ``n`` notes; the seconds spent appending and the events."""
    ready = mp.get_context("spawn").Event()
    ready.set()
    return _append_after(url, prefix, n, ready)


def _worker(url: str, prefix: str, n: int, start, out) -> None:
    try:
        out.put(_append_after(url, prefix, n, start))
    except Exception as exc:  # the parent reports it
        out.put(repr(exc))


def _append_after(url: str, prefix: str, n: int, start) -> tuple[float, int]:
    engine = refundry.Engine.from_path(ROOT / "rulesets")
    reqs = _requests(prefix, n)
    decisions = [engine.evaluate(r) for r in reqs]
    store = open_store(url)
    start.wait()
    try:
        t0 = time.perf_counter()
        for req, decision in zip(reqs, decisions, strict=True):
            store.record(req, decision, engine=engine, actor=prefix)
        for req in reqs:
            store.note(req["request_id"], "checked", actor=prefix)
        return time.perf_counter() - t0, 2 * n
    finally:
        store.close()


def _parallel(url: str, processes: int, n: int) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, f"p{i}", n, start, out))
             for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise SystemExit(f"a writer failed: {bad[0]}")
    return wall, sum(r[1] for r in results)


def _verify(url: str) -> tuple[float, int, bool]:
    store = open_store(url)
    try:
        t0 = time.perf_counter()
        result = store.verify()
        return time.perf_counter() - t0, result.count, result.ok
    finally:
        store.close()


def bench(kind: str, url: str, events: int, processes: int) -> dict:
    single_s, single_n = _append(url, "single", events)
    par_s, par_n = _parallel(url, processes, events)
    ver_s, ver_n, ok = _verify(url)
    if not ok:
        raise SystemExit(f"{kind}: the chain does not verify after the run")
    return {
        "store": kind,
        "append_one_process_events_per_s": round(single_n / single_s),
        "append_one_process_events": single_n,
        f"append_{processes}_processes_events_per_s": round(par_n / par_s),
        f"append_{processes}_processes_events": par_n,
        "verify_events_per_s": round(ver_n / ver_s),
        "verify_events": ver_n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1000,
                    help="cases per writer (each adds an evaluated event and a note)")
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"),
                    help="a PostgreSQL URL (default: $REFUNDRY_TEST_POSTGRES_URL; none: skip)")
    args = ap.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="refundry-bench-") as tmp:
        results.append(bench("sqlite", str(Path(tmp) / "bench.db"), args.events, args.processes))
    if args.postgres:
        import psycopg

        schema = f"refundry_bench_{uuid.uuid4().hex[:10]}"
        sep = "&" if "?" in args.postgres else "?"
        try:
            results.append(bench("postgresql", f"{args.postgres}{sep}schema={schema}",
                                 args.events, args.processes))
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        print("postgresql skipped: set REFUNDRY_TEST_POSTGRES_URL or --postgres", file=sys.stderr)
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
