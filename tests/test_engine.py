"""The library API: decisions, amounts, deadlines, resolution and failing closed."""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import jsonschema
import pytest

import refundry
from refundry.core.resources import schema

from .conftest import RULESETS


def test_withdrawal_on_day_14_is_approved_without_express_surcharge(engine, request_json):
    d = engine.evaluate(request_json)
    assert d.outcome == "approve"
    assert d.amount == Decimal("119.99")
    assert d.amount.as_tuple().exponent == -2
    assert d.rule_ids == ("crd-withdrawal-in-period",)
    assert d.deadline("refund_due_by") == dt.date(2024, 4, 2)  # Good Friday + Easter Monday
    assert d.deadline("period_ends") == dt.date(2024, 3, 15)
    assert d.ruleset.id == "eu-consumer" and d.ruleset.version == "1.0.0"
    assert d.ruleset.digest.startswith("sha256:")
    assert d.as_of == dt.datetime.fromisoformat("2024-03-15T18:00:00+01:00")


def test_decision_json_validates_against_its_schema(engine, request_json):
    for req in (request_json, {**request_json, "currency": "ZZZ"}, {}):
        data = engine.evaluate(req).to_dict()
        jsonschema.validate(data, schema("decision.schema.json"))
        json.dumps(data)  # JSON-safe: no Decimal or date objects left


def test_jpy_amounts_have_no_minor_unit(engine, request_json):
    request_json.update(currency="JPY", amount="12000.4", jurisdiction="FR")
    request_json["transaction"].update(amount="13000", express_shipping_amount="500")
    request_json["items"][0]["unit_price"] = "12499.5"
    d = engine.evaluate(request_json)
    assert d.amount == Decimal("12500") and d.amount.as_tuple().exponent == 0


def test_rounding_happens_once_half_up(engine, request_json):
    # 119.995 - 9.9949 = 110.0001 -> 110.00; rounding each part first would give 120.00 - 9.99
    request_json["items"][0]["unit_price"] = "119.995"
    request_json["transaction"].update(amount="119.995", express_shipping_amount=None)
    request_json["diminished_value"] = "9.9949"
    d = engine.evaluate(request_json)
    assert d.amount == Decimal("110.00")
    request_json["diminished_value"] = "9.985"  # 110.010 exactly
    assert engine.evaluate(request_json).amount == Decimal("110.01")


def test_client_ruleset_is_chosen_for_its_client_and_names_every_layer(engine, request_json):
    request_json.update(client_id="acme", requested_at="2024-03-28T10:00:00+01:00")
    d = engine.evaluate(request_json)
    assert d.outcome == "approve"  # day 27: only Acme's 30-day window allows it
    assert d.ruleset.id == "acme-eu"
    assert [layer.id for layer in d.ruleset.layers] == ["eu-consumer", "acme-eu"]
    other = engine.evaluate({**request_json, "client_id": "someone-else"})
    assert other.outcome == "deny" and other.ruleset.id == "eu-consumer"


def test_a_client_review_holds_but_never_denies_a_statutory_refund(engine, request_json):
    request_json.update(client_id="acme", amount="900.00")
    request_json["transaction"]["amount"] = "910.00"
    request_json["items"][0]["unit_price"] = "900.00"
    d = engine.evaluate(request_json)
    assert d.outcome == "manual_review"
    assert "refundry.floor-held" in d.rule_ids and "acme-large-refund-review" in d.rule_ids
    assert d.amount == Decimal("900.00")


@pytest.mark.parametrize("mutate, error", [
    (lambda r: r.pop("reason"), "field `reason`: is required"),
    (lambda r: r.update(amount=12.5), "must be a decimal string"),
    (lambda r: r.update(amount="NaN"), "finite"),
    (lambda r: r.update(amount="1e30"), "larger than any refund"),
    (lambda r: r.update(currency="EUX"), "not an ISO 4217 currency"),
    (lambda r: r.update(jurisdiction="XX"), "not an ISO 3166"),
    (lambda r: r.update(requested_at="2024-03-15T18:00:00"), "no UTC offset"),
    (lambda r: r.update(note="x" * 1_000_001), "characters long"),
    (lambda r: r.update(reason="changed_mind\n"), "not one of"),
    (lambda r: r["transaction"].update(amount=None), "field `transaction.amount`: is required"),
    (lambda r: r.update(timezone="Mars/Olympus"), "not an iana time zone"),
])
def test_invalid_requests_fail_closed_with_a_named_field(engine, request_json, mutate, error):
    mutate(request_json)
    d = engine.evaluate(request_json)
    assert d.outcome == "manual_review"
    assert d.rule_ids == ("refundry.invalid-request",)
    assert any(error.lower() in e.lower() for e in d.errors), d.errors
    assert all("\n" not in e for e in d.errors)


def test_no_ruleset_in_force_means_manual_review(engine, request_json):
    request_json.update(jurisdiction="JP", currency="JPY", amount="1000")
    request_json["transaction"].update(amount="1000", express_shipping_amount="0")
    d = engine.evaluate(request_json)
    assert d.outcome == "manual_review" and d.rule_ids == ("refundry.no-ruleset",)


def test_as_of_before_any_version_is_not_approved(engine, request_json):
    d = engine.evaluate(request_json, as_of=dt.datetime(2010, 1, 1, tzinfo=dt.UTC))
    assert d.outcome == "manual_review" and d.rule_ids == ("refundry.no-ruleset",)


def test_versions_side_by_side_choose_the_one_in_force(tmp_path, request_json):
    base = (RULESETS / "ecommerce" / "eu-consumer.yaml").read_text()
    (tmp_path / "v1.yaml").write_text(base)
    v2 = base.replace("version: 1.0.0", "version: 2.0.0").replace(
        "effective_from: 2014-06-13", "effective_from: 2024-03-16").replace(
        "period: 14 days\n    notice", "period: 21 days\n    notice")
    (tmp_path / "v2.yaml").write_text(v2)
    engine = refundry.Engine.from_path(tmp_path)
    request_json["requested_at"] = "2024-03-20T10:00:00+01:00"
    before = engine.evaluate(request_json, as_of=dt.datetime.fromisoformat("2024-03-15T12:00:00+01:00"))
    after = engine.evaluate(request_json)
    assert (before.outcome, before.ruleset.version) == ("deny", "1.0.0")
    assert (after.outcome, after.ruleset.version) == ("approve", "2.0.0")
    assert before.ruleset.digest != after.ruleset.digest
    assert [(r.id, r.version) for r in engine.rulesets] == [("eu-consumer", "1.0.0"), ("eu-consumer", "2.0.0")]


def test_evaluate_many_keeps_going_after_a_bad_request(engine, request_json):
    decisions = list(engine.evaluate_many([request_json, {"request_id": "bad"}, request_json]))
    assert [d.outcome for d in decisions] == ["approve", "manual_review", "approve"]
    assert decisions[1].request_id == "bad"


def test_an_error_inside_a_rule_becomes_manual_review(tmp_path, request_json):
    (tmp_path / "r.yaml").write_text("""
ruleset: facts-rule
version: 1.0.0
effective_from: 2020-01-01
industry: ecommerce
jurisdictions: [DE]
rules:
  - id: loyal
    when: {field: facts.tier, eq: gold}
    effect: approve
    message: m
    customer_message: c
""")
    engine = refundry.Engine.from_path(tmp_path)
    request_json["facts"] = {"tier": {"nested": ["x"]}}  # unhashable against a string: no crash
    d = engine.evaluate(request_json)
    assert d.outcome == "manual_review" and d.rule_ids == ("refundry.no-rule-matched",)
    request_json["facts"] = {"tier": "gold"}
    assert engine.evaluate(request_json).outcome == "approve"


def test_explain_shows_each_rule_with_the_values_it_saw(engine, request_json):
    ex = engine.explain(request_json)
    by_id = {r["rule_id"]: r for r in ex.rules}
    assert by_id["crd-withdrawal-in-period"]["matched"] is True
    assert by_id["crd-excluded-goods"]["matched"] is False
    leaves = by_id["crd-withdrawal-in-period"]["when"]["all"]
    assert leaves[0] == {"field": "reason", "op": "eq", "value": "changed_mind",
                         "seen": "changed_mind", "result": True}
    assert leaves[2] == {"within": "withdrawal", "last_day": "2024-03-15", "notice": "2024-03-15",
                         "result": True}
    assert ex.to_dict()["decision"]["outcome"] == "approve"


def test_engine_is_safe_to_share_between_threads(engine, request_json):
    import copy

    requests = []
    for day in range(1, 29):
        r = copy.deepcopy(request_json)
        r["request_id"] = f"r{day}"
        r["requested_at"] = f"2024-03-{day:02d}T12:00:00+01:00"
        requests.append(r)
    expected = [engine.evaluate(r).to_dict() for r in requests]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda r: engine.evaluate(r).to_dict(), requests * 4))
            assert got == expected * 4


def test_the_engine_keeps_no_state_between_calls(engine, request_json):
    first = engine.evaluate(request_json)
    engine.evaluate({**request_json, "client_id": "acme", "amount": "9999"})
    engine.evaluate({"garbage": True})
    assert engine.evaluate(request_json) == first
