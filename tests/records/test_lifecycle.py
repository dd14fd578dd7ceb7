"""The records API on both stores: cases, idempotency, the state machine, maker-checker,
disputes, replay and verification. Every test runs against SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import shutil
from decimal import Decimal

import pytest

import refundry
from refundry.records.events import GENESIS, IllegalTransition, RecordError

from .conftest import RULESETS, make_request

LARGE = {"client_id": "acme", "amount": "600"}  # acme-eu sends refunds above 500 to review


def count(store) -> int:
    return store.checkpoint().count


def test_a_decision_opens_a_case_with_one_evaluated_event(store, record):
    case = record(make_request("r-1"))
    assert case.status == "approved"
    assert [e.type for e in case.events] == ["evaluated"]
    event = case.events[0]
    # Event 1 links to a commitment to the store's salt, not to zeros (issue 12).
    assert event.seq == 1 and event.prev == store.genesis != GENESIS and event.actor == "alice"
    assert event.body["ruleset"]["id"] == "eu-consumer"
    assert event.body["ruleset"]["digest"].startswith("sha256:")
    assert event.decision["outcome"] == "approve" and event.decision["amount"] == "119.99"
    assert event.body["request"]["request_id"] == "r-1"
    assert store.verify().ok


def test_the_same_request_twice_is_one_case(store, engine, record):
    req = make_request("r-1")
    record(req)
    case, created = store.record(req, engine.evaluate(req), engine=engine, actor="bob")
    assert not created and len(case.events) == 1 and case.submitter == "alice"
    assert count(store) == 1


def test_a_different_request_under_a_known_id_is_refused(store, engine, record):
    record(make_request("r-1"))
    other = make_request("r-1", amount="50")
    with pytest.raises(RecordError, match="already recorded with different content"):
        store.record(other, engine.evaluate(other), engine=engine, actor="alice")
    assert count(store) == 1


def test_an_invalid_request_is_not_recorded(store, engine):
    bad = make_request("r-bad")
    bad["amount"] = "lots"
    with pytest.raises(RecordError, match="invalid request is not recorded"):
        store.record(bad, engine.evaluate(bad), engine=engine, actor="alice")
    assert count(store) == 0


def test_a_large_refund_needs_two_different_reviewers(store, record):
    case = record(make_request("big", **LARGE))
    assert case.status == "manual_review" and case.required_approvals == 2
    with pytest.raises(IllegalTransition, match="submitted request `big`"):
        store.review("big", actor="alice", approve=True, reason="mine")
    assert count(store) == 1  # the refused self-approval left nothing behind
    case = store.review("big", actor="bob", approve=True, reason="receipt checked")
    assert case.status == "manual_review" and case.approvals == ("bob",)
    assert case.events[-1].type == "reviewed"
    with pytest.raises(IllegalTransition, match="already approved"):
        store.review("big", actor="bob", approve=True, reason="again")
    assert count(store) == 2
    case = store.review("big", actor="carol", approve=True, reason="second check")
    assert case.status == "approved" and case.events[-1].type == "approved"
    assert case.events[-1].details["justification"] == "second check"
    assert case.events[-1].details["required_approvals"] == 2
    assert store.verify().ok


def test_the_threshold_is_a_setting_recorded_in_the_chain(store, record):
    store.set_four_eyes_above("1000", actor="admin")
    case = record(make_request("big", **LARGE))
    assert case.required_approvals == 1
    case = store.review("big", actor="bob", approve=True)
    assert case.status == "approved"
    assert store.four_eyes_above() == Decimal("1000")
    assert [e.type for e in store.events()] == ["note", "evaluated", "approved"]
    with pytest.raises(RecordError, match="is not an amount"):
        store.set_four_eyes_above("-1", actor="admin")


def test_a_denial_needs_a_justification_and_not_the_submitter(store, record):
    record(make_request("big", **LARGE))
    with pytest.raises(RecordError, match="justification"):
        store.review("big", actor="bob", approve=False)
    with pytest.raises(IllegalTransition):
        store.review("big", actor="alice", approve=False, reason="no")
    case = store.review("big", actor="bob", approve=False, reason="used goods")
    assert case.status == "denied"
    assert count(store) == 2


@pytest.mark.parametrize("step", ["processed", "refunded", "review", "dispute_resolved"])
def test_an_illegal_transition_is_refused_and_leaves_no_event(store, record, step):
    record(make_request("big", **LARGE))  # in manual_review
    before = store.checkpoint()
    with pytest.raises(IllegalTransition):
        if step in ("processed", "refunded"):
            store.mark("big", step, actor="ops")
        elif step == "review":
            record(make_request("small"))  # approved automatically: nothing to review
            before = store.checkpoint()
            store.review("small", actor="bob", approve=True)
        else:
            store.resolve_dispute("big", actor="lead", resolution="upheld", explanation="x")
    assert store.checkpoint() == before
    assert store.verify().ok


def test_the_whole_lifecycle(store, record, engine):
    record(make_request("r-1"))
    store.mark("r-1", "processed", actor="ops", reference="psp-1")
    with pytest.raises(IllegalTransition, match="is processed"):
        store.mark("r-1", "processed", actor="ops")
    case = store.mark("r-1", "refunded", actor="ops")
    assert case.status == "refunded"
    case = store.note("r-1", "customer called", actor="alice")
    assert case.status == "refunded"
    case = store.open_dispute("r-1", actor="cs", reason="wants shipping back", engine=engine)
    assert case.status == "disputed"
    with pytest.raises(IllegalTransition, match="is disputed"):
        store.open_dispute("r-1", actor="cs", reason="again", engine=engine)
    case = store.resolve_dispute("r-1", actor="lead", resolution="upheld",
                                 explanation="Express shipping is not refundable by law.")
    assert case.status == "refunded"
    assert case.dispute["explanation"] == "Express shipping is not refundable by law."
    assert [e.type for e in case.events] == [
        "evaluated", "processed", "refunded", "note", "disputed", "dispute_resolved"]
    assert store.verify().ok


def test_an_overturned_dispute_approves_the_case(store, record, engine):
    record(make_request("big", **LARGE))
    store.review("big", actor="bob", approve=False, reason="looks used")
    case = store.open_dispute("big", actor="cs", reason="it was unopened", engine=engine)
    with pytest.raises(IllegalTransition, match="submitted"):
        store.resolve_dispute("big", actor="alice", resolution="overturned", explanation="x")
    case = store.resolve_dispute("big", actor="lead", resolution="overturned",
                                 explanation="The parcel was unopened; you get a full refund.",
                                 amount="590.00")
    assert case.status == "approved" and case.dispute["amount"] == "590.00"
    assert case.dispute["resolution"] == "overturned"
    assert store.mark("big", "processed", actor="ops").status == "processed"


def _two_versions(tmp_path):
    """eu-consumer plus acme-eu 1.0.0 and a 2.0.0 (from 2025) that reviews only above 1000."""
    shutil.copy(RULESETS / "ecommerce" / "eu-consumer.yaml", tmp_path / "eu-consumer.yaml")
    v1 = (RULESETS / "ecommerce" / "acme-eu.yaml").read_text(encoding="utf-8")
    (tmp_path / "acme-eu.yaml").write_text(v1, encoding="utf-8")
    v2 = (v1.replace("version: 1.0.0", "version: 2.0.0")
          .replace("effective_from: 2024-01-01", "effective_from: 2025-01-01")
          .replace("{field: amount, gt: 500}", "{field: amount, gt: 1000}"))
    (tmp_path / "acme-eu-2.yaml").write_text(v2, encoding="utf-8")
    return refundry.Engine.from_path(tmp_path)


def test_a_dispute_shows_the_original_and_todays_rules(store, tmp_path):
    engine = _two_versions(tmp_path)
    req = make_request("big", **LARGE)
    store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.review("big", actor="bob", approve=False, reason="over the limit")
    case = store.open_dispute("big", actor="cs", reason="the limit changed", engine=engine)
    event = case.events[-1]
    assert event.type == "disputed"
    original, current = event.details["original"], event.details["current"]
    assert original["outcome"] == "manual_review" and original["ruleset"]["version"] == "1.0.0"
    assert current["outcome"] == "approve" and current["ruleset"]["version"] == "2.0.0"
    assert "outcome" in event.details["changed_since"]
    # Today's rules are kept too, so the dispute's own evaluation can be replayed later.
    assert store.ruleset_text(current["ruleset"]["layers"][-1]["digest"]) is not None


def test_replay_uses_only_the_kept_ruleset_texts(store, tmp_path):
    engine = _two_versions(tmp_path)
    req = make_request("big", **LARGE)
    store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    shutil.rmtree(tmp_path)  # the files the decision was made from are gone
    result = store.replay("big")
    assert result.same and result.differences == ()
    assert result.replayed["ruleset"] == result.original["ruleset"]
    assert result.replayed["outcome"] == "manual_review"


def test_export_writes_every_event_with_its_hash(store, record):
    record(make_request("r-1"))
    store.note("r-1", "hello", actor="bob")
    out = io.StringIO()
    assert store.export(out) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2]
    assert lines[1]["prev"] == lines[0]["hash"]
    assert lines[1]["details"] == {"text": "hello"}


def test_verify_detects_an_edited_event(store, store_url, record):
    record(make_request("r-1"))
    record(make_request("r-2"))
    store.note("r-1", "fine", actor="bob")
    head = store.checkpoint()
    assert store.verify(expect_head=head.head).ok
    _tamper(store_url, "UPDATE events SET body = replace(body, '\"fine\"', '\"FINE\"') WHERE seq = 3")
    result = store.verify()
    assert not result.ok and result.broken_seq == 3 and "changed" in result.problem
    _tamper(store_url, "DELETE FROM events WHERE seq = 3")
    result = store.verify(expect_head=head.head)
    assert not result.ok and "checkpoint head" in result.problem
    assert store.verify().ok  # without the checkpoint a cut-off tail looks whole


def test_an_empty_store_verifies_against_its_empty_checkpoint(store):
    empty = store.checkpoint()
    assert empty.count == 0 and store.verify(expect_head=empty.head).ok


def test_opening_without_create_needs_an_existing_store(store_url):
    from refundry.records.stores import open_store

    with pytest.raises(RecordError, match="no records store"):
        open_store(store_url, create=False)
    open_store(store_url).close()
    open_store(store_url, create=False).close()


def test_the_store_refuses_updates_and_deletes(store, store_url, record):
    record(make_request("r-1"))
    with pytest.raises(Exception, match="append-only"):
        _tamper(store_url, "DELETE FROM events", keep_triggers=True)
    assert count(store) == 1


def _tamper(url: str, statement: str, *, keep_triggers: bool = False) -> None:
    """Change the store behind its back, as someone with database access could."""
    if url.startswith("postgresql://"):
        import psycopg

        from refundry.records.stores import _split_pg_url

        conninfo, schema = _split_pg_url(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            if not keep_triggers:
                conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            try:
                conn.execute(statement)
            finally:
                if not keep_triggers:
                    conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
        return
    import sqlite3

    conn = sqlite3.connect(url, isolation_level=None)
    try:
        if not keep_triggers:
            conn.execute("DROP TRIGGER IF EXISTS events_no_update")
            conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
        conn.execute(statement)
    finally:
        conn.close()


def test_a_rule_can_demand_two_reviewers_at_any_amount(store, tmp_path):
    shutil.copy(RULESETS / "ecommerce" / "eu-consumer.yaml", tmp_path / "eu-consumer.yaml")
    text = (RULESETS / "ecommerce" / "acme-eu.yaml").read_text(encoding="utf-8")
    text = (text.replace("{field: amount, gt: 500}", "{field: amount, gt: 50}")
            .replace("code: large_refund_review", "code: four_eyes"))
    (tmp_path / "acme-eu.yaml").write_text(text, encoding="utf-8")
    engine = refundry.Engine.from_path(tmp_path)
    req = make_request("mid", client_id="acme", amount="100")
    case, _ = store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    assert case.status == "manual_review" and case.required_approvals == 2
    assert store.review("mid", actor="bob", approve=True).status == "manual_review"
    assert store.review("mid", actor="carol", approve=True).status == "approved"


def test_exported_events_match_the_record_schema(store, record, engine):
    import jsonschema

    from refundry.core.resources import schema

    validator = jsonschema.Draft202012Validator(schema("record-event.schema.json"))
    store.set_four_eyes_above("550", actor="admin")
    record(make_request("big", **LARGE))
    store.review("big", actor="bob", approve=True, reason="ok")
    store.review("big", actor="carol", approve=True, reason="ok")
    store.mark("big", "processed", actor="ops")
    store.open_dispute("big", actor="cs", reason="more", engine=engine)
    store.resolve_dispute("big", actor="lead", resolution="overturned", explanation="yes")
    record(make_request("big2", **LARGE))
    store.review("big2", actor="bob", approve=False, reason="no")
    out = io.StringIO()
    store.export(out)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(events) == 9
    for event in events:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event["type"], errors)
    assert list(validator.iter_errors({**events[1], "hash": "md5:x"}))
    assert list(validator.iter_errors({**events[-1], "details": {}}))


def test_every_stored_body_is_canonical_json(store, record, engine):
    import rfc8785

    record(make_request("big", **LARGE))
    store.review("big", actor="bob", approve=True, reason="ok ✓ 💶")
    store.review("big", actor="carol", approve=True, reason="\ud7ff\ue000\uffff")
    store.note("big", "line\nbreak \u0001 and \"quotes\"", actor="bob")
    store.open_dispute("big", actor="cs", reason="x", engine=engine)
    out = io.StringIO()
    assert store.export(out) == 5
    for line in out.getvalue().splitlines():
        # An exported line is the stored body with `"hash":"…"` added as its last member.
        body = line[:line.rindex(',"hash":')] + "}"
        assert rfc8785.dumps(json.loads(body)).decode() == body, line[:60]


def test_a_postgresql_store_survives_a_dropped_connection(store_url, engine):
    if not store_url.startswith("postgresql://"):
        pytest.skip("a PostgreSQL connection matter")
    import uuid

    import psycopg

    from refundry.records.stores import _split_pg_url, open_store

    name = f"refundry-test-{uuid.uuid4().hex[:8]}"
    store = open_store(f"{store_url}&application_name={name}")
    try:
        req = make_request("r-1")
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
        conninfo, _schema = _split_pg_url(store_url)
        with psycopg.connect(conninfo, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM "
                                   "pg_stat_activity WHERE application_name = %s", (name,))
            assert killed.fetchone()[0] == 1
        assert store.note("r-1", "after the drop", actor="bob").status == "approved"
        assert store.verify().count == 2
    finally:
        store.close()


def test_a_batch_commits_many_appends_at_once_and_a_refused_one_alone(store, engine):
    first = make_request("b-1")
    store.record(first, engine.evaluate(first), engine=engine, actor="bot")
    changed = make_request("b-1", amount="1.00")  # same id, other content: refused
    with store.batch():
        for i in range(2, 6):
            req = make_request(f"b-{i}")
            store.record(req, engine.evaluate(req), engine=engine, actor="bot")
        with pytest.raises(RecordError, match="already recorded with different content"):
            store.record(changed, engine.evaluate(changed), engine=engine, actor="bot")
        last = make_request("b-6")
        store.record(last, engine.evaluate(last), engine=engine, actor="bot")
    assert count(store) == 6
    assert sorted(c.request_id for c in store.cases()) == [f"b-{i}" for i in range(1, 7)]
    assert store.verify().ok


def test_a_batch_that_fails_keeps_nothing(store, engine):
    with pytest.raises(KeyboardInterrupt), store.batch():
        req = make_request("c-1")
        store.record(req, engine.evaluate(req), engine=engine, actor="bot")
        raise KeyboardInterrupt
    assert count(store) == 0
    again = make_request("c-1")
    case, created = store.record(again, engine.evaluate(again), engine=engine, actor="bot")
    assert created and store.verify().ok
    assert store.replay("c-1").same  # the ruleset texts were written again, not assumed kept
