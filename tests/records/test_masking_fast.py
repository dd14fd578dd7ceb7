"""The fast masking paths against their plain references: ``mask_rule_text`` (with its cache of
texts that mask to themselves) against ``mask_text``, ``mask_snapshot`` against
``mask_value_plain(..., DECISION_MONEY)``, and the fast walks of ``mask_value`` and ``scrub``
against ``mask_value_plain`` and ``scrub_plain``, on random JSON-ish values. Equal results are
what keeps every record's bytes as they were."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import types
from collections.abc import Callable
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from refundry.records.events import DECISION_MONEY, DETAILS_MONEY
from refundry.records.masking import (
    luhn_ok,
    mask_rule_text,
    mask_snapshot,
    mask_text,
    mask_text_plain,
    mask_value,
    mask_value_plain,
    request_money_paths,
    scrub,
    scrub_plain,
)

from .. import hostile_corpus


def _luhn_complete(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


PANS = [_luhn_complete("453914880343646"), "4111111111111111", "5500005555555559",
        _luhn_complete("37828224631000"), _luhn_complete("422222222222")]  # 16, 16, 16, 15, 13
SEPARATORS = ["", " ", "-", ".", "/", "  ", "\u200b", "_", "*"]


@st.composite
def card_texts(draw: st.DrawFn) -> str:
    """A card number written with separators between random groups, maybe with words and
    digits around it."""
    pan = draw(st.sampled_from(PANS))
    cuts = sorted(draw(st.sets(st.integers(1, len(pan) - 1), max_size=5)))
    pieces = [pan[a:b] for a, b in zip([0, *cuts], [*cuts, len(pan)], strict=True)]
    sep = draw(st.sampled_from(SEPARATORS))
    before = draw(st.sampled_from(["", "card ", "refund to ", "12 ", "ref 7 "]))
    after = draw(st.sampled_from(["", " 123", " exp 12/27", " thanks", "9"]))
    return before + sep.join(pieces) + after


CODE_TEXTS = st.builds(
    lambda word, filler, code: f"{word}{filler}{code}",
    st.sampled_from(["cvv", "CVC2", "cid", "security code", "Card-Code", "verification value",
                     "csc", "code"]),
    st.sampled_from(["", " ", ": ", "# ", " is ", " was maybe "]),
    st.sampled_from(["123", "1234", "1 2 3", "12", "98765"]))
TEXTS = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="0123456789 -./:abcvT", max_size=30),
    card_texts(), CODE_TEXTS,
    st.sampled_from(["2024-03-15T18:00:00+01:00", "EU 2011/83 art. 9(1)", "119.99", "12",
                     "1000000000009.00", "-5", "1e3", "０１２３４５６７８９０１２３", "bench-0000001",
                     "§ 312g BGB", "４１１１１１１１１１１１１１１１"]),
)
NUMBERS = st.one_of(
    st.integers(-(2**53) - 3, -(2**53) + 3), st.integers(2**53 - 3, 2**53 + 3),
    st.integers(-10**20, 10**20), st.sampled_from([4111111111111111, 0, -1]),
    # Either side of the shortest card number's length (13 digits), which the walks keep
    # without printing below: 4222222222222 is a Luhn-valid 13-digit number.
    st.sampled_from([10**12 - 1, -(10**12 - 1), 10**12, -(10**12), 4222222222222,
                     -4222222222222]),
    # too long to print (Python's 4,300-digit limit); built, since hypothesis prints its choices
    st.builds(lambda: 10**5000),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-10**16, max_value=10**16, places=2),
    st.floats(allow_nan=False),
)
LEAVES = st.one_of(TEXTS, NUMBERS, st.booleans(), st.none(), st.dates(),
                   st.datetimes(timezones=st.just(dt.UTC)))
KEYS = st.one_of(
    st.sampled_from(["amount", "transaction", "items", "unit_price", "value", "current",
                     "original", "four_eyes_above", "express_shipping_amount", "cvv",
                     "Security-Code", "card_cvv", "pin", "shipping", "note", "request_id",
                     "amount.value", "items[]", "1", "", "reasons", "ruleset", "deadlines",
                     "rule_id", "message", "citation", "layers", "due", "customer_messages"]),
    TEXTS, st.integers(-3, 3))

SNAPSHOT_KEYS = st.sampled_from(["request_id", "outcome", "amount", "currency", "reasons",
                                 "deadlines", "lines", "actions", "ruleset", "as_of", "errors",
                                 "cvv", "amount.x"])


def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(KEYS, children, max_size=5),
        st.dictionaries(KEYS, children, max_size=3).map(types.MappingProxyType),
    )


VALUES = st.recursive(LEAVES, _containers, max_leaves=30)
MONEY = st.sampled_from([frozenset(), DECISION_MONEY, DETAILS_MONEY, request_money_paths(),
                         frozenset({"a.b", "x[].y[]", "", "[]"})])
PATHS = st.sampled_from(["", "transaction", "items[]", "current", "nowhere", "a"])


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (``1 == True == 1.0`` would hide a
    change of type, which changes bytes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, Decimal) and a.is_nan():
        return str(a) == str(b)
    return a == b


MONEY_LEAVES = st.one_of(
    st.sampled_from(["119.99", "1000000000009.00", "4111111111111111", "4111 1111 1111 1111",
                     "-0.5", "12.", "１２", "1e3", 4111111111111111, 2**53 + 1, -(2**53), 7,
                     True, None, Decimal("12.50"), Decimal("4111111111111111"), Decimal("NaN"),
                     Decimal("-Infinity"), Decimal("1E+3"), 12.5]),
    LEAVES)


@st.composite
def money_shaped(draw: st.DrawFn) -> tuple[object, frozenset[str]]:
    """A value laid out along one or two of a money set's paths (``items[].unit_price`` is
    ``{"items": [{"unit_price": ...}]}``), with random siblings: random values alone rarely
    reach a money path, and money is where the fast walks differ most from the plain ones."""
    money = draw(MONEY.filter(bool))
    value: dict = draw(st.dictionaries(KEYS, VALUES, max_size=3))
    for path in draw(st.lists(st.sampled_from(sorted(money)), min_size=1, max_size=2)):
        node = value
        names = path.split(".")
        for i, name in enumerate(names):
            many = name.endswith("[]")
            key = name.removesuffix("[]")
            last = i == len(names) - 1
            if last and not many:
                node[key] = draw(MONEY_LEAVES)
                break
            if last:
                node[key] = draw(st.lists(MONEY_LEAVES, min_size=1, max_size=3))
                break
            child: dict = draw(st.dictionaries(KEYS, VALUES, max_size=2))
            node[key] = [child, draw(VALUES)] if many else child
            node = child
    return value, money


def _result(walk: Callable[..., object], *args: object) -> object:
    """What ``walk`` returns, or the type of what it raises: the fast walk must fail where
    the plain one does (a number too long to print at a money path), not differently."""
    try:
        return walk(*args)
    except ValueError as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(money_shaped())
def test_the_fast_walks_keep_money_where_the_plain_ones_do(shaped):
    value, money = shaped
    assert _same(_result(mask_value, value, money), _result(mask_value_plain, value, money))
    assert _same(_result(scrub, value, money), _result(scrub_plain, value, money))


@settings(max_examples=1_000, deadline=None)
@given(st.one_of(TEXTS, st.text(), st.text(alphabet="0123456789 -_.*aZcC\u00e9\u0663", max_size=40)))
def test_mask_text_equals_the_plain_masking_without_its_shortcuts(text):
    assert mask_text(text) == mask_text_plain(text)


def test_only_c_and_capital_c_match_a_c_ignoring_case():
    # mask_text skips its code-word search for text without "c" or "C": sound only while no
    # other character matches ``c`` under ``(?i)`` (as ``ſ`` does ``s``).
    c = re.compile("(?i)c")
    assert [ch for ch in map(chr, range(sys.maxunicode + 1)) if c.fullmatch(ch)] == ["C", "c"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(TEXTS, st.text()))
def test_rule_text_masking_and_its_cache_equal_the_plain_masking(text):
    expected = mask_text(text)
    assert mask_rule_text(text) == expected
    assert mask_rule_text(text) == expected  # a second time, from the cache when it was kept


RULE_MEMBERS = st.dictionaries(
    st.one_of(st.sampled_from(["rule_id", "effect", "code", "message", "customer_message",
                               "customer_messages", "citation", "ruleset", "name", "type", "id",
                               "version", "digest", "layers", "due", "amount"]), KEYS),
    st.one_of(TEXTS, VALUES), max_size=6)
SNAPSHOTS = st.fixed_dictionaries(
    {}, optional={"reasons": st.lists(RULE_MEMBERS, max_size=3),
                  "deadlines": st.lists(RULE_MEMBERS, max_size=3),
                  "actions": st.lists(RULE_MEMBERS, max_size=2), "ruleset": RULE_MEMBERS,
                  "amount": MONEY_LEAVES, "request_id": TEXTS, "lines": VALUES,
                  "cvv": TEXTS})


@settings(max_examples=400, deadline=None)
@given(st.one_of(VALUES, SNAPSHOTS, st.dictionaries(SNAPSHOT_KEYS, VALUES, max_size=6)))
def test_the_snapshot_masking_equals_the_plain_one(value):
    expected = _result(mask_value_plain, value, DECISION_MONEY)
    assert _same(_result(mask_snapshot, value), expected)
    assert _same(_result(mask_snapshot, value), expected)  # again, with rule texts remembered


@settings(max_examples=400, deadline=None)
@given(VALUES, MONEY, PATHS)
def test_the_fast_mask_value_equals_the_plain_one(value, money, path):
    assert _same(mask_value(value, money, path), mask_value_plain(value, money, path))


@settings(max_examples=400, deadline=None)
@given(VALUES, MONEY, PATHS)
def test_the_fast_scrub_equals_the_plain_one(value, money, path):
    assert _same(scrub(value, money, path), scrub_plain(value, money, path))


def test_money_is_kept_at_its_paths_and_masked_elsewhere():
    pan = PANS[1]
    value = {"amount": "1000000000009.00", "transaction": {"amount": pan[:15]},
             "items": [{"unit_price": 4111111111111111, "sku": pan}], "note": pan}
    got = mask_value(value, request_money_paths())
    assert got == mask_value_plain(value, request_money_paths())
    assert got["amount"] == "1000000000009.00"
    assert got["transaction"]["amount"] == pan[:15]
    assert got["items"][0]["sku"] == "************1111"
    assert got["note"] == "************1111"


def test_an_integer_too_long_to_print_at_a_money_path_is_kept_out_not_a_crash():
    # Python refuses to print an integer of over 4,300 digits; at a money path the amount
    # check printed it, and the ValueError took the whole batch down with it.
    huge = 10**5000
    assert mask_value({"amount": huge}, DECISION_MONEY) == {"amount": "(a number too long to keep)"}
    assert scrub({"amount": huge}, frozenset({"amount"})) == {
        "amount": ["(a number too long to keep)"]}
    assert mask_value({"amount": 10**15 - 1}, DECISION_MONEY) == {"amount": 10**15 - 1}


def test_snapshots_of_real_decisions_equal_the_plain_masking(engine):
    for text in hostile_corpus.shipped_requests():
        snapshot = engine.evaluate(json.loads(text, parse_float=Decimal)).to_dict()
        expected = mask_value_plain(snapshot, DECISION_MONEY)
        assert _same(mask_snapshot(snapshot), expected)
        assert _same(mask_snapshot(snapshot), expected)  # again, with rule texts remembered


def test_the_engine_own_reasons_are_never_remembered(engine):
    # "no ruleset is in force" names the ruleset asked for (or the request's client id) and the
    # day; an invalid `as_of` names what was sent. Such text is the request's, and must not outlive it in memory.
    from refundry.records import masking

    request = json.loads(hostile_corpus.shipped_requests()[0], parse_float=Decimal)
    snapshot = engine.evaluate(request, ruleset="remember-me-1234").to_dict()
    assert snapshot["reasons"][0]["rule_id"] == "refundry.no-ruleset"
    masked = mask_snapshot(snapshot)
    assert masked == mask_value_plain(snapshot, DECISION_MONEY)
    remembered = masking._RULE_TEXTS  # noqa: SLF001 - what the memory holds is the point here
    assert not [t for t in remembered if "remember-me" in t]
    assert snapshot["reasons"][0]["message"] not in remembered


def test_a_rule_part_whose_rule_id_is_not_text_is_masked_as_the_plain_walk_masks_it():
    # ``str`` of an integer too long to print raised in the snapshot walk (found by the
    # random snapshots above), where the plain masking keeps the number out and goes on.
    for rule_id in (10**5000, 12, None, ["refundry.x"]):
        snapshot = {"reasons": [{"rule_id": rule_id, "message": "card 4111111111111111"}]}
        assert _same(_result(mask_snapshot, snapshot),
                     _result(mask_value_plain, snapshot, DECISION_MONEY))
