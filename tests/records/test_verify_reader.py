"""How verify's walk reads an SQLite store: over a cursor of its own, each body as the bytes
stored (which its hash is over). These hold that reader to the store's plain one where they
could differ: a body that is not UTF-8, and a batch that has not committed yet."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from refundry.records import events
from refundry.records.stores import SQLiteStore, open_store

from .conftest import StepClock, make_request


def _store(path: Path, engine: Any, n: int = 3) -> None:
    store = open_store(path, clock=StepClock())
    for i in range(n):
        req = make_request(f"r-{i}")
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.close()


def _verdicts(path: Path) -> list[Any]:
    """Verify's answer in one process, in worker processes (ranges of 2 events), and in one
    process over the store's plain reader (pages of decoded text)."""
    out = []
    for workers, plain in ((1, False), (2, False), (1, True)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(events, "VERIFY_RANGE", 2)
            if plain:
                patch.setattr(SQLiteStore, "_chain_rows", events.RecordStore._chain_rows)
            store = open_store(path, create=False)
            try:
                out.append(store.verify(workers=workers).to_dict())
            except Exception as exc:  # noqa: BLE001 - a crash is an answer to compare too
                out.append(f"{type(exc).__name__}")
            finally:
                store.close()
    return out


def test_a_body_that_is_not_utf8_is_reported_not_raised(tmp_path, engine):
    """Bytes that are not UTF-8, hashed again by a forger: verify's walk names the event
    (the plain reader could not even decode the text to read it)."""
    path = tmp_path / "r.db"
    _store(path, engine)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    body = conn.execute("SELECT CAST(body AS BLOB) FROM events WHERE seq = 2").fetchone()[0]
    forged = body.replace(b'"alice"', b'"al\xffce"', 1)
    assert forged != body
    conn.execute("UPDATE events SET body = CAST(? AS TEXT), hash = ? WHERE seq = 2",
                 (forged, "sha256:" + hashlib.sha256(forged).hexdigest()))
    conn.close()
    one, workers, plain = _verdicts(path)
    assert one == workers
    assert not one["ok"] and one["broken_seq"] == 2, one
    assert one["problem"] == "event 2 is not valid json"
    assert plain == "RecordError"  # the store's pages decode text, and say the store is damaged


def test_a_body_stored_as_a_blob_is_read_as_its_bytes(tmp_path, engine):
    """An event's body put back as a BLOB of the same bytes: the same event, the same hash."""
    path = tmp_path / "r.db"
    _store(path, engine)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET body = CAST(body AS BLOB) WHERE seq = 3")
    assert conn.execute("SELECT typeof(body) FROM events WHERE seq = 3").fetchone()[0] == "blob"
    conn.close()
    one, workers, _plain = _verdicts(path)
    assert one == workers and one["ok"] and one["count"] == 3, one


def test_verify_in_a_batch_reads_the_batch_own_events(tmp_path, engine):
    """Inside this thread's batch the events appended so far are not committed: verify reads
    them over the store's own connection, as before, not a cursor of its own that cannot see
    them."""
    path = tmp_path / "r.db"
    _store(path, engine, n=2)
    store = open_store(path, create=False, clock=StepClock())
    try:
        with store.batch():
            req = make_request("r-late")
            store.record(req, engine.evaluate(req), engine=engine, actor="alice")
            inside = store.verify(workers=1)
        assert inside.ok and inside.count == 3, inside
        assert store.verify(workers=1).count == 3
    finally:
        store.close()
