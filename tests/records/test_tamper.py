"""1,000 random mutations of a small SQLite store, each one detected by ``verify`` with the
checkpoint taken before it.

Each mutation works on a fresh copy of the store file, the way someone with write access to the
file could: triggers dropped, then a field edited, an event deleted, two events swapped, the
tail cut off, or an event edited and every hash after it recomputed (which only the checkpoint
can catch)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import rfc8785

from refundry.records.stores import open_store

from .conftest import StepClock, make_request, the_lifecycle

MUTATIONS = int(os.environ.get("REFUNDRY_TAMPER_MUTATIONS", "1000"))
COLUMNS = ("request_id", "type", "at", "actor", "body", "hash")


@pytest.fixture(scope="module")
def original(tmp_path_factory, engine) -> tuple[Path, str, int]:
    """A store with a few cases at every stage; closed so the file holds everything."""
    path = tmp_path_factory.mktemp("tamper") / "records.db"
    store = open_store(path, clock=StepClock())
    the_lifecycle(store, engine)
    head = store.checkpoint()
    assert store.verify(expect_head=head.head).ok
    store.close()
    return path, head.head, head.count


def _edit_text(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    choices = [c for c in "0123456789abcdefxyzXYZ\" {}:," if c != text[i]]
    return text[:i] + rng.choice(choices) + text[i + 1:]


def _rechain(conn: sqlite3.Connection, start: int) -> None:
    """Recompute every hash from ``start`` on, as a careful forger would."""
    rows = conn.execute("SELECT seq, body FROM events WHERE seq >= ? ORDER BY seq", (start,)).fetchall()
    prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (start - 1,)).fetchone()
    prev_hash = prev[0] if prev else "sha256:" + "0" * 64
    for seq, body in rows:
        data = json.loads(body)
        data["prev"] = prev_hash
        text = rfc8785.dumps(data).decode()
        prev_hash = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        conn.execute("UPDATE events SET body = ?, hash = ? WHERE seq = ?", (text, prev_hash, seq))


def mutate(conn: sqlite3.Connection, rng: random.Random, count: int) -> tuple[str, int | None]:
    """Apply one random mutation; return its kind and the first event it breaks (None when
    only the checkpoint can tell)."""
    kind = rng.choice(["edit", "edit", "delete", "swap", "swap_seq", "truncate", "rechain"])
    seq = rng.randint(1, count)
    if kind == "edit":
        column = rng.choice(COLUMNS)
        old = conn.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,)).fetchone()[0]
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (_edit_text(rng, old), seq))
        return f"edit {column} of {seq}", seq
    if kind == "delete":
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        return f"delete {seq}", seq if seq < count else None
    if kind in ("swap", "swap_seq"):
        a, b = sorted(rng.sample(range(1, count + 1), 2))
        if kind == "swap":  # exchange the contents, each keeping its place in the order
            read = conn.execute("SELECT * FROM events WHERE seq = ?", (a,))
            ra = read.fetchone()
            rb = conn.execute("SELECT * FROM events WHERE seq = ?", (b,)).fetchone()
            # Every column but seq, whatever the table has (the outcome column too).
            sets = ", ".join(f"{d[0]} = ?" for d in read.description[1:])
            conn.execute(f"UPDATE events SET {sets} WHERE seq = ?", (*rb[1:], a))
            conn.execute(f"UPDATE events SET {sets} WHERE seq = ?", (*ra[1:], b))
        else:  # exchange the sequence numbers, each keeping its content
            conn.execute("UPDATE events SET seq = -1 WHERE seq = ?", (a,))
            conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (a, b))
            conn.execute("UPDATE events SET seq = ? WHERE seq = -1", (b,))
        return f"{kind} {a} {b}", a
    if kind == "truncate":
        conn.execute("DELETE FROM events WHERE seq >= ?", (seq,))
        return f"truncate from {seq}", None
    old = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    data = json.loads(old)
    data["actor"] = data["actor"] + "x"
    conn.execute("UPDATE events SET body = ?, actor = ? WHERE seq = ?",
                 (json.dumps(data), data["actor"], seq))
    _rechain(conn, seq)
    return f"rechain from {seq}", None


def test_every_random_mutation_is_detected(original, tmp_path):
    path, head, count = original
    rng = random.Random(20261126)
    kinds: dict[str, int] = {}
    for i in range(MUTATIONS):
        copy = tmp_path / f"m{i % 2}.db"
        shutil.copyfile(path, copy)
        conn = sqlite3.connect(copy, isolation_level=None)
        conn.execute("PRAGMA synchronous = OFF")  # a throwaway copy: no fsync, keep it fast
        conn.execute("BEGIN")
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DROP INDEX events_one_evaluation")  # it would stop a swap half-way
        what, first_broken = mutate(conn, rng, count)
        conn.execute("COMMIT")
        conn.close()
        store = open_store(copy)
        try:
            result = store.verify(expect_head=head)
        finally:
            store.close()
        assert not result.ok, f"mutation {i} ({what}) was not detected"
        if first_broken is not None:
            assert result.broken_seq == first_broken, (what, result)
        kinds[what.split()[0]] = kinds.get(what.split()[0], 0) + 1
    assert set(kinds) == {"edit", "delete", "swap", "swap_seq", "truncate", "rechain"}


def test_a_changed_ruleset_text_is_detected(original, tmp_path):
    path, head, _count = original
    copy = tmp_path / "texts.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("UPDATE ruleset_texts SET text = replace(text, '14 days', '7 days')")
    conn.close()
    store = open_store(copy)
    try:
        result = store.verify(expect_head=head)
        assert not result.ok and "does not match its digest" in result.problem
        with pytest.raises(Exception, match="does not match its digest"):
            store.replay("r-0")
    finally:
        store.close()


def _forge(path: Path, **changes) -> None:
    """Append a well-formed, correctly chained event copied from the last one, as someone with
    write access to the database (and this code) could."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX events_one_evaluation")  # it would refuse a second opening
    seq, body, hash_ = conn.execute(
        "SELECT seq, body, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    data = {**json.loads(body), **changes, "seq": seq + 1, "prev": hash_}
    text = rfc8785.dumps(data).decode()
    conn.execute("INSERT INTO events (seq, request_id, type, at, actor, body, hash) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (seq + 1, data["request_id"], data["type"], data["at"], data["actor"], text,
                  "sha256:" + hashlib.sha256(text.encode()).hexdigest()))
    conn.close()


@pytest.mark.parametrize("forged, problem", [
    ({"type": "approved", "actor": "alice", "details": {"verdict": "approve"}}, "submitted"),
    ({"type": "approved", "actor": "mallory", "details": {"verdict": "approve"}},
     "should be `reviewed`"),
    ({"type": "refunded", "actor": "mallory", "details": {}}, "needs processed"),
    ({"type": "evaluated", "actor": "mallory", "details": {}}, "a second time"),
])
def test_a_well_chained_but_illegal_event_is_detected(engine, tmp_path, forged, problem):
    """Each forged event is the second in a store holding one case in manual_review."""
    path = tmp_path / "forged.db"
    store = open_store(path, clock=StepClock())
    req = make_request("big", client_id="acme", amount="600")
    store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.close()
    _forge(path, **forged)
    store = open_store(path)
    try:
        result = store.verify()
    finally:
        store.close()
    assert not result.ok and result.broken_seq == 2 and problem in result.problem, result


def test_a_forged_dispute_resolution_is_detected(engine, tmp_path):
    path = tmp_path / "forged.db"
    store = open_store(path, clock=StepClock())
    req = make_request("r-1")
    store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.open_dispute("r-1", actor="cs", reason="more", engine=engine)
    store.close()
    _forge(path, type="dispute_resolved", actor="lead",
           details={"resolution": "split the difference", "explanation": "x", "amount": "1"})
    store = open_store(path)
    try:
        result = store.verify()
    finally:
        store.close()
    assert not result.ok and result.broken_seq == 3 and "upheld or overturned" in result.problem
