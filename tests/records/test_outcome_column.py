"""The `outcome` column the appender writes for the review queue, at its boundaries: a store
made before the column is opened, verified, queued and appended to as it is, and upgraded when
opened for writing; a column that disagrees with its hashed body is caught by verify. On
SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3

from refundry.records import events
from refundry.records.stores import _split_pg_url, open_store

from .conftest import make_request

# The review-queue index of a store made before the column: on the body alone.
_OLD_INDEX = {
    "sqlite": "CASE WHEN json_valid(body) THEN json_extract(body, '$.decision.outcome') END",
    "postgresql": "refundry_json_text(body, '{decision,outcome}')",
}


def _sql(url: str, *statements: str, triggers_off: bool = False) -> list:
    """Run ``statements`` behind the store's back, as someone with database access could;
    the rows of the last."""
    if url.startswith("postgresql://"):
        import psycopg

        conninfo, schema = _split_pg_url(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            if triggers_off:
                conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            for statement in statements:
                cur = conn.execute(statement)
            if triggers_off:
                conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(url, isolation_level=None)
    try:
        if triggers_off:
            conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        for statement in statements:
            cur = conn.execute(statement)
        return cur.fetchall()
    finally:
        conn.close()


def _record(store, engine, names, *, waiting: bool) -> None:
    for name in names:  # 600 waits for a reviewer; 50 is approved at once
        req = make_request(name, client_id="acme", amount="600" if waiting else "50")
        store.record(req, engine.evaluate(req), engine=engine, actor="shop")


def _waiting(store) -> list[str]:
    return [c.request_id for c in store.review_queue(limit=100).cases]


def _layout(url: str) -> tuple[bool, set[str]]:
    """Whether events has the outcome column, and its review indexes."""
    if url.startswith("postgresql://"):
        column = _sql(url, "SELECT COUNT(*) FROM pg_attribute WHERE attrelid = "
                      "to_regclass('events') AND attname = 'outcome' AND NOT attisdropped")
        indexes = _sql(url, "SELECT indexname FROM pg_indexes WHERE schemaname = "
                       "current_schema() AND indexname LIKE 'events_review%'")
    else:
        column = _sql(url, "SELECT COUNT(*) FROM pragma_table_info('events') "
                      "WHERE name = 'outcome'")
        indexes = _sql(url, "SELECT name FROM sqlite_master WHERE type = 'index' AND "
                       "name LIKE 'events_review%'")
    return bool(column[0][0]), {name for (name,) in indexes}


def test_a_store_made_before_the_column_opens_as_it_is_and_is_upgraded_by_a_writer(
        store_url, engine):
    with open_store(store_url) as store:
        dialect = store.dialect
        _record(store, engine, ["a-1", "a-2"], waiting=True)
        _record(store, engine, ["a-3"], waiting=False)
    # Back to the earlier layout: no column, the queue's index on the body alone.
    _sql(store_url, "DROP INDEX events_review_outcome", "ALTER TABLE events DROP COLUMN outcome",
         "CREATE INDEX events_review_queue ON events (seq) WHERE type = 'evaluated' AND "
         f"{_OLD_INDEX[dialect]} = 'manual_review'")

    with open_store(store_url, create=False) as old:  # a reader changes nothing
        assert not old.outcome_column
        _record(old, engine, ["b-1"], waiting=True)  # appended as an earlier version would
        assert _waiting(old) == ["a-1", "a-2", "b-1"]
        assert old.verify().ok
    assert _layout(store_url) == (False, {"events_review_queue"})

    with open_store(store_url) as store:  # a writer upgrades it
        assert store.outcome_column
        assert _layout(store_url) == (True, {"events_review_outcome"})
        assert _waiting(store) == ["a-1", "a-2", "b-1"]  # the old rows read from their bodies
        _record(store, engine, ["c-1"], waiting=True)
        _record(store, engine, ["c-2"], waiting=False)
        store.review("a-1", actor="rev", approve=False, reason="no receipt")
        assert _waiting(store) == ["a-2", "b-1", "c-1"]
        assert store.verify().ok
    assert _sql(store_url, "SELECT request_id, outcome FROM events WHERE type = 'evaluated' "
                "ORDER BY seq") == [("a-1", None), ("a-2", None), ("a-3", None), ("b-1", None),
                                    ("c-1", "manual_review"), ("c-2", "approve")]


def test_a_store_made_before_the_column_verifies_read_only_in_workers_too(store_url, engine,
                                                                          monkeypatch):
    """verify's readers select the column with each row: on a store without it (a reader
    does not upgrade) they must read NULL, in worker processes and in one pass alike."""
    monkeypatch.setattr(events, "VERIFY_RANGE", 2)  # three ranges, so the workers read them
    with open_store(store_url) as store:
        _record(store, engine, ["a-1", "a-2"], waiting=True)
        _record(store, engine, ["a-3"], waiting=False)
        store.review("a-1", actor="rev", approve=True, reason="fine")
    _sql(store_url, "DROP INDEX events_review_outcome", "ALTER TABLE events DROP COLUMN outcome")
    with open_store(store_url, create=False) as old:
        assert not old.outcome_column
        one, many = old.verify(workers=1), old.verify(workers=2)
        assert one.ok and many.ok and one.count == many.count == 4, (one, many)
    _sql(store_url, "UPDATE events SET actor = 'mallory' WHERE seq = 3", triggers_off=True)
    with open_store(store_url, create=False) as old:
        one, many = old.verify(workers=1), old.verify(workers=2)
        assert one == many and not many.ok and "event 3: column `actor`" in many.problem, many
    assert not _layout(store_url)[0]


def test_an_outcome_column_that_disagrees_with_its_body_is_caught_by_verify(store_url, engine):
    with open_store(store_url) as store:
        _record(store, engine, ["w-1"], waiting=True)
        _record(store, engine, ["p-1"], waiting=False)
        store.review("w-1", actor="rev", approve=True, reason="fine")
        assert store.verify().ok and _waiting(store) == ["w-1"]
    approved_at_once = "(SELECT seq FROM events WHERE request_id = 'p-1')"
    # Forged into the queue: the queue reads the column, so only verify can tell.
    _sql(store_url, f"UPDATE events SET outcome = 'manual_review' WHERE seq = {approved_at_once}",
         triggers_off=True)
    with open_store(store_url, create=False) as store:
        assert _waiting(store) == ["w-1", "p-1"]
        result = store.verify()
        assert not result.ok and "column `outcome` differs" in result.problem
    # NULL is what an earlier version wrote: read from the body, so it agrees.
    _sql(store_url, "UPDATE events SET outcome = NULL", triggers_off=True)
    with open_store(store_url, create=False) as store:
        assert store.verify().ok and _waiting(store) == ["w-1"]
    # An outcome on an event that is not a decision is forged too.
    _sql(store_url, "UPDATE events SET outcome = 'approve' WHERE type = 'reviewed'",
         triggers_off=True)
    with open_store(store_url, create=False) as store:
        result = store.verify()
        assert not result.ok and "column `outcome` differs" in result.problem


def test_a_damaged_body_without_the_column_reads_as_no_outcome(store_url, engine):
    with open_store(store_url) as store:
        _record(store, engine, ["w-1", "w-2"], waiting=True)
    _sql(store_url, "UPDATE events SET outcome = NULL, body = 'not json' "
         "WHERE request_id = 'w-1'", triggers_off=True)
    with open_store(store_url) as store:
        assert _waiting(store) == ["w-2"]  # not an error: the guarded read gives NULL
        assert not store.verify().ok


def test_the_queue_reads_its_index(tmp_path, engine):
    """The queue's query names the index's expression, or it reads every event: each
    statement the queue runs is planned on its own, through the index (SQLite plans the
    same way at any size)."""
    url = str(tmp_path / "records.db")
    with open_store(url) as store:
        _record(store, engine, ["w-1", "w-2"], waiting=True)
        ran: list[tuple[str, tuple]] = []
        query = store.query

        def recording(sql, args=()):
            ran.append((sql, tuple(args)))
            return query(sql, args)

        store.query = recording  # type: ignore[method-assign]
        assert _waiting(store) == ["w-1", "w-2"]
    queue = [(sql, args) for sql, args in ran if "manual_review" in sql]
    assert len(queue) == 2  # the count and the page
    conn = sqlite3.connect(url)
    try:
        for sql, args in queue:
            plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "USING INDEX events_review_outcome" in plan, plan
    finally:
        conn.close()
