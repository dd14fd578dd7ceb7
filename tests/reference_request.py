"""The request walker refundry used before issue 14 compiled it: field metadata read per request
by reflection, every field's path built as it goes. Kept here as the oracle of the differential
test in tests/test_request_parser.py: the compiled parser must answer exactly as this does (the
same request, or the same errors in the same order). The leaves it shares with the compiled
parser (times, dates, facts, semantics) are imported, not copied: the test is about the walk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from refundry.core import request as rq
from refundry.core.errors import InvalidRequest
from refundry.core.models import RefundRequest
from refundry.core.money import parse_money
from refundry.core.request import MAX_ITEMS, MAX_NOTE, MAX_TEXT, MAX_YEAR, MIN_YEAR, shown


def reference_parse(data: object) -> RefundRequest:
    errors = rq._Errors(None)
    if not isinstance(data, Mapping):
        errors.add("", "a refund request must be a JSON object")
        raise InvalidRequest(errors.items)
    if isinstance(data.get("refund_to"), str):
        data = {**data, "refund_to": {"type": data["refund_to"]}}
    try:
        value = _model(RefundRequest, data, "", errors)
    except RecursionError:
        errors.add("", "nests too deeply to be a refund request")
        raise InvalidRequest(errors.items) from None
    if not errors.items:
        rq._check_semantics(value, errors)
    if errors.items:
        raise InvalidRequest(errors.items)
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _model(cls: type, data: Mapping[str, Any], prefix: str, errors: Any) -> Any:
    fields = attrs.fields_dict(cls)
    for key in data:
        if key not in fields:
            errors.add(_join(prefix, shown(key, 60)), "unknown field")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(prefix, name)
        if name not in data or data[name] is None:
            if f.default is attrs.NOTHING:
                errors.add(path, "is required")
            continue
        parsed = _value(f.metadata, data[name], path, errors)
        if parsed is not None:
            values[name] = parsed
    try:
        return cls(**values)
    except TypeError:
        return None


def _value(meta: Mapping[str, Any], raw: Any, path: str, errors: Any) -> Any:  # noqa: C901, PLR0911, PLR0912
    kind = meta["kind"]
    if meta.get("many"):
        if not isinstance(raw, list):
            errors.add(path, "must be a list")
            return None
        if len(raw) > MAX_ITEMS:
            errors.add(path, f"has {len(raw)} entries; at most {MAX_ITEMS} are accepted")
            return None
        one = {**meta, "many": False}
        return tuple(_value(one, v, f"{path}[{i}]", errors) for i, v in enumerate(raw))
    if kind == "object":
        if not isinstance(raw, Mapping):
            errors.add(path, "must be an object")
            return None
        return _model(meta["model"], raw, path, errors)
    if kind == "text":
        return _text(raw, path, errors)
    if kind == "enum":
        if not isinstance(raw, str) or raw not in meta["values"]:
            what = f"`{shown(raw)}` is not" if isinstance(raw, str) else "must be"
            errors.add(path, f"{what} one of {', '.join(meta['values'])}")
            return None
        return raw
    if kind == "money":
        try:
            return parse_money(raw)
        except ValueError as exc:
            errors.add(path, str(exc))
            return None
    if kind == "flag":
        if not isinstance(raw, bool):
            errors.add(path, "must be true or false")
            return None
        return raw
    if kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1_000_000:
            errors.add(path, "must be a whole number from 0 to 1000000")
            return None
        return raw
    if kind == "instant":
        return rq._parse_instant(raw, path, errors, date_ok=path != "requested_at")
    if kind == "date":
        day = rq._date(raw)
        if day is None:
            errors.add(path, f"must be a date such as `2024-03-01`, years {MIN_YEAR} to {MAX_YEAR}")
        return day
    if kind == "facts":
        if not isinstance(raw, Mapping):
            errors.add(path, "must be an object")
            return None
        return rq._parse_facts(raw, path, errors, 0)
    raise AssertionError(kind)


def _text(raw: Any, path: str, errors: Any) -> str | None:
    if not isinstance(raw, str):
        errors.add(path, "must be a string")
        return None
    limit = MAX_NOTE if path == "note" else MAX_TEXT
    if len(raw) > limit:
        errors.add(path, f"is {len(raw)} characters long; at most {limit} are accepted")
        return None
    if path != "note" and not raw.strip():
        errors.add(path, "must not be empty")
        return None
    if rq._SURROGATE.search(raw):
        errors.add(path, "holds a lone surrogate, which is not unicode text")
        return None
    return raw
