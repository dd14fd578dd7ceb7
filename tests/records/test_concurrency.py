"""Several processes appending to one store: the chain stays whole, no event is lost and a
request submitted by all of them at once is still one case."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter

import pytest

from refundry.records.stores import open_store

from .conftest import RULESETS, make_request

SHARED = 20  # requests every process submits: each must become exactly one case


def _worker(url: str, worker: int, n: int, start, results) -> None:
    """Append exactly ``n`` events: a new case, then a note on it, and so on; then submit the
    shared requests, which append only for whichever process gets there first."""
    import refundry

    engine = refundry.Engine.from_path(RULESETS)
    store = open_store(url)
    start.wait()
    created = 0
    try:
        for i in range(n):
            if i % 2 == 0:
                req = make_request(f"w{worker}-{i}")
                store.record(req, engine.evaluate(req), engine=engine, actor=f"w{worker}")
            else:
                store.note(f"w{worker}-{i - 1}", f"note {i}", actor=f"w{worker}")
        for k in range(SHARED):
            req = make_request(f"shared-{k}")
            _case, made = store.record(req, engine.evaluate(req), engine=engine,
                                       actor=f"w{worker}")
            created += made
        results.put((worker, created, None))
    except Exception as exc:  # reported to the test, which fails with it
        results.put((worker, created, repr(exc)))
    finally:
        store.close()


def run_writers(url: str, processes: int, per_process: int) -> None:
    open_store(url).close()  # create it once, as a deployment would
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, w, per_process, start, results))
             for w in range(processes)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [err for _w, _c, err in outcomes if err]
    assert not errors, errors
    assert sum(c for _w, c, _e in outcomes) == SHARED

    store = open_store(url)
    try:
        result = store.verify()
        assert result.ok, result.problem
        assert result.count == processes * per_process + SHARED
        evaluated = Counter(e.request_id for e in store.events() if e.type == "evaluated")
        assert max(evaluated.values()) == 1
        assert len(evaluated) == processes * ((per_process + 1) // 2) + SHARED
        per_writer = Counter(e.actor for e in store.events() if not e.request_id.startswith("shared"))
        assert per_writer == {f"w{w}": per_process for w in range(processes)}
    finally:
        store.close()


def test_four_writers_keep_one_chain(store_url):
    run_writers(store_url, 4, 250)


@pytest.mark.slow
def test_four_writers_times_five_thousand(store_url):
    run_writers(store_url, 4, 5_000)


def test_threads_sharing_one_store_object(store, engine):
    """A service shares one store between its threads, as it shares the engine."""
    import threading

    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                req = make_request(f"t{t}-{i}")
                store.record(req, engine.evaluate(req), engine=engine, actor=f"t{t}")
                store.note(f"t{t}-{i}", "seen", actor=f"t{t}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    result = store.verify()
    assert result.ok and result.count == 4 * 25 * 2
