"""verify in worker processes gives the answer verify in one process gives.

With ``workers`` > 1 the chain is cut into ranges of ``VERIFY_RANGE`` events, each read and
checked in a process of its own (the state machine of the cases it opens included), and the
parent links each range to the one before and replays the events of cases an earlier range
opened. Here a range is 4 events, so the 20-event store below spans five ranges, and most of its
cases' events fall in a later range than their opening; every answer is compared, field by
field, with the one-process answer on the same store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import rfc8785

from refundry.records import events
from refundry.records.anchors import Signer, open_anchor
from refundry.records.history import History
from refundry.records.stores import open_store

from .conftest import StepClock, make_request, the_lifecycle
from .test_anchor import Raw
from .test_tamper import mutate

RANGE = 4


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "VERIFY_RANGE", RANGE)


@pytest.fixture
def filled(store_url: str, tmp_path: Path, engine: Any) -> Iterator[dict[str, Any]]:
    """A signed store with every event type, its history index synced, and its anchor
    (a checkpoint every 5 events): 20 events, five ranges."""
    signer = Signer.generate(tmp_path / "k.pem")
    target = str(tmp_path / "anchor.jsonl")
    store = open_store(store_url, clock=StepClock(), signer=signer, anchor=open_anchor(target),
                       anchor_every=5)
    the_lifecycle(store, engine)
    for i in range(6, 12):
        req = make_request(f"r-{i}")
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    History(store).sync()
    head = store.checkpoint()
    store.close()
    assert head.count == 20
    yield {"url": store_url, "target": target, "key": signer.key_id, "head": head.head}


def both(url: str, **options: Any) -> tuple[events.Verification, events.Verification]:
    """verify in one process and in two workers, on the same store."""
    store = open_store(url, create=False)
    try:
        return store.verify(workers=1, **options), store.verify(workers=2, **options)
    finally:
        store.close()


def same(one: events.Verification, many: events.Verification) -> None:
    assert attrs.asdict(many) == attrs.asdict(one)


def test_a_whole_store_verifies_the_same_in_workers(filled):
    anchor = open_anchor(filled["target"])
    try:
        one, many = both(filled["url"], expect_head=filled["head"], anchor=anchor,
                         trusted_keys=[filled["key"]])
    finally:
        anchor.close()
    same(one, many)
    assert many.ok and many.count == 20 and many.head == filled["head"], many
    assert many.anchored and many.anchored_count == 20 and many.texts == one.texts > 0


def _edit_body(raw: Raw, seq: int, *, rehash: bool, unsigned: bool = False,
               **changes: Any) -> None:
    """Change members of event ``seq``'s body (and its hash, with ``rehash``: the change is
    then seen only by the link of the event after it, or by the state machine; ``unsigned``:
    without the signing key, as a forger without it writes)."""
    body = json.loads(raw("SELECT body FROM events WHERE seq = ?", (seq,))[0][0])
    body = {k: v for k, v in body.items() if not (unsigned and k == "key")}
    text = rfc8785.dumps({**body, **changes}).decode()
    if rehash:
        raw("UPDATE events SET body = ?, hash = ? WHERE seq = ?",
            (text, "sha256:" + hashlib.sha256(text.encode()).hexdigest(), seq))
    else:
        raw("UPDATE events SET body = ? WHERE seq = ?", (text, seq))


def _plant(raw: Raw, where: str) -> None:
    if where == "second range":
        _edit_body(raw, RANGE + 2, rehash=False, actor="mallory")
    elif where == "first of a range missing":
        raw("DELETE FROM events WHERE seq = ?", (2 * RANGE + 1,))
    elif where == "last of a range missing":
        raw("DELETE FROM events WHERE seq = ?", (2 * RANGE,))
    elif where == "first of a range unlinked":
        _edit_body(raw, RANGE + 1, rehash=True, prev="sha256:" + "1" * 64)
    elif where == "first of a range unlinked, a column too":
        _edit_body(raw, RANGE + 1, rehash=True, prev="sha256:" + "1" * 64)
        raw("UPDATE events SET actor = 'mallory' WHERE seq = ?", (RANGE + 1,))
    elif where == "first of a range, a column":
        raw("UPDATE events SET actor = 'mallory' WHERE seq = ?", (RANGE + 1,))
    elif where == "last event":
        raw("UPDATE events SET type = 'refunded' WHERE seq = 20")
    elif where == "signature in a later range":
        raw("DELETE FROM signatures WHERE seq = ?", (3 * RANGE + 2,))
    elif where == "index row":
        raw("DELETE FROM history_index WHERE request_id = 'r-7'")
    elif where == "outcome column of a case no later range touches":  # r-7, event 16
        raw("UPDATE events SET outcome = 'forged' WHERE seq = 16")
    elif where == "outcome column of a case a later range moves on":  # r-1, event 2
        raw("UPDATE events SET outcome = 'forged' WHERE seq = 2")
    elif where == "outcome column of the first event of a range":  # r-4, event 5
        raw("UPDATE events SET outcome = 'forged' WHERE seq = ?", (RANGE + 1,))
    elif where == "outcome column on the first event of a range, no decision":  # r-3 reviewed
        raw("UPDATE events SET outcome = 'approve' WHERE seq = ?", (2 * RANGE + 1,))
    elif where == "outcome columns on both sides of a range boundary":
        raw("UPDATE events SET outcome = 'forged' WHERE seq IN (?, ?)", (4 * RANGE + 1, RANGE))
    elif where == "outcome column, then a later column":  # the chain's problem comes first
        raw("UPDATE events SET outcome = 'forged' WHERE seq = 2")
        raw("UPDATE events SET type = 'refunded' WHERE seq = 20")
    elif where == "index row a later range sets":  # r-0, refunded two ranges after it opened
        raw("UPDATE history_index SET status = 'processed' WHERE request_id = 'r-0'")
    elif where == "index row, a column no later event sets":
        raw("UPDATE history_index SET client_id = 'other' WHERE request_id = 'r-9'")
    elif where == "index row no event made":
        raw("INSERT INTO history_index SELECT 'r-zz', seq, client_id, requested_at, customer_key, "
            "email_key, address_key, card_key, transaction_key, amount, currency, "
            "transaction_amount, decided_amount, outcome, status FROM history_index "
            "WHERE request_id = 'r-8'")
    elif where == "index row moved to another range":
        raw("UPDATE history_index SET seq = 3 WHERE request_id = 'r-10'")


PLANTED = {
    "second range": (RANGE + 2, "does not match its hash"),
    "first of a range missing": (2 * RANGE + 1, f"event {2 * RANGE + 1} is missing"),
    "last of a range missing": (2 * RANGE, f"event {2 * RANGE} is missing"),
    "first of a range unlinked": (RANGE + 1, f"does not follow event {RANGE}"),
    "first of a range unlinked, a column too": (RANGE + 1, f"does not follow event {RANGE}"),
    "first of a range, a column": (RANGE + 1, "column `actor` differs"),
    "last event": (20, "column `type` differs"),
    "signature in a later range": (3 * RANGE + 2, "but its signature is missing"),
    "index row": (None, "history_index has no row for request `r-7`"),
    "outcome column of a case no later range touches": (None, "event 16: column `outcome`"),
    "outcome column of a case a later range moves on": (None, "event 2: column `outcome`"),
    "outcome column of the first event of a range": (None, f"event {RANGE + 1}: column "
                                                     "`outcome` differs from the hashed event"),
    "outcome column on the first event of a range, no decision": (
        None, f"event {2 * RANGE + 1}: column `outcome` differs"),
    "outcome columns on both sides of a range boundary": (None, f"event {RANGE}: column "
                                                          "`outcome`"),
    "outcome column, then a later column": (20, "column `type` differs"),
    "index row a later range sets": (None, "row for request `r-0` differs from the chain in "
                                     "`status`"),
    "index row, a column no later event sets": (None, "`r-9` differs from the chain in "
                                                "`client_id`"),
    "index row no event made": (None, "a row for request `r-zz` that no event"),
    "index row moved to another range": (None, "`r-10` differs from the chain in `seq`"),
}


@pytest.mark.parametrize("where", PLANTED)
def test_a_planted_problem_is_found_the_same_in_workers(filled, where):
    raw = Raw(filled["url"])
    try:
        _plant(raw, where)
    finally:
        raw.close()
    one, many = both(filled["url"])
    same(one, many)
    broken_seq, problem = PLANTED[where]
    assert not many.ok and many.broken_seq == broken_seq and problem in many.problem, many


def test_a_state_machine_problem_in_a_later_range_is_found_the_same(filled):
    """A note turned into an approval by the submitter, hashed and linked again to the end:
    only the parent's replay of the state machine can see it."""
    raw = Raw(filled["url"])
    try:
        seq = raw("SELECT seq FROM events WHERE type = 'note'")[0][0]  # r-2's, made an approval
        _edit_body(raw, seq, rehash=True, unsigned=True, type="approved", actor="alice")
        raw("UPDATE events SET type = 'approved', actor = 'alice' WHERE seq = ?", (seq,))
        for later in range(seq + 1, 21):  # every later link made good again
            prev = raw("SELECT hash FROM events WHERE seq = ?", (later - 1,))[0][0]
            _edit_body(raw, later, rehash=True, unsigned=True, prev=prev)
    finally:
        raw.close()
    one, many = both(filled["url"])
    same(one, many)
    assert not many.ok and many.broken_seq == seq and "`r-2`" in many.problem, many


def _rewrite(raw: Raw, seq: int, **changes: Any) -> None:
    """Event ``seq`` changed (its columns too) and every later link made good again, unsigned,
    as a forger with the database but not the key writes: only the state machine can tell."""
    _edit_body(raw, seq, rehash=True, unsigned=True, **changes)
    for column in ("request_id", "type", "actor"):
        if column in changes:
            raw(f"UPDATE events SET {column} = ? WHERE seq = ?", (changes[column], seq))
    last = raw("SELECT max(seq) FROM events")[0][0]
    for later in range(seq + 1, last + 1):
        prev = raw("SELECT hash FROM events WHERE seq = ?", (later - 1,))[0][0]
        _edit_body(raw, later, rehash=True, unsigned=True, prev=prev)


# The filled store, by range of 4: 1-4 and 5-6 open r-0 .. r-5; 7-8 approve r-1 (opened in the
# first range), 9-12 deny r-3, process and refund r-0, note r-2 (all of cases opened before
# their range), 13-14 dispute r-3, 15-20 open r-6 .. r-11.
AT_A_BOUNDARY = {
    # the first event of a range, of a case opened in an earlier one
    "submitter denies, first of a range": (9, {"actor": "alice"}, "cannot review or resolve"),
    # the last event of a range, the second approval by the first approver
    "one approver twice, last of a range": (8, {"actor": "bob"}, "already approved"),
    "refunded before processed, first of a range": (10, {"type": "refunded"}, "needs processed"),
    "an event of a case never opened": (12, {"request_id": "r-99"}, "no `evaluated` event"),
    # r-1, opened in the first range, opened again as the first event of the fourth
    "a case opened again in a later range": (15, {"request_id": "r-1"}, "a second time"),
    "a case opened again in the same range": (16, {"request_id": "r-6"}, "a second time"),
}


@pytest.mark.parametrize("where", AT_A_BOUNDARY)
def test_a_state_machine_problem_at_a_range_boundary_is_found_the_same(filled, where):
    seq, changes, problem = AT_A_BOUNDARY[where]
    raw = Raw(filled["url"])
    try:
        raw("DROP INDEX IF EXISTS events_one_evaluation")  # else no case opens twice
        _rewrite(raw, seq, **changes)
    finally:
        raw.close()
    one, many = both(filled["url"])
    same(one, many)
    assert not many.ok and many.broken_seq == seq and problem in many.problem, many


def test_a_case_opened_again_across_ranges_is_named_by_one_pass(filled, monkeypatch):
    """The range that opens r-1 again cannot know it was opened before: the parent sees it,
    and verify goes over the chain again in one process, which names the event."""
    passes: list[int] = []
    restart = events._ChainWalk.restart

    def counted(walk: Any) -> None:
        passes.append(1)
        restart(walk)

    raw = Raw(filled["url"])
    try:
        raw("DROP INDEX IF EXISTS events_one_evaluation")
        _rewrite(raw, 15, request_id="r-1")
    finally:
        raw.close()
    monkeypatch.setattr(events._ChainWalk, "restart", counted)
    one, many = both(filled["url"])
    same(one, many)
    assert passes == [1] and many.broken_seq == 15 and "`r-1` a second time" in many.problem


def test_the_last_event_of_a_range_changed_breaks_the_next_link(filled):
    raw = Raw(filled["url"])
    try:
        _edit_body(raw, 2 * RANGE, rehash=True, unsigned=True, reference="forged")
    finally:
        raw.close()
    one, many = both(filled["url"])
    same(one, many)
    assert not many.ok and many.broken_seq == 2 * RANGE + 1, many
    assert f"event {2 * RANGE + 1} does not follow event {2 * RANGE}" in many.problem


@pytest.fixture
def no_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' ranges are joined as they are: verify does not fall back to one pass."""
    def restart(_walk: Any) -> None:
        raise AssertionError("verify went over the chain again in one process")

    monkeypatch.setattr(events._ChainWalk, "restart", restart)


def test_cases_across_ranges_are_joined_without_a_second_pass(filled, no_second_pass):
    """Every range but the first and the last holds events of cases opened in the one before."""
    one, many = both(filled["url"])
    same(one, many)
    assert many.ok and many.count == 20


def test_the_workers_settle_the_index_themselves(filled, no_second_pass, monkeypatch):
    """On a whole store the workers' comparisons settle the index check (rows of cases that
    later ranges change included): the parent neither rebuilds the rows nor reads the table."""
    store = open_store(filled["url"], create=False)
    try:
        one = store.verify(workers=1)

        def rebuilt(*_args: Any) -> None:
            raise AssertionError("the parent rebuilt the index rows")

        monkeypatch.setattr(events, "expected_rows", rebuilt)
        monkeypatch.setattr(events, "index_problem", rebuilt)
        many = store.verify(workers=2)
    finally:
        store.close()
    same(one, many)
    assert many.ok


def test_a_threshold_set_in_an_earlier_range_holds_in_the_later_ones(store_url, engine,
                                                                        no_second_pass):
    """A four-eyes threshold raised in the first range: a 600 refund approved by one
    reviewer three ranges on is right; lowered again, one approval of another is wrong."""
    store = open_store(store_url, clock=StepClock())
    try:
        store.set_four_eyes_above("700", actor="admin")
        for i in range(12):
            req = make_request(f"t-{i}", client_id="acme", amount="600")
            store.record(req, engine.evaluate(req), engine=engine, actor="alice")
        store.review("t-0", actor="bob", approve=True, reason="ok")  # event 14: 600 <= 700
        assert store.case("t-0").status == "approved"
        store.set_four_eyes_above("550", actor="admin")  # event 15
        store.review("t-1", actor="bob", approve=True, reason="ok")  # event 16: one of two
        assert store.case("t-1").status == "manual_review"
    finally:
        store.close()
    one, many = both(store_url)
    same(one, many)
    assert many.ok and many.count == 16, many
    raw = Raw(store_url)
    try:
        _rewrite(raw, 16, type="approved")
    finally:
        raw.close()
    one, many = both(store_url)
    same(one, many)
    assert not many.ok and many.broken_seq == 16 and "it should be `reviewed`" in many.problem


def test_random_mutations_are_found_the_same_in_workers(filled, tmp_path):
    if filled["url"].startswith("postgresql://"):
        pytest.skip("the mutations work on an SQLite file; the planted problems cover both")
    rng = random.Random(20261201)
    for i in range(120):
        copy = tmp_path / f"m{i % 2}.db"
        shutil.copyfile(filled["url"], copy)
        conn = sqlite3.connect(copy, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DROP INDEX events_one_evaluation")
        what, _first = mutate(conn, rng, 20)
        conn.execute("COMMIT")
        conn.close()
        one, many = both(str(copy), expect_head=filled["head"])
        assert attrs.asdict(many) == attrs.asdict(one), what
        assert not many.ok, what


def test_random_index_edits_are_found_the_same_in_workers(filled, tmp_path):
    """The workers hold the index rows of their ranges to the table themselves: any edit of
    it is named as one process names it."""
    if filled["url"].startswith("postgresql://"):
        pytest.skip("the edits work on an SQLite file; the planted ones cover both")
    rng = random.Random(20261202)
    columns = [r[1] for r in sqlite3.connect(filled["url"]).execute(
        "PRAGMA table_info(history_index)")]
    broken = 0
    for i in range(60):
        copy = tmp_path / f"x{i % 2}.db"
        shutil.copyfile(filled["url"], copy)
        conn = sqlite3.connect(copy, isolation_level=None)
        rid = f"r-{rng.randrange(12)}"
        kind = rng.choice(["cell", "cell", "delete", "insert"])
        if kind == "cell":
            column = rng.choice(columns)
            value = rng.choice(["approved", "processed", "0", "1", "", "x", 3, None])
            with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL, the key
                conn.execute(f"UPDATE history_index SET {column} = ? WHERE request_id = ?",
                             (value, rid))
        elif kind == "delete":
            conn.execute("DELETE FROM history_index WHERE request_id = ?", (rid,))
        else:
            conn.execute("INSERT OR IGNORE INTO history_index SELECT 'r-new', seq + ?, "
                         + ", ".join(columns[2:]) + " FROM history_index WHERE request_id = ?",
                         (rng.randrange(-3, 4), rid))
        conn.close()
        one, many = both(str(copy))
        assert attrs.asdict(many) == attrs.asdict(one), (kind, rid)
        broken += not many.ok
    assert broken > 50  # the few left whole set a value the row already had


def test_workers_start_only_for_a_large_store_on_idle_cores(filled, monkeypatch):
    """Unless asked for, workers start for VERIFY_PROCESSES_FROM events or more and only on
    idle cores: below that, or on a busy machine, they cost more than they save."""
    store = open_store(filled["url"], create=False)
    started: list[bool] = []

    @contextlib.contextmanager
    def reader() -> Iterator[None]:
        started.append(True)
        yield None  # and verify reads in this process after all

    try:
        monkeypatch.setattr(store, "_range_reader", reader)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
        assert store.verify().ok and not started  # 20 events: too few
        monkeypatch.setattr(events, "VERIFY_PROCESSES_FROM", 20)
        monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.5, 1.5))
        assert store.verify().ok and not started  # one core busy of two
        monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
        assert store.verify().ok and started == [True]
    finally:
        store.close()


def _die(*_args: Any) -> None:
    os._exit(3)  # as a worker killed by the kernel's out-of-memory killer ends


def test_a_worker_that_dies_is_a_one_line_error(filled, monkeypatch):
    monkeypatch.setattr(events, "_check_range", _die)
    store = open_store(filled["url"], create=False)
    try:
        with pytest.raises(events.RecordError, match="a worker process of verify died"):
            store.verify(workers=2)
    finally:
        store.close()


class _NoSemaphores:
    """A multiprocessing context where no queue or lock can be made (a sandbox without
    ``sem_open``)."""

    def __getattr__(self, _name: str) -> Any:
        def unavailable(*_args: Any, **_kwargs: Any) -> None:
            raise OSError(38, "Function not implemented")

        return unavailable


def test_where_no_worker_can_start_verify_reads_in_this_process(filled, monkeypatch):
    monkeypatch.setattr(events.multiprocessing, "get_context", lambda *_args: _NoSemaphores())
    one, many = both(filled["url"])
    same(one, many)
    assert many.ok and many.count == 20


# A case's state crosses from a worker to the parent as msgpack (``events._packed``), or
# pickled where msgpack cannot carry a value as it is: either way the parent must replay on
# what one pass holds. Decisions a forger may write into r-1's `evaluated` event (opened in
# the first range, approved in the second: the parent replays its approval on the state the
# first range's worker sent).
HOSTILE_DECISIONS = {
    "an integer past 64 bits": {"amount": 2**70, "reasons": [{"code": 2**80}]},
    "a float at the edge and minus zero": {"amount": 1.7976931348623157e308,
                                           "reasons": [{"code": -0.0}, {"code": 1e-300}]},
    "unicode and a card number": {"amount": "4111 1111 1111 1111",
                                  "reasons": [{"code": "é🙂\u2028"}, {"code": "four_eyes"}]},
    "a lone surrogate": {"amount": "10", "reasons": [{"code": "\ud800"}]},
    "reasons of another shape": {"amount": True, "reasons": {"code": "four_eyes"}},
}


@pytest.mark.parametrize("where", HOSTILE_DECISIONS)
def test_a_hostile_decision_crosses_to_the_parent_as_one_pass_reads_it(filled, where):
    raw = Raw(filled["url"])
    try:
        seq = raw("SELECT seq FROM events WHERE request_id = 'r-1' AND type = 'evaluated'")[0][0]
        assert seq <= RANGE  # its approval, later, is replayed by the parent
        last = raw("SELECT max(seq) FROM events")[0][0]
        for at in range(seq, last + 1):  # rewritten and linked again, unsigned, to the end
            body = json.loads(raw("SELECT body FROM events WHERE seq = ?", (at,))[0][0])
            body.pop("key", None)
            if at == seq:
                body["decision"] = {**body["decision"], **HOSTILE_DECISIONS[where]}
            else:
                body["prev"] = raw("SELECT hash FROM events WHERE seq = ?", (at - 1,))[0][0]
            text = json.dumps(body)  # rfc8785 refuses an integer past 2**53
            raw("UPDATE events SET body = ?, hash = ? WHERE seq = ?",
                (text, "sha256:" + hashlib.sha256(text.encode()).hexdigest(), at))
    finally:
        raw.close()
    one, many = (_answer(filled["url"], workers) for workers in (1, 2))
    assert many == one


def _answer(url: str, workers: int) -> Any:
    """verify's answer, or what it raised (a reason of another shape raises in one pass, and
    must in workers too, at the same event)."""
    store = open_store(url, create=False)
    try:
        return attrs.asdict(store.verify(workers=workers))
    except Exception as exc:  # noqa: BLE001 - compared, type and message
        return type(exc), str(exc)
    finally:
        store.close()


def test_a_state_msgpack_cannot_carry_is_pickled():
    fold = ("r-1", "alice", {"amount": 2**70, "reasons": []}, {"amount": "10"}, "manual_review",
            "manual_review", [], None)
    assert events._packed({"r-1": fold}) is None
    assert events._packed({"r-1": (*fold[:2], {"amount": "10"}, *fold[3:])}) is not None
