"""Inside a batch, a decision opens its case without the case being read first (the store's
index of one evaluation per case refuses a second opening): the same request again must still
be the same case, a different request under a known id still refused, and the chain whole."""

from __future__ import annotations

import sqlite3

import pytest

from refundry.records.events import RecordError

from .conftest import make_request


def record_in_a_batch(store, engine) -> list[bool]:
    first, other = make_request("b-1"), make_request("b-2")
    changed = make_request("b-1", amount="1.00")
    created = []
    with store.batch():
        for req in (first, other, first):
            _case, new = store.record(req, engine.evaluate(req), engine=engine, actor="batch")
            created.append(new)
        with pytest.raises(RecordError, match="already recorded with different content"):
            store.record(changed, engine.evaluate(changed), engine=engine, actor="batch")
        created.append(store.record(make_request("b-3"), engine.evaluate(make_request("b-3")),
                                    engine=engine, actor="batch")[1])
    return created


def test_a_case_is_opened_once_in_a_batch(store, engine) -> None:
    assert record_in_a_batch(store, engine) == [True, True, False, True]
    assert [e.request_id for e in store.events()] == ["b-1", "b-2", "b-3"]
    assert store.case("b-1").request["amount"] != "1.00"
    assert store.verify().ok


def test_without_the_index_the_case_is_read_first(tmp_path, engine) -> None:
    from refundry.records.stores import open_store

    path = tmp_path / "old.db"
    open_store(path).close()
    with sqlite3.connect(path) as conn:  # a store whose index was dropped
        conn.execute("DROP INDEX events_one_evaluation")
    store = open_store(path)
    try:
        assert record_in_a_batch(store, engine) == [True, True, False, True]
        assert [e.request_id for e in store.events()] == ["b-1", "b-2", "b-3"]
        assert store.verify().ok
    finally:
        store.close()
