"""The compiled (generated-code) matcher and the interpreter agree on every condition form,
including missing facts and facts of the wrong type; the interpreter is the reference."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refundry.core.language import (
    All,
    AnyOf,
    CodeGen,
    Compare,
    FieldRef,
    Items,
    Literal,
    Not,
    Percent,
    Window,
    required_values,
)

NUMS = [Decimal("0"), Decimal("10"), Decimal("10.00"), Decimal("99.99"), Decimal("100"), 7]
DATES = [dt.date(2024, 2, 28), dt.date(2024, 2, 29), dt.date(2024, 3, 1)]
TEXT = ["a", "b", "changed_mind"]
FIELDS = {"n1": NUMS, "n2": NUMS, "d1": DATES, "d2": DATES, "t1": TEXT, "b1": [True, False]}
ITEM_FIELDS = {"q": NUMS, "c": TEXT, "f": [True, False]}


def leaf(fields, typed=True):
    name = st.sampled_from(sorted(fields))

    def build(field):
        values = fields[field]
        ops = ["eq", "ne", "in", "not_in", "exists"]
        if field[0] in "nd":
            ops += ["lt", "le", "gt", "ge"]
        return st.sampled_from(ops).flatmap(lambda op: operand(field, op, values).map(
            lambda operand_: Compare(field, op, operand_, typed)))

    return name.flatmap(build)


def operand(field, op, values):
    if op == "exists":
        return st.booleans().map(Literal)
    if op in ("in", "not_in"):
        return st.lists(st.sampled_from(values), min_size=1, max_size=3).map(lambda v: Literal(frozenset(v)))
    options = [st.sampled_from(values).map(Literal)]
    same = [f for f in FIELDS if f[0] == field[0] and f != field] if field in FIELDS else []
    if same:
        options.append(st.sampled_from(same).map(FieldRef))
    if field[0] == "n" and field in FIELDS:
        options.append(st.tuples(st.sampled_from([0, 50, 100, Decimal("12.5")]), st.sampled_from(["n1", "n2"]))
                       .map(lambda t: Percent(Decimal(t[0]), t[1])))
    return st.one_of(options)


def trees(fields, depth=3, items=True):
    base = st.one_of(leaf(fields), st.sampled_from(["w1", "w2"]).flatmap(
        lambda w: st.sampled_from(["within", "after"]).map(lambda m: Window(m, w))))
    if items:
        base = st.one_of(base, st.tuples(st.sampled_from(["any_item", "all_items"]),
                                         item_trees()).map(lambda t: Items(t[0], t[1])))
    return st.recursive(base, lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda c: All(tuple(c))),
        st.lists(kids, min_size=1, max_size=3).map(lambda c: AnyOf(tuple(c))),
        kids.map(Not)), max_leaves=8)


def item_trees():
    return st.recursive(leaf(ITEM_FIELDS), lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=2).map(lambda c: All(tuple(c))),
        kids.map(Not)), max_leaves=4)


def fact_maps(fields):
    return st.fixed_dictionaries({}, optional={f: st.sampled_from(v) for f, v in fields.items()})


facts_strategy = st.tuples(
    fact_maps(FIELDS).map(dict),
    st.dictionaries(st.sampled_from(["window.w1.within", "window.w2.within"]), st.booleans()),
).map(lambda t: {**t[0], **t[1]})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trees(FIELDS), min_size=1, max_size=4),
       st.lists(st.tuples(facts_strategy, st.lists(fact_maps(ITEM_FIELDS), max_size=3)), min_size=1, max_size=5))
def test_generated_code_agrees_with_the_interpreter(conditions, cases):
    match = CodeGen().build(conditions)
    for facts, items in cases:
        expected = [i for i, c in enumerate(conditions) if c.evaluate(facts, items)]
        assert match(facts.get, items) == expected
        for c in conditions:
            assert c.explain(facts, items)["result"] == c.evaluate(facts, items)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(trees(FIELDS), st.tuples(leaf({"t1": TEXT}), trees(FIELDS)).map(All)),
                min_size=1, max_size=6),
       st.lists(st.tuples(facts_strategy, st.lists(fact_maps(ITEM_FIELDS), max_size=3)), min_size=1, max_size=5))
def test_rules_indexed_on_an_enum_field_match_as_the_interpreter_does(conditions, cases):
    """The index on `t1` only skips rules whose condition needs another `t1`: the same rules
    match, in rule order, whatever the request's `t1` (or none)."""
    match = CodeGen().build(conditions, index_on="t1")
    assert any(required_values(c, "t1") for c in conditions) or "_groups" not in match.__refundry_source__
    for facts, items in cases:
        expected = [i for i, c in enumerate(conditions) if c.evaluate(facts, items)]
        assert match(facts.get, items) == expected


def test_a_rule_indexed_on_reason_is_tested_only_for_its_reasons():
    reason_is = Compare("t1", "in", Literal(frozenset({"a", "changed_mind"})), True)
    rules = [All((reason_is, Compare("n1", "gt", Literal(Decimal(5)), True))),
             Compare("t1", "eq", Literal("b"), True), Compare("n1", "exists", Literal(True), True)]
    match = CodeGen().build(rules, index_on="t1")
    assert match({"t1": "a", "n1": Decimal(6)}.get, ()) == [0, 2]
    assert match({"t1": "b", "n1": Decimal(6)}.get, ()) == [1, 2]
    assert match({"t1": "changed_mind", "n1": Decimal(5)}.get, ()) == [2]
    assert match({}.get, ()) == []
    assert "_groups.get" in match.__refundry_source__



THRESHOLDS = [Decimal("5"), 7, Decimal("10.00"), Decimal("10"), Decimal("99.99"), 100, Decimal("0")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["lt", "le", "gt", "ge"]),
       st.lists(st.tuples(st.sampled_from(["a", "a", "a", "b"]), st.sampled_from(THRESHOLDS)),
                min_size=10, max_size=40),
       st.lists(fact_maps({"t1": ["a", "b", "c"], "n1": NUMS + THRESHOLDS}).map(dict),
                min_size=1, max_size=6))
def test_many_threshold_rules_on_one_field_match_as_the_interpreter_does(op, specs, cases):
    """Rules that only compare a number with a threshold (a large client's `amount > N`, per
    reason) are found by bisection: the same rules match, in rule order, at, below and above
    every threshold, with ties, integers and decimals, and none when the field is missing;
    a rule with a second condition is still tested whole."""
    conditions: list = [All((Compare("t1", "eq", Literal(t1), True), Compare("n1", op, Literal(limit), True)))
                        for t1, limit in specs]
    conditions.append(All((Compare("t1", "eq", Literal("a"), True), Compare("n1", op, Literal(7), True),
                           Compare("n2", "exists", Literal(True), True))))
    match = CodeGen().build(conditions, index_on="t1")
    bisected = max(sum(t1 == t for t1, _ in specs) for t in "ab") >= 8
    assert ("_bl(" in match.__refundry_source__ or "_br(" in match.__refundry_source__) == bisected
    for facts in cases:
        assert match(facts.get, ()) == [i for i, c in enumerate(conditions) if c.evaluate(facts, ())]


def test_threshold_rules_are_bisected_only_when_there_are_many():
    rules = [All((Compare("t1", "eq", Literal("a"), True), Compare("n1", "gt", Literal(Decimal(k)), True)))
             for k in range(8)]
    many = CodeGen().build(rules, index_on="t1")
    assert "_bl(" in many.__refundry_source__
    assert many({"t1": "a", "n1": Decimal("3")}.get, ()) == [0, 1, 2]
    assert many({"t1": "a", "n1": Decimal("0")}.get, ()) == []
    few = CodeGen().build(rules[:7], index_on="t1")
    assert "_bl(" not in few.__refundry_source__
    assert few({"t1": "a", "n1": Decimal("3")}.get, ()) == [0, 1, 2]

@settings(max_examples=150, deadline=None)
@given(st.lists(leaf({"x": ["a", 1, Decimal("2"), True, dt.date(2024, 1, 1)]}, typed=False), min_size=1, max_size=4),
       st.lists(st.fixed_dictionaries({}, optional={"x": st.sampled_from(["a", 3, Decimal("1.5"), False, (1, 2), None])}), min_size=1, max_size=4))
def test_untyped_client_facts_never_raise(conditions, cases):
    match = CodeGen().build(conditions)
    for facts in cases:
        assert match(facts.get, []) == [i for i, c in enumerate(conditions) if c.evaluate(facts, [])]


def test_missing_facts_make_comparisons_false_and_not_true():
    cond = Compare("n1", "ne", Literal(Decimal(5)), True)
    assert cond.evaluate({}, []) is False
    assert Not(cond).evaluate({}, []) is True
    assert Items("all_items", Compare("f", "eq", Literal(True), True)).evaluate({}, []) is False
    match = CodeGen().build([cond, Not(cond)])
    assert match({}.get, []) == [1]


def test_literals_reach_generated_code_as_constants_not_source():
    hostile = "x'); import os; os.system('echo pwned'); ('"
    cond = Compare("t1", "eq", Literal(hostile), True)
    match = CodeGen().build([cond])
    assert hostile not in match.__refundry_source__
    assert match({"t1": hostile}.get, []) == [0]
