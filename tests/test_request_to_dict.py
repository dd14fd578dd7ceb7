"""``request_to_dict`` (dispatch on exact types, fields read once per class) against the plain
walk it replaced, on every shipped test request and a seeded hostile corpus: the canonical
form of a request is what the store hashes, so it must not change by a byte."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from refundry.core.request import request_to_dict

from . import hostile_corpus


def plain_dump(value: Any) -> Any:
    """The canonical form as first written: ``attrs.has``/``attrs.fields`` at every object."""
    if attrs.has(type(value)):
        out = {}
        for f in attrs.fields(type(value)):
            v = getattr(value, f.name)
            if v is None or v == ():
                continue
            out[f.name] = plain_dump(v)
        return out
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: plain_dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_dump(v) for v in value]
    return value


def _typed(value: Any) -> Any:
    """``value`` with each leaf paired with its type, so ``1 == True`` cannot hide a change."""
    if isinstance(value, dict):
        return [(k, _typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def _requests() -> list[Any]:
    return hostile_corpus.parsed_requests(1_500)


def test_request_to_dict_equals_the_plain_walk_on_shipped_and_hostile_requests():
    requests = _requests()
    assert len(requests) > 200  # enough valid requests that the comparison means something
    for req in requests:
        assert _typed(request_to_dict(req)) == _typed(plain_dump(req))
        some = ("request_id", "items", "transaction", "facts", "note")
        assert _typed(request_to_dict(req, some)) == _typed(
            {n: plain_dump(getattr(req, n)) for n in some
             if getattr(req, n) is not None and getattr(req, n) != ()})
