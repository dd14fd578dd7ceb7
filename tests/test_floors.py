"""Statutory floors a client cannot undercut (issue 10).

Each ``test_promise_*`` reproduces one of the broken promises of issue 10 on the old main; the
property at the end generates client layers and checks that none lowers a floor outcome or
amount.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refundry
from refundry.loader import Library, Report, load_document

from .conftest import BASE_REQUEST, RULESETS

EU = RULESETS / "ecommerce" / "eu-consumer.yaml"


def _client(tmp: Path, name: str, body: dict, client: str = "acme") -> Path:
    path = tmp / f"{name}.yaml"
    doc = {"ruleset": name, "version": "1.0.0", "effective_from": "2024-01-01",
           "client": client, "extends": "eu-consumer", **body}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- promise 1: a client layer cannot declare its own floor -------------------------------


@pytest.mark.parametrize("rule", [
    {"id": "acme-no-returns", "floor": True, "citation": "our terms", "effect": "deny",
     "when": {"field": "reason", "eq": "changed_mind"}, "message": "m", "customer_message": "c"},
    {"id": "acme-fee", "floor": True, "citation": "our terms", "effect": "approve",
     "when": {"field": "reason", "eq": "changed_mind"}, "message": "m", "customer_message": "c",
     "amount": [{"deduct_percent": 25}]},
])
def test_promise_1_a_client_floor_rule_is_refused_at_load(tmp_path, cli, rule):
    path = _client(tmp_path, "acme-floor", {"rules": [rule]}, client="acme-floor")
    r = cli("validate", path)
    assert r.code == 3, r.out + r.err
    assert f"{path}:" in r.err and "a client ruleset cannot declare a statutory floor" in r.err
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: rule `{rule['id']}`: a client", r.err), r.err


def test_promise_1_same_means_of_payment_is_a_floor_a_client_cannot_replace(tmp_path, cli):
    path = _client(tmp_path, "acme-e7", {"rules": [{
        "id": "crd-same-means-of-payment", "effect": "manual_review", "message": "m",
        "customer_message": "c", "when": {"field": "amount", "lt": 0}}]}, client="acme-e7")
    r = cli("validate", path)
    assert r.code == 3, r.out + r.err
    assert "overrides statutory floor rule `crd-same-means-of-payment`" in r.err


def test_promise_1_store_credit_without_consent_is_never_approved(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["refund_to"] = {"type": "store_credit"}
    req["transaction"]["payment_method"] = {"type": "card", "last4": "4242"}
    d = engine.evaluate(req)
    assert d.outcome == "manual_review"
    assert "crd-same-means-of-payment" in d.rule_ids
    reason = next(r for r in d.reasons if r.rule_id == "crd-same-means-of-payment")
    assert reason.floor and "floor" in reason.citation.lower()


def test_a_client_fee_never_cuts_the_statutory_amount(tmp_path):
    _client(tmp_path, "acme-fee", {"rules": [{
        "id": "acme-fee", "effect": "adjust", "message": "m",
        "when": {"field": "reason", "eq": "changed_mind"}, "amount": [{"deduct_percent": 25}]}]})
    engine = refundry.Engine.from_path([EU, tmp_path])
    base = refundry.Engine.from_path([EU]).evaluate(copy.deepcopy(BASE_REQUEST))
    d = engine.evaluate({**copy.deepcopy(BASE_REQUEST), "client_id": "acme"})
    assert d.outcome == "approve" and d.amount == base.amount


# --- promise 2: a client layer lands on the law of the request's own place ----------------


CA_REQUEST = {
    "request_id": "ca-1", "client_id": "megastore", "industry": "ecommerce",
    "jurisdiction": "US-CA", "requested_at": "2024-07-31T10:00:00-07:00", "amount": "80.00",
    "currency": "USD", "reason": "changed_mind", "customer": {"id": "c-1"},
    "transaction": {"id": "t-1", "amount": "80.00", "purchased_at": "2024-07-01T10:00:00-07:00"},
    "disclosures": {"refund_policy_posted": False, "refund_policy": "exchange_only"},
    "evidence": {"original_packaging": True},
    "items": [{"sku": "LAMP", "quantity": 1, "unit_price": "80.00", "condition": "new"}],
}


def _us_tree(tmp_path: Path) -> Path:
    for name in ("us-ftc.yaml", "us-ca-consumer.yaml"):
        shutil.copy(RULESETS / "ecommerce" / name, tmp_path / name)
    (tmp_path / "megastore-us.yaml").write_text(yaml.safe_dump({
        "ruleset": "megastore-us", "version": "1.0.0", "effective_from": "2024-01-01",
        "client": "megastore", "extends": "us-ftc", "rules": [{
            "id": "megastore-big", "when": {"field": "amount", "gt": 1000},
            "effect": "manual_review", "message": "m", "customer_message": "c"}]}))
    return tmp_path


def test_promise_2_a_country_level_client_keeps_the_state_law(tmp_path):
    engine = refundry.Engine.from_path(_us_tree(tmp_path))
    d = engine.evaluate(CA_REQUEST)
    assert [layer.id for layer in d.ruleset.layers] == ["us-ftc", "us-ca-consumer", "megastore-us"]
    assert d.ruleset.id == "megastore-us"
    assert d.outcome == "approve" and "ca-1723-policy-not-posted" in d.rule_ids
    assert d.deadline("period_ends") is not None
    assert d.to_dict()["ruleset"]["layers"][1]["id"] == "us-ca-consumer"
    # The same client in another state gets federal law only.
    other = engine.evaluate({**CA_REQUEST, "jurisdiction": "US-NY",
                             "requested_at": "2024-07-31T10:00:00-04:00"})
    assert [layer.id for layer in other.ruleset.layers] == ["us-ftc", "megastore-us"]


def test_promise_2_validate_checks_a_client_against_every_stack_it_lands_on(tmp_path, cli):
    tree = _us_tree(tmp_path)
    # A client rule with the id of a California floor rule is harmless on federal law alone,
    # but overrides the state's floor for every California request.
    (tree / "megastore-us.yaml").write_text(yaml.safe_dump({
        "ruleset": "megastore-us", "version": "1.0.0", "effective_from": "2024-01-01",
        "client": "megastore", "extends": "us-ftc", "rules": [{
            "id": "ca-1723-policy-not-posted", "when": {"field": "amount", "gt": 1000},
            "effect": "manual_review", "message": "m", "customer_message": "c"}]}))
    r = cli("validate", tree)
    assert r.code == 3, r.out + r.err
    assert "overrides statutory floor rule `ca-1723-policy-not-posted`" in r.err
    assert "on the law of `US-CA`: us-ftc + us-ca-consumer" in r.err
    assert f"{tree / 'megastore-us.yaml'}:7:" in r.err or "megastore-us.yaml:" in r.err


# --- the property: no generated client layer lowers a floor ---------------------------------

_CONDITIONS = st.sampled_from([
    {"field": "reason", "eq": "changed_mind"},
    {"field": "amount", "gt": 50},
    {"field": "amount", "le": 100},
    {"within": "withdrawal"},
    {"after": "withdrawal"},
    {"any_item": {"field": "condition", "eq": "opened"}},
    {"field": "evidence.receipt", "exists": False},
    {"not": {"field": "disclosures.withdrawal_info_given", "eq": True}},
    {"field": "transaction.amount", "ge": {"field": "amount"}},
])
_ADJUSTMENTS = st.one_of(
    st.builds(lambda n: {"deduct_percent": n}, st.integers(0, 100)),
    st.sampled_from([{"deduct": "diminished_value"}, {"deduct": "transaction.amount"},
                     {"deduct": "amount"}, {"base": "request"}, {"base": "transaction"},
                     {"base": "lines"}]),
    st.builds(lambda n: {"cap": n}, st.integers(0, 300)),
)
# Non-floor baseline rules a client may lawfully replace.
_REPLACEABLE = ["crd-withhold-until-goods-back", "crd-excluded-goods", "crd-delivery-date-unknown",
                "crd-withdrawal-period-over"]


@st.composite
def client_rules(draw):
    rules = []
    ids = draw(st.lists(st.one_of(st.sampled_from(_REPLACEABLE),
                                  st.builds(lambda i: f"client-{i}", st.integers(0, 9))),
                        min_size=1, max_size=4, unique=True))
    for rid in ids:
        effect = draw(st.sampled_from(["approve", "deny", "manual_review", "adjust"]))
        conds = draw(st.lists(_CONDITIONS, min_size=1, max_size=3))
        rule = {"id": rid, "effect": effect, "message": "m", "when": {"all": conds}}
        if effect != "adjust":
            rule["customer_message"] = "c"
        adjustments = draw(st.lists(_ADJUSTMENTS, max_size=3))
        bases = [a for a in adjustments if "base" in a][:1]
        adjustments = bases + [a for a in adjustments if "base" not in a]
        if adjustments or effect == "adjust":
            rule["amount"] = adjustments or [{"deduct_percent": 10}]
        if draw(st.booleans()):
            rule["lines"] = draw(st.sampled_from([
                {"field": "condition", "eq": "opened"}, {"field": "sku", "eq": "B"},
                {"not": {"field": "sku", "eq": "B"}}]))
        rules.append(rule)
    return rules


@st.composite
def floor_requests(draw):
    req = copy.deepcopy(BASE_REQUEST)
    req["client_id"] = "acme"
    day = draw(st.integers(2, 15))
    req["requested_at"] = f"2024-03-{day:02d}T10:00:00+01:00"
    price_a = draw(st.integers(1, 300))
    price_b = draw(st.integers(0, 200))
    items = [{"sku": "A", "quantity": 1, "unit_price": f"{price_a}.00",
              "condition": draw(st.sampled_from(["unopened", "opened"]))}]
    if price_b:
        items.append({"sku": "B", "quantity": draw(st.integers(1, 3)), "unit_price": f"{price_b}.50",
                      "condition": "opened", "personalized": draw(st.booleans())})
    req["items"] = items
    goods = sum(Decimal(i["unit_price"]) * i.get("quantity", 1) for i in items)
    shipping = Decimal(draw(st.integers(0, 20)))
    express = Decimal(draw(st.integers(0, int(shipping))))
    req["transaction"] = {**req["transaction"], "amount": str(goods + shipping),
                          "shipping_amount": str(shipping), "express_shipping_amount": str(express)}
    req["amount"] = str(draw(st.sampled_from([goods, goods + shipping, Decimal(price_a)])))
    if draw(st.booleans()):
        req["diminished_value"] = str(draw(st.integers(0, 40)))
    if draw(st.booleans()):
        req["evidence"] = {"receipt": True}
    return req


_BASE_DOC = None


def _base_doc():
    global _BASE_DOC
    if _BASE_DOC is None:
        _BASE_DOC = load_document(EU, Report())
    return _BASE_DOC


@pytest.fixture(scope="module")
def baseline():
    return refundry.Engine.from_path([EU])


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rules=client_rules(), requests=st.lists(floor_requests(), min_size=1, max_size=3))
def test_no_client_layer_lowers_a_floor_outcome_or_amount(baseline, rules, requests):
    with tempfile.TemporaryDirectory() as tmp:
        path = _client(Path(tmp), "generated", {"rules": rules})
        report = Report()
        doc = load_document(path, report)
        assert doc is not None and not report.errors, report.errors
        library = Library([_base_doc(), doc], report)
        assert not report.errors, [str(e) for e in report.errors]
    engine = refundry.Engine(library)
    for req in requests:
        floor = baseline.evaluate(req)
        if not any(r.floor for r in floor.reasons):
            continue
        d = engine.evaluate(req)
        assert not d.errors, d.errors
        assert [x.id for x in d.ruleset.layers] == ["eu-consumer", "generated"]
        if floor.outcome != "deny":
            assert d.outcome != "deny", (rules, req, d.to_dict())
        if floor.outcome == "approve":
            assert d.outcome in ("approve", "manual_review")
            assert d.amount >= floor.amount, (rules, req, floor.to_dict(), d.to_dict())
