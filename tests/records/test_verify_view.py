"""Verify reads each event body through a typed view that skips what no check reads; on any
store, tampered or not, it must say exactly what it says when it reads each body whole.

The oracle is the same verify with the view swapped for a whole decode. Each case edits one
event's body into an odd shape (a decision that is a list, a seq that is text or ``true``, a
reason that is a number, ...), then recomputes every hash and signature after it, as a forger
with the signing key would, so the odd body reaches the checks behind the hash: the state
machine, the layer digests, the signature and the history index. A history index row is also
edited, so the index check's answer is compared as well."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import rfc8785

from refundry.records import events
from refundry.records.anchors import Signer
from refundry.records.history import History
from refundry.records.index import utc_text
from refundry.records.stores import SQLiteStore, open_store

from .conftest import StepClock, after_the_reviews, make_request

# Where verify reads a body (and some places it does not), and odd values to put there.
PATHS = ("seq", "prev", "type", "request_id", "actor", "key", "decision", "request", "details",
         "decision.outcome", "decision.amount", "decision.reasons", "decision.reasons.0",
         "decision.reasons.0.code", "decision.ruleset", "decision.ruleset.layers",
         "decision.ruleset.layers.0", "decision.ruleset.layers.0.digest", "decision.lines",
         "request.amount", "request.customer", "request.customer.id", "request.customer.email",
         "request.transaction", "request.transaction.payment_method",
         "request.transaction.payment_method.last4", "request.requested_at", "request.currency",
         "details.setting", "details.value", "details.resolution", "details.amount",
         "details.current", "details.current.ruleset.layers", "details.justification")
ODD = (None, [], [1], "x", "", 2, 0, True, False, 2.5, {}, {"code": "four_eyes"},
       {"digest": 1}, "600", "approve", "overturned", "2024-01-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def original(tmp_path_factory, engine) -> tuple[Path, Path]:
    """A signed store with every event type, a threshold setting and a history index."""
    tmp = tmp_path_factory.mktemp("view")
    path = tmp / "records.db"
    signer = Signer.generate(tmp / "key.pem")
    store = open_store(path, clock=StepClock(), signer=signer)
    for i in range(6):
        req = make_request(f"r-{i}", **({"client_id": "acme", "amount": "600"} if i % 2 else {}))
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.set_four_eyes_above("550", actor="admin")
    store.review("r-1", actor="bob", approve=True, reason="ok")
    store.review("r-1", actor="carol", approve=True, reason="ok too")
    after_the_reviews(store, engine)
    History(store).sync()
    assert store.verify().ok
    store.close()
    return path, tmp / "key.pem"


def _set(body: Any, path: str, value: Any) -> bool:
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.get(part) \
            if isinstance(node, dict) else None
        if node is None or (isinstance(node, list) and not node):
            return False
    if isinstance(node, list):
        if not node:
            return False
        node[0] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return False
    return True


def _forge(conn: sqlite3.Connection, signer: Signer, seq: int, body: dict[str, Any]) -> None:
    """Put ``body`` at ``seq`` and recompute every hash and signature from there on."""
    prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq - 1,)).fetchone()
    prev_hash = prev[0] if prev else body.get("prev")
    rows = conn.execute("SELECT seq, body FROM events WHERE seq >= ? ORDER BY seq", (seq,))
    for n, text in rows.fetchall():
        data = body if n == seq else json.loads(text)
        if n != seq:
            data["prev"] = prev_hash
        raw = rfc8785.dumps(data)
        prev_hash = "sha256:" + hashlib.sha256(raw).hexdigest()
        conn.execute("UPDATE events SET body = ?, hash = ? WHERE seq = ?",
                     (raw.decode(), prev_hash, n))
        conn.execute("UPDATE signatures SET signature = ? WHERE seq = ?",
                     (signer.sign_event(prev_hash), n))


def _tamper(path: Path, signer: Signer, rng: random.Random) -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # One transaction, as a forger would: a commit per UPDATE synced the file some 3,000
        # times and was half of this test's time.
        conn.execute("BEGIN")
        what = _edit(conn, signer, rng)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return what


def _edit(conn: sqlite3.Connection, signer: Signer, rng: random.Random) -> str:
    conn.execute("DROP TRIGGER events_no_update")
    count = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    if rng.random() < 0.1:  # an index row edited instead
        column = rng.choice(("status", "decided_amount", "customer_key", "seq", "email_key"))
        value = rng.choice(("x", 3, 3.0, "approved", "manual_review"))
        conn.execute(f"UPDATE history_index SET {column} = ? WHERE rowid = "
                     "(SELECT MIN(rowid) FROM history_index)", (value,))
        return f"index {column} = {value!r}"
    for _ in range(20):
        seq = rng.randint(1, count)
        body = json.loads(conn.execute("SELECT body FROM events WHERE seq = ?",
                                       (seq,)).fetchone()[0])
        what, value = rng.choice(PATHS), rng.choice(ODD)
        if _set(body, what, value):
            _forge(conn, signer, seq, body)
            return f"event {seq}: {what} = {value!r}"
    return "nothing"


def _verdict(path: Path, workers: int = 1) -> Any:
    store = open_store(path, create=False)
    try:
        return store.verify(workers=workers).to_dict()
    except Exception as exc:  # the oracle's crash must be the view's crash too
        return f"{type(exc).__name__}: {exc}"
    finally:
        store.close()


def test_verify_says_what_it_says_on_whole_bodies(original, tmp_path, monkeypatch):
    path, key = original
    signer = Signer.from_file(key)
    rng = random.Random(20261201)
    problems: set[str] = set()
    for i in range(200):
        copy = tmp_path / f"v{i % 2}.db"
        shutil.copyfile(path, copy)
        what = _tamper(copy, signer, rng)
        seen = _verdict(copy)
        with monkeypatch.context() as whole:
            whole.setattr(events, "_BODY", msgspec.json.Decoder())
            whole.setattr(events, "_STEP", msgspec.json.Decoder())
            assert _verdict(copy) == seen, what
            # ... and the plain reader as well: the store's pages of decoded text, not the
            # walk's own cursor over the stored bytes.
            whole.setattr(SQLiteStore, "_chain_rows", events.RecordStore._chain_rows)
            assert _verdict(copy) == seen, what
        if i % 2 == 0:  # worker processes, ranges of 4 events: the same answer, crash or not
            with monkeypatch.context() as ranged:
                ranged.setattr(events, "VERIFY_RANGE", 4)
                assert _verdict(copy, workers=2) == seen, what
        if isinstance(seen, dict) and not seen["ok"]:
            problems.add(re.sub(r"\d+", "N", seen["problem"].split("`")[0]))
    # The edits reach every kind of check, not only the first one a body meets.
    assert len(problems) >= 8, problems


def test_the_untouched_store_reads_the_same(original, monkeypatch):
    path, _key = original
    seen = _verdict(path)
    assert seen["ok"] and seen["count"] == 15
    monkeypatch.setattr(events, "_BODY", msgspec.json.Decoder())
    monkeypatch.setattr(events, "_STEP", msgspec.json.Decoder())
    assert _verdict(path) == seen


def test_index_times_read_as_strftime_wrote_them():
    """``utc_text`` skips strftime where its text is the same; the index keeps what it kept."""
    rng = random.Random(7)
    for _ in range(2000):
        year = rng.choice((1, 999, 1000, 1970, 2024, 9999, rng.randint(1, 9999)))
        when = dt.datetime(year, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                           rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999_999),
                           tzinfo=dt.timezone(dt.timedelta(minutes=rng.randint(-900, 900))))
        try:
            expected = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except OverflowError:  # an offset that moves it out of years 1-9999
            continue
        assert utc_text(when) == expected, when


def test_a_request_of_another_shape_is_read_only_where_it_was(engine, tmp_path):
    """A case's request is read by the state machine at its approvals only: a forged request
    that is a list, on a case nobody reviews, is no business of verify's (and no crash)."""
    path = tmp_path / "odd.db"
    signer = Signer.generate(tmp_path / "key.pem")
    store = open_store(path, clock=StepClock(), signer=signer)
    req = make_request("r-0")
    store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    body = json.loads(conn.execute("SELECT body FROM events WHERE seq = 1").fetchone()[0])
    body["request"] = [1]
    _forge(conn, signer, 1, body)
    conn.close()
    assert _verdict(path)["ok"]
