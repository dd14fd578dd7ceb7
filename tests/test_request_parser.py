"""The compiled request parser (issue 14) answers exactly as the reflective walker it replaced
(tests/reference_request.py): the same RefundRequest, or the same errors in the same order, on
valid requests, on the hostile corpus and on Hypothesis' mutations of both; and the engine's
Decision from a dict is the Decision from the oracle's parse, never `approve` for a bad one."""

from __future__ import annotations

import copy
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refundry
from refundry.core.errors import InvalidRequest
from refundry.core.request import parse_request, replace_fields

from . import hostile_corpus
from .reference_request import reference_parse

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _answer(parse: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", parse(data)
    except InvalidRequest as exc:
        return "invalid", [str(e) for e in exc.errors]


def _bench_requests(n: int) -> list[dict]:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_engine
    finally:
        sys.path.remove(str(BENCH))
    return bench_engine.generate(n, seed=3)


VALID = [json.loads(t, parse_float=Decimal) for t in hostile_corpus.shipped_requests()] + _bench_requests(40)


@pytest.fixture(scope="module")
def engine():
    return refundry.Engine.from_path(hostile_corpus.RULESETS)


def _same_decision(engine: refundry.Engine, data: Any) -> None:
    kind, oracle = _answer(reference_parse, data)
    decision = engine.evaluate(data)
    if kind == "ok":
        assert decision == engine.evaluate(oracle)
    else:
        assert decision.outcome == "manual_review"
        assert list(decision.errors) == oracle


def test_every_valid_request_parses_to_the_oracles_request():
    for data in VALID:
        assert _answer(parse_request, data) == _answer(reference_parse, data)


def test_the_hostile_corpus_parses_and_decides_as_the_oracle(engine):
    for data in hostile_corpus.corpus(1500, seed=14):
        data = hostile_corpus.with_deep(data)
        assert _answer(parse_request, data) == _answer(reference_parse, data)
        _same_decision(engine, data)


VALUES = st.one_of(
    st.sampled_from(hostile_corpus.HOSTILE), st.none(), st.booleans(), st.integers(),
    st.decimals(allow_nan=True), st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["note", "   ", "\u2003", "DE", "EUR", "card", "changed_mind", "2024-03-01",
                     "2024-03-01T10:00:00Z", "12.50", "x" * 1_001]),
)


@st.composite
def mutated(draw: Any) -> dict:
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    paths = sorted(p for p in hostile_corpus._paths(doc) if p)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths) | st.sampled_from(
            ["note", "unknown_key", "customer.extra", "items.0.sku", "items.5.quantity",
             "refund_to", "refund_to.type", "facts.n", "healthcare.amount_due", "finance.holidays.0"]))
        if draw(st.booleans()) and draw(st.booleans()):
            hostile_corpus._put(doc, path, None, delete=True)
        else:
            hostile_corpus._put(doc, path, draw(VALUES))
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_requests_parse_and_decide_as_the_oracle(engine, data):
    data = hostile_corpus.with_deep(data)
    assert _answer(parse_request, data) == _answer(reference_parse, data)
    _same_decision(engine, data)


@pytest.mark.parametrize("data", [None, [], "x", 5, {"refund_to": "store_credit"}, {1: 2}])
def test_what_is_not_a_request_is_refused_as_the_oracle_does(data):
    assert _answer(parse_request, data) == _answer(reference_parse, data)


EDGES = (*hostile_corpus.HOSTILE, "   ", "\u2003", "", "x" * 1_001, "x" * 65_537, "2024-03-01",
         "2024-03-01T10:00:00Z", "12.50", 12, 1_000_001, Decimal("12.5"), False, {"type": "card"},
         [{"sku": "a"}], "card", "changed_mind", "DE", Decimal("0.0000000000001"), Decimal("1E+15"),
         Decimal("-0"), Decimal("0E+20"), Decimal("999999999999999.999999999999"), 10**15)


def test_every_field_of_a_full_request_given_each_edge_value_parses_as_the_oracle():
    """One edit at a time: every path of the fullest shipped requests (and keys they lack)
    given every edge value, so each kind of leaf meets each shape of bad input."""
    fullest = sorted(VALID, key=lambda d: len(list(hostile_corpus._paths(d))))[-3:]
    for base in fullest:
        paths = {p for p in hostile_corpus._paths(base) if p} | {
            "note", "timezone", "unknown", "customer.unknown", "items.0.unknown", "facts.x",
            "refund_to", "finance.billing_cycle_closing_day", "healthcare.amount_due"}
        for path in sorted(paths):
            for value in EDGES:
                data = copy.deepcopy(base)
                hostile_corpus._put(data, path, copy.deepcopy(value))
                data = hostile_corpus.with_deep(data)
                assert _answer(parse_request, data) == _answer(reference_parse, data), (path, value)


def test_money_places_are_read_whatever_the_callers_decimal_context_prints():
    """A caller whose decimal context prints exponents in lower case (`1e-13`) gets the same
    answer for every amount as the oracle: too many places refused, the rest taken."""
    import decimal

    with decimal.localcontext() as ctx:
        ctx.capitals = 0
        for amount in ["1E-13", "1.0000000000000", "0.000000000001", "12.5", "1E+3"]:
            data = {**VALID[0], "amount": Decimal(amount)}
            assert _answer(parse_request, data) == _answer(reference_parse, data)
        assert _answer(parse_request, {**VALID[0], "amount": Decimal("1E-13")})[0] == "invalid"


EXAMPLE = json.loads((BENCH.parent / "examples" / "request.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("changes", [
    {"facts": {"history": {"refunds_90d": 3, "flag": True}, "anomaly": {"score": "0.9"}}},
    {"facts": {"tier": "gold"}, "prior_refunds": [{"amount": "20.00"}]},
    {"prior_refunds": [{"amount": "5", "refunded_at": "2024-03-02T10:00:00+01:00"}]},
    {"refund_to": "store_credit", "note": None},
    {"items": None},
])
def test_replacing_fields_of_a_parsed_request_is_parsing_the_replaced_request(changes):
    # The service adds the store's facts to a request it parsed once; the result must be the
    # parse of the whole enriched request, field for field.
    whole = parse_request({**EXAMPLE, **changes})
    replaced = replace_fields(parse_request(EXAMPLE), changes)
    assert replaced == whole
    assert replaced != parse_request(EXAMPLE)


@pytest.mark.parametrize("changes", [
    {"prior_refunds": [{"amount": "-5"}]},
    {"prior_refunds": "20.00"},
    {"facts": ["not", "a", "map"]},
    {"customer": None},
    {"currency": "XXQ"},
    {"nonsense": 1},
])
def test_an_invalid_replacement_is_refused_as_the_whole_request_would_be(changes):
    with pytest.raises(InvalidRequest) as whole:
        parse_request({**EXAMPLE, **changes})
    with pytest.raises(InvalidRequest) as replaced:
        replace_fields(parse_request(EXAMPLE), changes)
    assert [e.field for e in replaced.value.errors] == [e.field for e in whole.value.errors]



FACT_EDGES = [True, False, None, "", "x" * 1_000, "x" * 1_001, "\ud800", 10**18 - 1, 10**18,
              -(10**18 - 1), -(10**18), 0, 2**80, Decimal("1.5"), 0.25, float("inf"), [1, "a"],
              {"b": 1}]
FACTS = st.recursive(st.sampled_from(FACT_EDGES) | st.text(max_size=8) | st.integers(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["a", "b", "x" * 65, "\ud800"]), inner, max_size=4),
                     max_leaves=30)


def _facts_both_ways(facts: Any) -> None:
    """The request with ``facts`` parsed as it is and with every member of a map through
    ``_parse_facts``'s own call (``_plain_fact`` saying no): the same request, the same errors."""
    from refundry.core import request as parser

    data = {**copy.deepcopy(VALID[0]), "facts": facts}
    quick = _answer(parse_request, data)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(parser, "_plain_fact", lambda value: False)
        assert quick == _answer(parse_request, data)


@pytest.mark.parametrize("leaf", FACT_EDGES, ids=repr)
def test_a_fact_taken_without_the_call_parses_as_through_it_at_every_depth(leaf):
    from refundry.core.request import MAX_FACTS_DEPTH

    for depth in range(MAX_FACTS_DEPTH + 2):
        facts: Any = {"a": leaf, "b": [leaf]}
        for _ in range(depth):
            facts = {"a": facts}
        _facts_both_ways(facts)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "x" * 65]), FACTS, max_size=4))
def test_facts_taken_without_the_call_for_each_member_parse_as_through_it(facts):
    _facts_both_ways(facts)


def test_a_facts_budget_spent_on_plain_members_is_refused_as_before():
    from refundry.core.request import MAX_FACTS_VALUES

    facts = {"a": {f"k{i}": i for i in range(MAX_FACTS_VALUES + 5)}}
    kind, errors = _answer(parse_request, {**copy.deepcopy(VALID[0]), "facts": facts})
    assert kind == "invalid" and any("holds more than" in e for e in errors)
    _facts_both_ways(facts)
