"""Malformed and hostile requests never yield approve and never raise out of evaluate."""

from __future__ import annotations

import copy
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import BASE_REQUEST

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=12)

HOSTILE = st.sampled_from([
    None, "", " ", "NaN", "Infinity", "-1", "1e400", "9" * 40, float("nan"), float("inf"), 1e308,
    -5, 10**30, True, [], {}, "x" * 70_000, "2024-02-30T00:00:00Z", "2024-03-01", "\x00\n`rm -rf`",
    "4111 1111 1111 1111", {"$ne": 1}, "changed_mind ", "ZZZ", "Mars/Olympus",
])

PATHS = [
    ("request_id",), ("client_id",), ("industry",), ("jurisdiction",), ("requested_at",),
    ("amount",), ("currency",), ("reason",), ("customer",), ("customer", "id"), ("transaction",),
    ("transaction", "amount"), ("transaction", "delivered_at"), ("items",), ("note",),
    ("timezone",), ("diminished_value",), ("facts",), ("prior_refunds",), ("disclosures",),
    ("transaction", "express_shipping_amount"), ("evidence", "goods_received_back"),
]


def _set(doc, path, value):
    target = doc
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


_DELETE = object()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), HOSTILE | st.just(_DELETE) | JSON), min_size=1, max_size=4))
def test_mutated_requests_are_never_approved_unless_still_valid(engine, mutations):
    request = copy.deepcopy(BASE_REQUEST)
    for path, value in mutations:
        _set(request, path, value)
    decision = engine.evaluate(request)  # must not raise
    if decision.errors:
        assert decision.outcome == "manual_review"
        assert decision.amount == 0
    if decision.outcome == "approve":
        # only a request that is still entirely valid can be approved
        from refundry import parse_request

        parse_request(request)
        assert decision.amount <= decision.amount.__class__(request["transaction"]["amount"])
    json.dumps(decision.to_dict())


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_arbitrary_json_is_never_approved(engine, value):
    decision = engine.evaluate(value)
    assert decision.outcome == "manual_review"
    assert decision.errors


def test_a_one_megabyte_note_and_huge_numbers_fail_closed(engine):
    for field, value in [("note", "A" * 1_048_576), ("amount", "9" * 30),
                         ("amount", float("nan")), ("amount", "1E+999999")]:
        request = copy.deepcopy(BASE_REQUEST)
        request[field] = value
        decision = engine.evaluate(request)
        assert decision.outcome == "manual_review" and decision.errors, field
        assert all(len(e) < 500 for e in decision.errors)


def test_deeply_nested_facts_are_refused_without_recursion_errors(engine):
    nested: dict = {}
    cursor = nested
    for _ in range(5000):
        cursor["a"] = {}
        cursor = cursor["a"]
    request = copy.deepcopy(BASE_REQUEST)
    request["facts"] = nested
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review"
    assert any("nests deeper" in e for e in decision.errors)


def test_float_facts_from_python_callers_become_exact_decimals(engine):
    request = copy.deepcopy(BASE_REQUEST)
    request["facts"] = {"score": 0.1, "bad": math.inf}
    decision = engine.evaluate(request)
    assert decision.outcome == "manual_review"
    assert any("facts.bad" in e for e in decision.errors)
