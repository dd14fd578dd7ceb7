"""Issue 12, input half: every money field is >= 0, the parser refuses what the schema refuses,
and no value a caller can send makes ``evaluate`` raise."""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal

import attrs
import jsonschema
import pytest

import refundry
from refundry.core.models import RefundRequest

from .conftest import BASE_REQUEST, ROOT

SCHEMA = json.loads((ROOT / "schemas" / "refund-request.schema.json").read_text())
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def _money_paths(cls: type, prefix: str = "") -> list[str]:
    """Every money field of the request model, by dotted path (lists as ``name[0]``)."""
    out = []
    for f in attrs.fields(cls):
        kind, path = f.metadata["kind"], prefix + f.name
        if kind == "money":
            out.append(path)
        elif kind == "object":
            out += _money_paths(f.metadata["model"], path + ("[0]." if f.metadata["many"] else "."))
    return out


MONEY_PATHS = _money_paths(RefundRequest)


def _put(doc: dict, path: str, value: object) -> None:
    *heads, last = path.split(".")
    for head in heads:
        if head.endswith("[0]"):
            doc = doc.setdefault(head[:-3], [{}])[0]
        else:
            doc = doc.setdefault(head, {})
    doc[last] = value


def test_the_model_has_the_money_fields_the_issue_names():
    assert {"prior_refunds[0].amount", "transaction.express_shipping_amount",
            "transaction.shipping_amount", "items[0].unit_price", "diminished_value",
            "healthcare.amount_due", "healthcare.gfe_amount"} <= set(MONEY_PATHS)


@pytest.mark.parametrize("path", MONEY_PATHS)
@pytest.mark.parametrize("value", ["-10", "-0.01", -5, Decimal("-10000")])
def test_a_negative_money_field_is_refused_by_parser_and_schema(engine, path, value):
    request = copy.deepcopy(BASE_REQUEST)
    _put(request, path, value)
    if path.startswith("prior_refunds"):
        request["prior_refunds"][0].setdefault("amount", "1.00")
        _put(request, path, value)
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review" and decision.amount == 0
    assert any(path in e and "negative" in e for e in decision.errors), decision.errors
    if not isinstance(value, Decimal):  # a Decimal is a Python caller's value, not JSON
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(request, SCHEMA, format_checker=FORMATS)


def test_a_negative_prior_refund_no_longer_approves_five_thousand_on_a_small_order(engine):
    # the probe from issue 12: prior_refunds[].amount -10000 raised transaction.refundable
    request = copy.deepcopy(BASE_REQUEST)
    request.update(amount="5000.00", prior_refunds=[{"amount": "-10000"}])
    decision = engine.evaluate(request)
    assert decision.outcome != "approve" and decision.amount == 0


@pytest.mark.parametrize("text", ["１１９.９９", "1_19.99", "1.1999e2", "119.99\n", " 119.99",
                                  "+119.99", "119.", ".99", "0x77", "٣٤", "1" * 16, "NaN"])
def test_the_parser_refuses_every_amount_the_schema_refuses(engine, text):
    request = {**copy.deepcopy(BASE_REQUEST), "amount": text}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, SCHEMA, format_checker=FORMATS)
    with pytest.raises(refundry.InvalidRequest) as caught:
        refundry.parse_request(request)
    assert "field `amount`" in str(caught.value)
    assert engine.evaluate(request).outcome == "manual_review"


@pytest.mark.parametrize("field, value", [
    ("currency", "EUR\n"), ("jurisdiction", "DE\n"), ("requested_at", "2024-03-15T18:00:00+01:00\n"),
    ("requested_at", "0001-01-01T00:00:00+00:00"), ("requested_at", "9999-12-31T23:59:59-01:00"),
    ("requested_at", "2024-03-15 18:00:00+01:00"), ("requested_at", "2024-W11-5T18:00:00+01:00"),
    ("requested_at", "２０２４-03-15T18:00:00+01:00"),
])
def test_schema_and_parser_refuse_trailing_newlines_and_impossible_years(field, value):
    request = {**copy.deepcopy(BASE_REQUEST), field: value}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, SCHEMA, format_checker=FORMATS)
    with pytest.raises(refundry.InvalidRequest):
        refundry.parse_request(request)


@pytest.mark.parametrize("where", ["transaction.delivered_at", "transaction.purchased_at"])
@pytest.mark.parametrize("value", ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59-12:00",
                                   "0001-01-01T00:00:00+14:00"])
def test_year_1_and_9999_are_refused_not_overflowed(engine, where, value):
    request = copy.deepcopy(BASE_REQUEST)
    _put(request, where, value)
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review"
    assert any(where in e and "years 1900 to 2999" in e for e in decision.errors), decision.errors


def test_deeply_nested_values_in_any_field_never_raise(engine):
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    for field in ("reason", "industry", "amount", "customer", "items", "request_id", "facts"):
        request = {**copy.deepcopy(BASE_REQUEST), field: nested}
        decision = engine.evaluate(request)  # raised RecursionError before
        assert decision.outcome == "manual_review" and decision.errors, field
        assert all(len(e) < 300 for e in decision.errors), decision.errors


def test_a_self_referencing_mapping_is_an_invalid_request(engine):
    request = copy.deepcopy(BASE_REQUEST)
    request["customer"]["id"] = request["customer"]  # only a Python caller can build this
    assert engine.evaluate(request).outcome == "manual_review"


@pytest.mark.parametrize("field", ["note", "request_id", "customer.id", "reason"])
def test_a_lone_surrogate_is_refused_and_never_reaches_the_decision(engine, field):
    request = copy.deepcopy(BASE_REQUEST)
    _put(request, field, "a\ud800b")
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review"
    json.dumps(decision.to_dict(), ensure_ascii=False).encode("utf-8")  # printable as UTF-8


@pytest.mark.parametrize("facts, message", [
    ({"n": 10**5000}, "at most 18 digits"),
    ({"n": Decimal("1E+999999")}, "at most 18 digits"),
    ({"n": Decimal("0." + "1" * 5000)}, "at most 18 digits"),
    ({"list": list(range(5_000))}, "more than 2000 values"),
    ({f"k{i}": {"a": list(range(50))} for i in range(150)}, "more than 2000 values"),
    ({"k" * 65: 1}, "keys must be strings of at most 64 characters"),
    ({"s": "a\udfffb"}, "lone surrogate"),
])
def test_facts_have_documented_limits(engine, facts, message):
    request = {**copy.deepcopy(BASE_REQUEST), "facts": facts}
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review"
    assert any(message in e for e in decision.errors), decision.errors


def test_facts_within_the_limits_are_kept():
    facts = {"tier": "gold", "scores": list(range(1_000)), "n": 10**17, "d": Decimal("0.125")}
    request = refundry.parse_request({**copy.deepcopy(BASE_REQUEST), "facts": facts})
    assert request.facts["scores"][-1] == 999 and request.facts["n"] == 10**17


class _Hostile(dict):
    def __iter__(self):
        raise RuntimeError("boom")

    def get(self, *args):
        raise RuntimeError("boom")


@pytest.mark.parametrize("as_of, error", [
    (12, "as_of: needs a UTC offset"), (dt.datetime(2024, 3, 15), "as_of: needs a UTC offset"),
    ("0001-01-01T00:00:00+00:00", "as_of: is outside the years 1900 to 2999"),
    (dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
     "as_of: is outside the years 1900 to 2999"),
])
def test_evaluate_never_raises_on_an_as_of_it_cannot_use(engine, as_of, error):
    decision = engine.evaluate(copy.deepcopy(BASE_REQUEST), as_of=as_of)
    assert decision.outcome == "manual_review" and decision.as_of is None
    assert decision.errors == (error,)
    json.dumps(decision.to_dict())


def test_evaluate_never_raises_on_a_mapping_that_raises(engine):
    decision = engine.evaluate(_Hostile(BASE_REQUEST))
    assert decision.outcome == "manual_review" and decision.errors
