"""Statutory floors a client cannot undercut (issue 10).

Each ``test_promise_*`` reproduces one of the broken promises of issue 10 on the old main; the
property at the end generates client layers and checks that none lowers a floor outcome or
amount.
"""

from __future__ import annotations

import copy
import os
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
from refundry.core.loader import Library, Report, load_document

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
    req["refund_to"] = "store_credit"  # the bare form both the old and the new shape accept
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


@pytest.mark.parametrize("effect", ["deny", "approve"])
def test_a_client_rule_never_decides_over_a_floor_held_for_review(tmp_path, effect):
    """Store credit without consent: the law holds it for a person (`manual_review`, a floor).
    A client rule matching the same request decides neither way over it: a deny would take the
    consumer's statutory refund away, an approve would pay in a means the law does not allow.
    The generated property above never draws a floor held for review, so it is pinned here."""
    rule = {"id": f"acme-{effect}-all", "effect": effect, "message": "m", "customer_message": "c",
            "when": {"field": "reason", "eq": BASE_REQUEST["reason"]}}
    _client(tmp_path, "acme-over-review", {"rules": [rule]})
    engine = refundry.Engine.from_path([EU, tmp_path])
    req = {**copy.deepcopy(BASE_REQUEST), "client_id": "acme", "refund_to": "store_credit"}
    floor = refundry.Engine.from_path([EU]).evaluate(copy.deepcopy(req))
    assert floor.outcome == "manual_review" and any(r.floor for r in floor.reasons)
    d = engine.evaluate(req)
    assert not d.errors, d.errors
    assert f"acme-{effect}-all" in d.rule_ids  # the client rule matched: it was outranked
    assert d.outcome == "manual_review", d.to_dict()


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


def _client_tree(tmp_path: Path, folder: str, baselines: tuple[str, ...], client: str,
                 effective_from: str, above: int) -> Path:
    """``baselines`` of ``folder`` and a country-level overlay of ``client`` on the first, with
    one rule that sends a request above ``above`` to a person."""
    for name in baselines:
        shutil.copy(RULESETS / folder / name, tmp_path / name)
    (tmp_path / f"{client}-us.yaml").write_text(yaml.safe_dump({
        "ruleset": f"{client}-us", "version": "1.0.0", "effective_from": effective_from,
        "client": client, "extends": baselines[0].removesuffix(".yaml"), "rules": [{
            "id": f"{client}-big", "when": {"field": "amount", "gt": above},
            "effect": "manual_review", "message": "m", "customer_message": "c"}]}))
    return tmp_path


def _us_tree(tmp_path: Path) -> Path:
    return _client_tree(tmp_path, "ecommerce", ("us-ftc.yaml", "us-ca-consumer.yaml"),
                        "megastore", "2024-01-01", 1000)


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


def test_promise_2_a_country_level_healthcare_client_keeps_california_law(tmp_path):
    engine = refundry.Engine.from_path(_client_tree(
        tmp_path, "healthcare", ("us-health.yaml", "us-ca-health.yaml"), "medgroup",
        "2025-01-01", 10000))
    d = engine.evaluate({
        "request_id": "hc-1", "client_id": "medgroup", "industry": "healthcare",
        "jurisdiction": "US-CA", "requested_at": "2025-08-01T10:00:00-07:00", "amount": "505.00",
        "currency": "USD", "reason": "overpayment", "customer": {"id": "p-1"},
        "transaction": {"id": "a-1", "amount": "505.00"},
        "healthcare": {"provider_type": "hospital", "requested_by": "patient",
                       "payer_type": "self_pay", "amount_due": "500.00"}})
    assert [layer.id for layer in d.ruleset.layers] == ["us-health", "us-ca-health", "medgroup-us"]
    assert "ca-127440-refund-excess" in d.rule_ids and d.amount == Decimal("5.00")
    assert d.deadline("refund_due_by") is not None


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


# Breaking the combiner's floor rules (a client's deny or adjustment lowering a floor outcome
# or amount, a floor amount no longer kept, line floors ignored) fails within the first 9 of
# these examples (they are the same on every run): 400 keep a wide margin; REFUNDRY_LONG=1
# draws the 2,000 this test always ran.
FLOOR_EXAMPLES = 2000 if os.environ.get("REFUNDRY_LONG") == "1" else 400


@settings(max_examples=FLOOR_EXAMPLES, deadline=None,
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


# --- promise 3: the amount starts from what the law says, not from what was typed ----------


def test_promise_3_withdrawal_refunds_all_payments_for_the_goods_and_standard_delivery(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["amount"] = "119.99"  # the consumer typed the goods price
    req["transaction"].update(amount="134.94", shipping_amount="14.95", express_shipping_amount="10.00")
    d = engine.evaluate(req)
    # 134.94 paid, less only the 10.00 express surcharge: standard delivery (4.95) comes back.
    assert d.outcome == "approve" and d.amount == Decimal("124.94")
    assert [(x.sku, x.outcome, x.amount) for x in d.lines] == [("A", "approve", Decimal("124.94"))]


def test_promise_3_the_readme_example_decides_the_lawful_amount(cli):
    r = cli("evaluate", "examples/request.json")
    assert r.code == 0, r.err
    assert r.json()["amount"] == "119.99"  # 129.99 paid less the 10.00 express surcharge


def test_promise_3_partial_withdrawal_refunds_a_proportional_share_of_delivery(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["amount"] = "10.00"
    req["transaction"].update(amount="156.00", shipping_amount="6.00", express_shipping_amount=None)
    req["items"] = [{"sku": "BAG", "quantity": 2, "unit_price": "25.00"}]
    d = engine.evaluate(req)
    assert d.outcome == "approve" and d.amount == Decimal("52.00")  # 50 + 6 x 50/150


# --- promise 4: one excluded item does not deny the basket ----------------------------------


def test_promise_4_a_mixed_basket_refunds_the_lines_the_law_covers(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["items"] = [{"sku": "SHOE", "quantity": 1, "unit_price": "60.00"},
                    {"sku": "MUG-NAME", "quantity": 1, "unit_price": "59.99", "personalized": True}]
    d = engine.evaluate(req)
    assert d.outcome == "approve" and d.amount == Decimal("60.00")
    assert [(x.sku, x.outcome, x.amount, x.rule_ids) for x in d.lines] == [
        ("SHOE", "approve", Decimal("60.00"), ("crd-withdrawal-in-period",)),
        ("MUG-NAME", "deny", Decimal("0.00"), ("crd-excluded-goods",))]
    # Only excluded goods: the order is denied.
    req["items"] = req["items"][1:]
    assert engine.evaluate(req).outcome == "deny"


def test_lines_and_actions_are_in_the_decision_json_and_its_schema(engine):
    import jsonschema

    from refundry.core.resources import schema

    req = copy.deepcopy(BASE_REQUEST)
    req["items"].append({"sku": "B", "quantity": 2, "unit_price": "5.00", "perishable": True})
    data = engine.evaluate(req).to_dict()
    jsonschema.validate(data, schema("decision.schema.json"))
    assert [line["outcome"] for line in data["lines"]] == ["approve", "deny"]
    assert data["actions"] == []


# --- actions: Reg E provisional credit moves the money while the investigation runs ---------


FIN_REQUEST = {
    "request_id": "fin-1", "client_id": "any-bank", "industry": "finance", "jurisdiction": "US-NY",
    "requested_at": "2024-07-15T10:00:00-04:00", "amount": "250.00", "currency": "USD",
    "reason": "unauthorized", "customer": {"id": "c-1"},
    "transaction": {"id": "t-1", "amount": "300.00"},
    "finance": {"account_type": "debit_card", "statement_sent_at": "2024-07-01T08:00:00-04:00",
                "notice_received_at": "2024-07-15T10:00:00-04:00", "notice_form": "written"},
}


@pytest.mark.parametrize("backend", ["compiled", "durable"])
def test_reg_e_orders_provisional_credit_while_the_outcome_stays_open(backend):
    engine = refundry.Engine.from_path(RULESETS, backend=backend)
    d = engine.evaluate(FIN_REQUEST)
    assert d.outcome == "manual_review"
    [action] = d.actions
    assert (action.type, action.amount, action.due.isoformat()) == (
        "provisional_credit", Decimal("250.00"), "2024-07-29")
    assert "1005.11(c)(2)" in action.citation and action.rule_id == "rege-investigate"
    late = {**FIN_REQUEST, "finance": {**FIN_REQUEST["finance"],
                                       "notice_received_at": "2024-09-15T10:00:00-04:00"}}
    assert engine.evaluate(late).actions == ()
    engine.close()


@pytest.mark.parametrize("backend", ["compiled", "durable"])
def test_reg_e_late_required_confirmation_drops_the_credit_not_the_investigation(backend):
    # 12 CFR 1005.11(c)(2)(i)(A): the 10th business day after 15 July 2024 is 29 July
    engine = refundry.Engine.from_path(RULESETS, backend=backend)

    def decide(received: str, required: bool = True) -> refundry.Decision:
        finance = {**FIN_REQUEST["finance"], "notice_form": "oral",
                   "written_confirmation_required": required,
                   "written_confirmation_received_at": received}
        return engine.evaluate({**FIN_REQUEST, "finance": finance})

    in_time, late = decide("2024-07-29T12:00:00-04:00"), decide("2024-07-30T12:00:00-04:00")
    assert [a.due.isoformat() for a in in_time.actions] == ["2024-07-29"]
    assert late.actions == () and late.deadline("provisional_credit_due_by") is None
    assert late.outcome == "manual_review"
    assert late.deadline("investigation_due_by") == in_time.deadline("investigation_due_by")
    assert "rege-written-confirmation-late" in late.rule_ids
    assert len(decide("2024-07-30T12:00:00-04:00", required=False).actions) == 1
    engine.close()


# --- duplicates: the engine invariant and the language ---------------------------------------


def test_a_retry_of_an_executed_refund_is_denied_as_a_duplicate_before_any_rule(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["prior_refunds"] = [{"amount": "119.99", "refunded_at": "2024-03-10T10:00:00+01:00",
                             "request_id": req["request_id"]}]
    d = engine.evaluate(req)
    assert d.outcome == "deny" and d.amount == Decimal("0.00")
    assert d.rule_ids == ("refundry.duplicate",)
    assert d.ruleset is not None and d.ruleset.id == "eu-consumer"
    req["prior_refunds"][0]["request_id"] = "an-earlier-request"
    assert engine.evaluate(req).rule_ids != ("refundry.duplicate",)


def test_rules_can_look_inside_prior_refunds_and_compare_with_the_request(tmp_path):
    (tmp_path / "r.yaml").write_text("""
ruleset: history-rules
version: 1.0.0
effective_from: 2020-01-01
industry: ecommerce
jurisdictions: [DE]
rules:
  - id: big-earlier-refund
    when: {any_prior_refund: {all: [{field: amount, ge: {request: amount}},
                                    {field: refunded_at, ge: 2024-03-01}]}}
    effect: manual_review
    message: an earlier refund at least as large as this one
    customer_message: c
  - id: all-small
    when: {all_prior_refunds: {field: amount, lt: 10}}
    effect: approve
    message: m
    customer_message: c
""")
    engine = refundry.Engine.from_path(tmp_path)
    req = copy.deepcopy(BASE_REQUEST)
    req["prior_refunds"] = [{"amount": "5.00", "refunded_at": "2024-03-05T10:00:00+01:00"},
                            {"amount": "200.00", "refunded_at": "2024-03-05T10:00:00+01:00",
                             "request_id": "older"}]
    req["transaction"]["amount"] = "500.00"
    assert engine.evaluate(req).rule_ids == ("big-earlier-refund",)
    req["prior_refunds"] = req["prior_refunds"][:1]
    assert engine.evaluate(req).rule_ids == ("all-small",)
    req["prior_refunds"] = []
    assert engine.evaluate(req).rule_ids == ("refundry.no-rule-matched",)  # `all` needs one
    durable = refundry.Engine.from_path(tmp_path, backend="durable")
    req["prior_refunds"] = [{"amount": "200.00", "refunded_at": "2024-03-05T10:00:00+01:00"}]
    assert durable.evaluate(req).to_dict() == engine.evaluate(req).to_dict()
    durable.close()


# --- contract shape and impossible dates -----------------------------------------------------


def test_refund_to_takes_the_payment_method_shape_and_a_bare_string(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["transaction"]["payment_method"] = {"type": "card", "last4": "4242"}
    for refund_to, outcome in ((None, "approve"), ({"type": "card", "last4": "4242"}, "approve"),
                               ({"type": "card", "last4": "9999"}, "manual_review"),
                               ("store_credit", "manual_review"), ("original", "approve")):
        if refund_to is not None:
            req["refund_to"] = refund_to
        d = engine.evaluate(req)
        assert not d.errors and d.outcome == outcome, (refund_to, d.to_dict())


@pytest.mark.parametrize("where, text", [
    ("effective_from", "effective_from: 2024-02-30\n"),
    ("literal", "effective_from: 2024-01-01\nrules:\n  - id: r\n"
                "    when: {field: transaction.delivered_at, ge: 2024-13-01}\n"
                "    effect: deny\n    message: m\n    customer_message: c\n"),
])
def test_an_impossible_date_in_a_ruleset_is_a_load_error(tmp_path, cli, where, text):
    path = tmp_path / "x.yaml"
    path.write_text("ruleset: x\nversion: 1.0.0\n" + text + ("rules: []\n" if where != "literal" else ""))
    r = cli("validate", path)
    assert r.code == 3 and "Traceback" not in r.err, r.err
    assert re.search(rf"{re.escape(str(path))}:\d+:\d+: invalid yaml: `2024-(02-30|13-01)` is not a real date", r.err), r.err


def test_an_impossible_date_in_a_test_file_is_reported_with_its_place(tmp_path, cli):
    shutil.copy(EU, tmp_path / "eu-consumer.yaml")
    (tmp_path / "eu-consumer.test.yaml").write_text(
        "ruleset: eu-consumer\ncases:\n  - name: x\n    request: {}\n"
        "    expect: {deadlines: {period_ends: 2024-02-30}}\n")
    r = cli("test", tmp_path)
    assert r.code == 3 and "Traceback" not in r.err, r.err
    assert "eu-consumer.test.yaml:5:" in r.err and "`2024-02-30` is not a real date" in r.err


def test_explain_shows_a_rules_line_condition_apart_from_its_when(engine):
    req = copy.deepcopy(BASE_REQUEST)
    req["items"].append({"sku": "MUG", "quantity": 1, "unit_price": "5.00", "personalized": True})
    ex = engine.explain(req).to_dict()
    rule = next(r for r in ex["rules"] if r["rule_id"] == "crd-excluded-goods")
    assert rule["matched"] is True
    assert rule["when"] == {"field": "reason", "op": "eq", "value": "changed_mind",
                            "seen": "changed_mind", "result": True}
    assert [item["result"] for item in rule["lines"]["any_item"]] == [False, True]
    assert [line["outcome"] for line in ex["decision"]["lines"]] == ["approve", "deny"]


def test_the_short_explanation_names_each_line_and_action(cli, tmp_path):
    import json

    req = copy.deepcopy(BASE_REQUEST)
    req["items"].append({"sku": "MUG", "quantity": 1, "unit_price": "5.00", "personalized": True})
    (tmp_path / "basket.json").write_text(json.dumps(req))
    (tmp_path / "dispute.json").write_text(json.dumps(FIN_REQUEST))
    out = cli("evaluate", tmp_path / "basket.json", "--explain").out
    assert "line: A x1 approve 119.99 (crd-withdrawal-in-period)" in out, out
    assert "line: MUG x1 deny 0.00 (crd-excluded-goods)" in out, out
    out = cli("evaluate", tmp_path / "dispute.json", "--explain").out
    assert "action: provisional_credit 250.00 USD by 2024-07-29" in out, out
