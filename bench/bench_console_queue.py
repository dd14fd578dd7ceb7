"""The console's review queue at many waiting cases: the time to read one page (first, a page
in the middle, the last, a client filter, a search by id) at N waiting cases, as a ratio to the
same at a small store. Keyset paging should keep every ratio near 1, except the page's total
(counted up to 1,000 and shown as "1000+" past that).

    .venv/bin/python bench/bench_console_queue.py --cases 100000 --small 1000

The stores are temporary SQLite files; timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from refundry.app.console.demo import request
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500


def fill(path: Path, n: int, engine: Any) -> Any:
    store = open_store(path)
    now = dt.datetime.now(dt.UTC)
    template = request("x", "acme", "700.00", 5, now)
    decision = engine.evaluate(template)
    for start in range(0, n, BATCH):
        with store.batch():
            for i in range(start, min(n, start + BATCH)):
                req = {**template, "request_id": f"b-{i:07d}"}
                store.record(req, decision.__class__(**{**_fields(decision),
                                                        "request_id": req["request_id"]}),
                             engine=engine, actor="bench")
    return store


def _fields(decision: Any) -> dict[str, Any]:
    import attrs

    return {f.name: getattr(decision, f.name) for f in attrs.fields(type(decision))}


def timed(fn: Any, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(store: Any, n: int) -> dict[str, float]:
    mid_seq = n // 2
    return {
        "first page": timed(lambda: store.review_queue(limit=50)),
        "middle page": timed(lambda: store.review_queue(after=mid_seq, limit=50)),
        "last page": timed(lambda: store.review_queue(before=10**12, limit=50)),
        "client filter": timed(lambda: store.review_queue(client="acme", limit=50)),
        "search by id": timed(lambda: store.review_queue(request_id=f"b-{n // 2:07d}")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=1_000)
    args = ap.parse_args()
    engine = Rulesets([ROOT / "rulesets"]).engine
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in (args.small, args.cases):
            t0 = time.perf_counter()
            store = fill(Path(tmp) / f"q{n}.db", n, engine)
            print(f"recorded {n} waiting cases in {time.perf_counter() - t0:.0f} s", flush=True)
            results[n] = measure(store, n)
            store.close()
    print(f"{'':14} {args.small:>10} {args.cases:>10}  ratio")
    for name in results[args.small]:
        a, b = results[args.small][name], results[args.cases][name]
        print(f"{name:14} {a * 1000:8.1f}ms {b * 1000:8.1f}ms  {b / a:5.1f}x")


if __name__ == "__main__":
    main()
