"""The store's canonical JSON encoder writes exactly what RFC 8785 (the ``rfc8785`` package)
writes, on every shape an event holds: the hash of each event is taken over these bytes."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from refundry.records.events import Draft, canonical_json, seal
from refundry.records.masking import DECISION_MONEY, mask_value

# Text as people and sources send it: any code point but lone surrogates (which no JSON
# document can carry as UTF-8), so non-ASCII, controls and characters beyond U+FFFF too.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SCALARS = (st.none() | st.booleans() | TEXT
           | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
           | st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(JSON)
def test_any_event_member_encodes_as_rfc8785_does(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(TEXT, JSON, max_size=5))
def test_masked_values_encode_as_rfc8785_does(value: dict[str, object]) -> None:
    masked = mask_value(value)
    assert canonical_json(masked) == rfc8785.dumps(masked)


def test_the_shapes_masking_makes_of_big_numbers_decimals_and_dates() -> None:
    value = mask_value({"amount": Decimal("1000000000009.00"), "big": 2**64, "n": 2**53 - 1,
                        "when": dt.date(2024, 3, 1), "nested": {"é": ["ü", {"😀": "\u2028"}]},
                        "card": "4111 1111 1111 1111"}, DECISION_MONEY)
    assert canonical_json(value) == rfc8785.dumps(value)
    assert b'"big":"' in canonical_json(value)  # not a JSON number RFC 8785 cannot carry


def test_a_sealed_event_is_the_rfc8785_text_of_its_body() -> None:
    decision = {"outcome": "approve", "amount": "10.00", "note": "grüße 😀",
                "ruleset": {"id": "r", "version": "1", "digest": "sha256:x", "layers": []}}
    request = {"request_id": "r-1", "customer": {"𝒳": "beyond the BMP", "name": "Zoë"}}
    draft = Draft("r-1", "evaluated", "bob", decision, request, {"text": "a\u0000b"},
                  encoded={"decision": canonical_json(decision), "request": canonical_json(request)})
    text, _hash, body = seal(draft, 7, "sha256:" + "0" * 64, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert text.encode("utf-8") == rfc8785.dumps(json.loads(text)) == rfc8785.dumps(body)
