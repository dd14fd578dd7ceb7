"""The canonical refund request: JSON in, a validated ``RefundRequest`` out.

The parser walks the field metadata of the model classes, so the models, this parser and
``schemas/refund-request.schema.json`` (generated from the same metadata) cannot drift apart. It
reports every problem at once, each naming the field by its dotted path.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from refundry.core import jurisdictions
from refundry.core.errors import InvalidRequest, RequestError
from refundry.core.models import RefundRequest
from refundry.core.money import MAX_DIGITS, is_currency, parse_money

MAX_TEXT = 1_000
MAX_NOTE = 65_536  # a longer note is hostile input, not a customer's message
MAX_ITEMS = 1_000
MAX_FACTS_DEPTH = 6


class _Errors:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.items: list[RequestError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(RequestError(message, path=self.source, field=path or None))


def parse_request(data: object, *, source: str | None = None) -> RefundRequest:
    """Build a ``RefundRequest`` from canonical JSON (already decoded).

    Raises ``InvalidRequest`` listing every problem. ``source`` names the file in the errors.
    """
    if isinstance(data, RefundRequest):
        return data
    errors = _Errors(source)
    if not isinstance(data, Mapping):
        errors.add("", "a refund request must be a JSON object")
        raise InvalidRequest(errors.items)
    if isinstance(data.get("refund_to"), str):
        # The contract accepts a bare type for `refund_to` (`"store_credit"`).
        data = {**data, "refund_to": {"type": data["refund_to"]}}
    value = _fast_parser()(data)
    if value is None:  # something is wrong or unusual: the checking walk says what, in order
        value = _parse_model(RefundRequest, data, "", errors)
    if not errors.items:
        _check_semantics(value, errors)
    if errors.items:
        raise InvalidRequest(errors.items)
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# The parser is compiled once per model class from the field metadata: per request it only runs
# the checks, building a field's dotted path only when there is an error to report. What it
# accepts and every message it gives are those of the metadata walk it replaces.
_Parse = Callable[[Any, str, str, "_Errors"], Any]
_PARSERS: dict[type, Callable[[Mapping[str, Any], str, _Errors], Any]] = {}


def _parse_model(cls: type, data: Mapping[str, Any], prefix: str, errors: _Errors) -> Any:
    parse = _PARSERS.get(cls)
    if parse is None:
        parse = _PARSERS.setdefault(cls, _compile_model(cls))
    return parse(data, prefix, errors)


def _compile_model(cls: type) -> Callable[[Mapping[str, Any], str, _Errors], Any]:
    fields = attrs.fields(cls)
    known = frozenset(f.name for f in fields)
    required = frozenset(f.name for f in fields if f.default is attrs.NOTHING)
    plan = tuple((f.name, f.default is attrs.NOTHING, _compile_value(f.metadata)) for f in fields)
    by_name = {name: parse_value for name, _, parse_value in plan}

    def in_order(data: Mapping[str, Any], prefix: str, errors: _Errors) -> dict[str, Any]:
        for key in data:
            if key not in known:
                errors.add(_join(prefix, str(key)[:60]), "unknown field")
        values: dict[str, Any] = {}
        for name, needed, parse_value in plan:
            raw = data.get(name)
            if raw is None:
                if needed:
                    errors.add(_join(prefix, name), "is required")
                continue
            parsed = parse_value(raw, prefix, name, errors)
            if parsed is not None:
                values[name] = parsed
        return values

    def parse(data: Mapping[str, Any], prefix: str, errors: _Errors) -> Any:
        # Only the fields the request has are visited; a request with any problem is parsed
        # again in field order, so its errors are listed exactly as before.
        before = len(errors.items)
        values: dict[str, Any] = {}
        try:
            for name, raw in data.items():
                if raw is not None:
                    parsed = by_name[name](raw, prefix, name, errors)
                    if parsed is not None:
                        values[name] = parsed
        except (KeyError, TypeError):
            values = {}
        if len(errors.items) != before or not required.issubset(values) or len(values) < len(required):
            del errors.items[before:]
            values = in_order(data, prefix, errors)
        try:
            return cls(**values)
        except TypeError:  # a required field failed to parse; the error is already recorded
            return None

    return parse


def _compile_value(meta: Mapping[str, Any]) -> _Parse:
    if meta.get("many"):
        return _many(_compile_value({**meta, "many": False}))
    kind = meta["kind"]
    if kind == "object":
        model = meta["model"]

        def parse_object(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
            if type(raw) is not dict and not isinstance(raw, Mapping):
                errors.add(_join(prefix, name), "must be an object")
                return None
            return _parse_model(model, raw, _join(prefix, name), errors)
        return parse_object
    if kind == "enum":
        return _enum(meta["values"])
    leaf = _LEAVES.get(kind)
    if leaf is None:
        raise AssertionError(kind)  # pragma: no cover - a model field with a kind nobody handles
    return leaf


def _many(one: _Parse) -> _Parse:
    def parse_many(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
        path = _join(prefix, name)
        if not isinstance(raw, list):
            errors.add(path, "must be a list")
            return None
        if len(raw) > MAX_ITEMS:
            errors.add(path, f"has {len(raw)} entries; at most {MAX_ITEMS} are accepted")
            return None
        return tuple([one(v, "", f"{path}[{i}]", errors) for i, v in enumerate(raw)])
    return parse_many


def _enum(values: tuple[str, ...]) -> _Parse:
    def parse_enum(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
        if raw not in values:
            shown = str(raw)[:40]
            errors.add(_join(prefix, name), f"`{shown}` is not one of {', '.join(values)}")
            return None
        return raw
    return parse_enum


def _text(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if not isinstance(raw, str):
        errors.add(_join(prefix, name), "must be a string")
        return None
    note = not prefix and name == "note"
    limit = MAX_NOTE if note else MAX_TEXT
    if len(raw) > limit:
        errors.add(_join(prefix, name), f"is {len(raw)} characters long; at most {limit} are accepted")
        return None
    if not note and not raw.strip():
        errors.add(_join(prefix, name), "must not be empty")
        return None
    return raw


def _money(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if type(raw) is Decimal and raw.is_finite() and raw.adjusted() < MAX_DIGITS:
        return raw  # what parse_money gives back for it, without its type checks
    try:
        return parse_money(raw)
    except ValueError as exc:
        errors.add(_join(prefix, name), str(exc))
        return None


def _flag(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if not isinstance(raw, bool):
        errors.add(_join(prefix, name), "must be true or false")
        return None
    return raw


def _count(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1_000_000:
        errors.add(_join(prefix, name), "must be a whole number from 0 to 1000000")
        return None
    return raw


def _instant(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    path = _join(prefix, name)
    return _parse_instant(raw, path, errors, date_ok=path != "requested_at")


def _date(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    try:
        return dt.date.fromisoformat(raw) if isinstance(raw, str) else _bad()
    except ValueError:
        errors.add(_join(prefix, name), "must be a date such as `2024-03-01`")
        return None


def _facts(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    return _parse_facts(raw, _join(prefix, name), errors, 0)


_LEAVES: dict[str, _Parse] = {"text": _text, "money": _money, "flag": _flag, "count": _count,
                              "instant": _instant, "date": _date, "facts": _facts}


# --- the fast path: one generated function per model, for a request with nothing wrong ------
#
# Straight-line code per model (no per-field calls, no paths, no error list) that returns the
# parsed value, or None at the first thing it does not accept as it is: a type it does not
# expect, a null, an unknown key, anything a check would refuse. None sends the request through
# the checking walk above, which accepts or refuses exactly as before and lists the errors; so
# the fast path can only be stricter than the walk, never more lenient.

_FAST: list[Callable[[Any], Any]] = []


def _fast_parser() -> Callable[[Any], Any]:
    if not _FAST:
        _FAST.append(_FastGen().build(RefundRequest))
    return _FAST[0]


def _delegate(leaf: _Parse, raw: Any, prefix: str, name: str) -> Any:
    errors = _Errors(None)
    value = leaf(raw, prefix, name, errors)
    return None if errors.items else value


class _FastGen:
    def __init__(self) -> None:
        self.code: list[str] = []
        self.names: dict[type, str] = {}
        self.env: dict[str, Any] = {"Decimal": Decimal, "_delegate": _delegate, "_money": _money,
                                    "_fromisoformat": dt.datetime.fromisoformat,
                                    "MAX_DIGITS": MAX_DIGITS}

    def build(self, cls: type) -> Callable[[Any], Any]:
        name = self.model(cls, top=True)
        exec(compile("\n".join(self.code), "<refundry-request-parser>", "exec"), self.env)  # noqa: S102
        return self.env[name]

    def model(self, cls: type, *, top: bool = False) -> str:
        if cls in self.names:
            return self.names[cls]
        name = self.names[cls] = f"_fast_{cls.__name__}_{len(self.names)}"
        self.env[f"{name}_cls"] = cls
        body = [f"def {name}(data):", "    if type(data) is not dict:", "        return None",
                "    out = {}", "    seen = 0"]
        for f in attrs.fields(cls):
            body += [f"    raw = data.get({f.name!r})", "    if raw is not None:", "        seen += 1"]
            body += ["        " + line for line in self.value(f.metadata, f.name, "" if top else "-")]
            body.append(f"        out[{f.name!r}] = raw")
            if f.default is attrs.NOTHING:
                body += ["    else:", "        return None"]
        body += ["    if seen != len(data):", "        return None",
                 f"    return {name}_cls(**out)"]
        self.code.append("\n".join(body) + "\n")
        return name

    def value(self, meta: Mapping[str, Any], name: str, prefix: str) -> list[str]:
        """Lines that check ``raw`` and leave the parsed value in it, or return None."""
        kind = meta["kind"]
        if meta.get("many"):
            one = self.element({**meta, "many": False}, name)
            return [f"if type(raw) is not list or len(raw) > {MAX_ITEMS}:", "    return None",
                    f"raw = tuple([{one}(x) for x in raw])", "if None in raw:", "    return None"]
        if kind == "object":
            inner = self.model(meta["model"])
            return ["raw = " + inner + "(raw)", "if raw is None:", "    return None"]
        if kind == "text":
            limit = MAX_NOTE if (not prefix and name == "note") else MAX_TEXT
            empty = "" if (not prefix and name == "note") else " or not raw.strip()"
            return [f"if type(raw) is not str or len(raw) > {limit}{empty}:", "    return None"]
        if kind == "enum":
            values = f"_values_{len(self.env)}"
            self.env[values] = tuple(meta["values"])
            return [f"if type(raw) is not str or raw not in {values}:", "    return None"]
        if kind == "flag":
            return ["if raw is not True and raw is not False:", "    return None"]
        if kind == "count":
            return ["if type(raw) is not int or not 0 <= raw <= 1000000:", "    return None"]
        if kind == "money":
            return ["if type(raw) is not Decimal or not raw.is_finite() or raw.adjusted() >= MAX_DIGITS:",
                    f"    raw = _delegate(_money, raw, {prefix!r}, {name!r})",
                    "    if raw is None:", "        return None"]
        leaf = f"_leaf_{kind}"
        self.env[leaf] = _LEAVES[kind]
        delegate = [f"raw = _delegate({leaf}, raw, {prefix!r}, {name!r})", "if raw is None:", "    return None"]
        if kind == "instant":  # a full time with offset inline; a bare date (10 long) as before
            return ["if type(raw) is str and 10 < len(raw) <= 40:", "    try:",
                    "        raw = _fromisoformat(raw)", "    except ValueError:", "        return None",
                    "    if raw.tzinfo is None or raw.utcoffset() is None:", "        return None",
                    "else:"] + ["    " + line for line in delegate]
        return delegate

    def element(self, meta: Mapping[str, Any], name: str) -> str:
        """A function that parses one list entry, or returns None."""
        fn = f"_one_{name}_{len(self.env)}"
        self.env[fn] = None
        lines = [f"def {fn}(raw):"] + ["    " + line for line in self.value(meta, f"{name}[]", "-")]
        self.code.append("\n".join(lines + ["    return raw"]) + "\n")
        return fn


def _bad() -> Any:
    raise ValueError


def _parse_instant(raw: Any, path: str, errors: _Errors, *, date_ok: bool) -> Any:
    if not isinstance(raw, str) or len(raw) > 40:
        errors.add(path, "must be an RFC 3339 time with offset, e.g. `2024-03-01T10:00:00+01:00`")
        return None
    if date_ok and len(raw) == 10:
        try:
            return dt.date.fromisoformat(raw)
        except ValueError:
            pass
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        errors.add(path, f"`{raw}` is not an RFC 3339 time")
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        errors.add(path, f"`{raw}` has no UTC offset; the local time it means is ambiguous")
        return None
    return value


def _parse_facts(raw: Any, path: str, errors: _Errors, depth: int) -> Any:
    if depth > MAX_FACTS_DEPTH:
        errors.add(path, f"nests deeper than {MAX_FACTS_DEPTH} levels")
        return None
    if isinstance(raw, Mapping):
        if depth == 0 and len(raw) > 200:
            errors.add(path, "has more than 200 entries")
            return None
        out = {}
        for k, v in raw.items():
            if not isinstance(k, str):
                errors.add(path, "keys must be strings")
                return None
            out[k] = _parse_facts(v, f"{path}.{k}", errors, depth + 1)
        return out
    if isinstance(raw, list):
        return tuple(_parse_facts(v, f"{path}[{i}]", errors, depth + 1) for i, v in enumerate(raw))
    if isinstance(raw, float):
        if not math.isfinite(raw):
            errors.add(path, "must be a finite number")
            return None
        return Decimal(repr(raw))
    if isinstance(raw, str) and len(raw) > MAX_TEXT:
        errors.add(path, f"is longer than {MAX_TEXT} characters")
        return None
    if raw is None or isinstance(raw, (str, bool, int, Decimal)):
        return raw
    errors.add(path, "must be a JSON value")
    return None


def _check_semantics(req: RefundRequest, errors: _Errors) -> None:
    if not is_currency(req.currency):
        errors.add("currency", f"`{req.currency[:10]}` is not an ISO 4217 currency code")
    try:
        jurisdictions.split(req.jurisdiction)
    except ValueError as exc:
        errors.add("jurisdiction", str(exc))
        return
    if req.timezone is not None:
        if req.timezone not in jurisdictions.timezones():
            errors.add("timezone", f"`{req.timezone[:40]}` is not an IANA time zone")
    elif jurisdictions.default_timezone(req.jurisdiction) is None:
        errors.add("timezone", f"is required: `{req.jurisdiction}` has no default time zone")
    if req.amount < 0:
        errors.add("amount", "must not be negative")
    if req.transaction.amount < 0:
        errors.add("transaction.amount", "must not be negative")
    closing = req.finance.billing_cycle_closing_day if req.finance else None
    if closing is not None and not 1 <= closing <= 31:
        errors.add("finance.billing_cycle_closing_day", "must be a day of the month, 1 to 31")


def request_to_dict(req: RefundRequest) -> dict[str, Any]:
    """The canonical JSON form of a request (the inverse of ``parse_request``)."""
    return _dump(req)


def _dump(value: Any) -> Any:
    if attrs.has(type(value)):
        out = {}
        for f in attrs.fields(type(value)):
            v = getattr(value, f.name)
            if v is None or v == ():
                continue
            out[f.name] = _dump(v)
        return out
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return value


# --- the JSON schema, generated from the same field metadata --------------------------------

SCHEMA_ID = "https://refundry.dev/schemas/refund-request/1.0.0/refund-request.schema.json"
_MONEY = {"type": ["string", "integer"], "pattern": r"^-?\d{1,15}(\.\d{1,12})?$",
          "description": "a decimal string (never a float), e.g. \"12.50\""}
_INSTANT = {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}],
            "description": "RFC 3339 with offset, or a date read in the consumer's local time"}


def _schema_for(meta: Mapping[str, Any], name: str) -> dict[str, Any]:
    kind = meta["kind"]
    if meta.get("many"):
        one = _schema_for({**meta, "many": False}, name)
        return {"type": "array", "maxItems": MAX_ITEMS, "items": one}
    if kind == "object":
        return _model_schema(meta["model"])
    if kind == "text":
        return {"type": "string", "maxLength": MAX_NOTE if name == "note" else MAX_TEXT}
    if kind == "enum":
        return {"enum": list(meta["values"])}
    if kind == "money":
        return dict(_MONEY)
    if kind == "flag":
        return {"type": "boolean"}
    if kind == "count":
        return {"type": "integer", "minimum": 0, "maximum": 1_000_000}
    if kind == "instant":
        if name == "requested_at":
            return {"type": "string", "format": "date-time"}
        return dict(_INSTANT)
    if kind == "date":
        return {"type": "string", "format": "date"}
    if kind == "facts":
        return {"type": "object", "maxProperties": 200,
                "description": "client-specific facts that client rules name as facts.NAME"}
    raise AssertionError(kind)  # pragma: no cover


def _model_schema(cls: type) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for f in attrs.fields(cls):
        schema = _schema_for(f.metadata, f.name)
        if f.metadata.get("doc"):
            schema["description"] = f.metadata["doc"]
        props[f.name] = schema
        if f.default is attrs.NOTHING:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


def json_schema() -> dict[str, Any]:
    """``schemas/refund-request.schema.json``, derived from the models; a test keeps the file
    equal to this."""
    schema = _model_schema(RefundRequest)
    props = schema["properties"]
    props["currency"]["pattern"] = "^[A-Z]{3}$"
    method = props["refund_to"]
    props["refund_to"] = {"description": method.pop("description", ""), "anyOf": [
        method, {"type": "string", "maxLength": MAX_TEXT, "description": "a bare type"}]}
    props["jurisdiction"]["pattern"] = "^[A-Z]{2}(-[A-Z0-9]{1,3})?$"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "refundry canonical refund request", "x-refundry-schema-version": "1.0.0",
            **schema}
