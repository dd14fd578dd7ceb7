"""``batch(pipelined=True)``: the API's group commit sends its writes and the commit without
waiting for each (PostgreSQL pipeline mode). What it records, and the index it syncs, are what
a plain batch gives; a statement that fails anywhere in it fails the whole batch, with
nothing written, rather than being lost on the way to a commit."""

from __future__ import annotations

import contextlib

import pytest

from refundry.records.events import RecordError
from refundry.records.history import History

from .conftest import make_request


def _group(store, engine, prefix, n=4):
    requests = [make_request(f"{prefix}-{i}", customer={"id": f"cust-{prefix}"})
                for i in range(n)]
    return [store.prepare(r, engine.evaluate(r), engine=engine, actor="svc") for r in requests]


def test_a_pipelined_batch_records_and_indexes_what_a_plain_one_does(store, engine):
    history = History(store)
    history.sync()
    for pipelined, prefix in ((True, "p"), (False, "q"), (True, "r")):
        with store.batch(pipelined=pipelined):
            got = store.record_many(_group(store, engine, prefix))
            history.sync([case.events[-1] for case, _created in got])
        assert [created for _case, created in got] == [True] * 4
    assert store.verify().ok and store.checkpoint().count == 12
    assert history.watermark() == 12
    # The index counts what the pipelined batches appended, as it counts the plain one's.
    later = make_request("p-later", customer={"id": "cust-p"})
    assert history.facts(later)["history"]["requests_by_customer_30d"] == 5
    retry = _group(store, engine, "r")[:1]
    with store.batch(pipelined=True):
        [(case, created)] = store.record_many(retry)
    assert not created and case.request_id == "r-0"
    assert store.checkpoint().count == 12


def test_a_failing_statement_fails_the_pipelined_batch_and_nothing_is_written(store, engine):
    with pytest.raises(RecordError), store.batch(pipelined=True):
        store.record_many(_group(store, engine, "a"))
        with store.transaction() as tx:
            tx.write("INSERT INTO no_such_table VALUES (1)")
    assert store.checkpoint().count == 0
    # The store goes on: the same group again, pipelined.
    with store.batch(pipelined=True):
        assert all(created for _c, created in store.record_many(_group(store, engine, "a")))
    assert store.verify().ok and store.checkpoint().count == 4


def test_what_a_pipelined_batch_says_it_wrote_is_what_the_store_holds(store, engine):
    """An error caught inside the batch (as a savepoint's caller catches it) either fails
    the batch, with nothing written, or is undone by its savepoint and the rest commits:
    never a batch that reports success for appends the server threw away."""
    raised = False
    try:
        with store.batch(pipelined=True):
            store.record_many(_group(store, engine, "b"))
            with contextlib.suppress(RecordError), store.transaction() as tx:
                tx.write("INSERT INTO no_such_table VALUES (1)")
                tx.execute("SELECT 1")  # the error reaches here at the latest
    except RecordError:
        raised = True
    assert store.checkpoint().count == (0 if raised else 4)
    assert store.verify().ok


def test_reads_sent_together_answer_as_each_alone(store, engine):
    with store.batch():
        store.record_many(_group(store, engine, "c", 3))
    reads = [("SELECT request_id FROM events WHERE seq <= ? ORDER BY seq", (2,)),
             ("SELECT COUNT(*) FROM events", ()),
             ("SELECT request_id FROM events WHERE request_id = ?", ("none",))]
    together = store.query_all(reads)
    assert [[tuple(r) for r in rows] for rows in together] == [
        [tuple(r) for r in store.query(sql, args)] for sql, args in reads]
    assert [r[0] for r in together[0]] == ["c-0", "c-1"] and together[1][0][0] == 3
    with pytest.raises(RecordError):
        store.query_all([("SELECT 1", ()), ("SELECT * FROM no_such_table", ())])
    assert store.query_all([("SELECT COUNT(*) FROM events", ())])[0][0][0] == 3
