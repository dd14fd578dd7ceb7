"""`evaluate --explain`: a short explanation a person reads (the full trace behind
`--explain=json`), and `Engine.evaluate(as_of=...)` taking RFC 3339 strings as the CLI does."""

from __future__ import annotations

import datetime as dt
import json

import pytest


def test_explain_is_short_and_names_what_decided(cli, tmp_path, request_json):
    path = tmp_path / "req.json"
    request_json["evidence"] = {"goods_received_back": False}
    path.write_text(json.dumps(request_json))
    r = cli("evaluate", path, "--explain")
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    assert len(lines) < 30
    assert lines[0] == ("decision: manual_review 119.99 EUR (ruleset eu-consumer 1.0.0, as of "
                        "2024-03-15T18:00:00+01:00)")
    assert lines[1] == "matched:"
    assert ("  crd-withdrawal-in-period (approve, eu-consumer, statutory floor): reason = "
            "changed_mind; disclosures.withdrawal_info_given = true; within withdrawal (last day "
            "2024-03-15, notice 2024-03-15); not (all items: 0 of 1 item(s) matched)") in lines
    # ^ the last clause: the order is goods, not all digital content or services (E2)
    # the excluded-goods test is per line now (`lines:`), shown with each line's outcome
    assert "line: A x1 manual_review 119.99 (crd-withdrawal-in-period, crd-withhold-until-goods-back)" in lines
    withheld = next(line for line in lines if line.startswith("  crd-withhold-until-goods-back"))
    assert "not (evidence.goods_received_back = true (was false))" in withheld
    near = lines.index("nearly matched (one condition away):")
    assert ("  crd-delivery-date-unknown (manual_review, eu-consumer): fails only on "
            "transaction.delivered_at missing (was 2024-03-01)") in lines[near:]
    assert "deadline: refund_due_by 2024-04-02 (E7 - Directive 2011/83/EU Art 13(1))" in lines


def test_explain_json_keeps_the_full_trace(cli, tmp_path, request_json):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request_json))
    full = cli("evaluate", path, "--explain=json")
    assert full.code == 0
    out = full.json()
    assert {"decision", "facts", "rules"} <= set(out)
    assert len(full.out.splitlines()) > 5 * len(cli("evaluate", path, "--explain").out.splitlines())


def test_explain_may_come_before_the_request_file(cli, tmp_path, request_json):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request_json))
    after = cli("evaluate", path, "--explain")
    before = cli("evaluate", "--explain", path)
    assert before.code == 0, before.err
    assert before.out == after.out and before.out.startswith("decision: ")
    as_json = cli("evaluate", "--explain", "json", path)
    assert as_json.code == 0 and as_json.json()["decision"] == cli("evaluate", path).json()


def test_explain_with_a_word_other_than_text_or_json_is_a_usage_error(cli, tmp_path, request_json):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request_json))
    r = cli("evaluate", path, "--explain", "yaml")
    assert r.code == 1 and r.out == ""
    assert "--explain takes `text` or `json`, not `yaml`" in r.err
    missing = cli("evaluate", "--explain")
    assert missing.code == 1 and "evaluate needs a request" in missing.err


def test_evaluate_accepts_an_rfc3339_as_of(engine, request_json):
    by_string = engine.evaluate(request_json, as_of="2024-08-05T10:00:00-07:00")
    by_datetime = engine.evaluate(request_json, as_of=dt.datetime.fromisoformat("2024-08-05T10:00:00-07:00"))
    assert by_string == by_datetime
    assert by_string.as_of == dt.datetime(2024, 8, 5, 17, tzinfo=dt.UTC)
    assert engine.explain(request_json, as_of="2024-08-05T10:00:00-07:00").decision == by_string


@pytest.mark.parametrize(("as_of", "error"), [
    ("2024-08-05T10:00:00", "as_of: needs a UTC offset"),
    ("next tuesday", "as_of: `next tuesday` is not an RFC 3339 time"),
])
def test_a_bad_as_of_string_is_an_invalid_request_never_a_crash(engine, request_json, as_of, error):
    decision = engine.evaluate(request_json, as_of=as_of)
    assert decision.outcome == "manual_review"
    assert decision.errors == (error,)
