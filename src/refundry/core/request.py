"""The canonical refund request: JSON in, a validated ``RefundRequest`` out.

The parser walks the field metadata of the model classes, so the models, this parser and
``schemas/refund-request.schema.json`` (generated from the same metadata) cannot drift apart. It
reports every problem at once, each naming the field by its dotted path.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import operator
import re
import types
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, BinaryIO

import attrs

from refundry.core import jurisdictions
from refundry.core.errors import InvalidRequest, RequestError
from refundry.core.models import RefundRequest
from refundry.core.money import END, MAX_DIGITS, MAX_PLACES, MONEY_PATTERN, is_currency, parse_money

MAX_TEXT = 1_000
MAX_NOTE = 65_536  # a longer note is hostile input, not a customer's message
MAX_ITEMS = 1_000
MAX_FACTS_DEPTH = 6
MAX_FACTS_KEYS = 200  # entries of the top-level ``facts`` map
MAX_FACTS_VALUES = 2_000  # every value at any depth, lists and maps included
MAX_FACTS_NUMBER_DIGITS = 18
MAX_REQUEST_BYTES = 1_048_576  # one request as JSON text; readers refuse a longer one unread
# Years a refund can concern. Outside them date arithmetic (time zones, "+ 12 months") would
# overflow Python's calendar, so such a time is refused as input rather than failing later.
MIN_YEAR, MAX_YEAR = 1900, 2999
_YEARS = "(19[0-9]{2}|2[0-9]{3})"
_DATE = _YEARS + "-[0-9]{2}-[0-9]{2}"
_TIME = _DATE + r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
DATE_PATTERN = f"^{_DATE}{END}"
TIME_PATTERN = f"^{_TIME}{END}"
_DATE_RE = re.compile(DATE_PATTERN)
_TIME_RE = re.compile(TIME_PATTERN)
_NO_OFFSET_RE = re.compile(f"^{_DATE}([Tt ][0-9:.]+)?{END}")
_SURROGATE = re.compile("[\ud800-\udfff]")
CURRENCY_PATTERN = "^[A-Z]{3}" + END
_CURRENCY_RE = re.compile(CURRENCY_PATTERN)


class _Errors:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.items: list[RequestError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(RequestError(message, path=self.source, field=path or None))


class JsonInputError(ValueError):
    """JSON text that cannot become request data; ``line`` and ``column`` when they are known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line, self.column = line, column


MAX_JSON_INT_DIGITS = 40
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_int(text: str) -> int:
    # Python refuses to convert (or later print) an int of over 4,300 digits with a ValueError
    # that no one expects from json.loads; a shorter bound keeps the message ours.
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise JsonInputError(f"a number of {len(text)} digits; at most {MAX_JSON_INT_DIGITS} are read")
    return int(text)


def _json_constant(text: str) -> Any:
    raise JsonInputError(f"`{text}` is not json")


def decode_json(raw: bytes | str, *, limit: int = MAX_REQUEST_BYTES) -> Any:
    """JSON text from outside (a file line, stdin, an API body) as Python values, numbers with a
    fraction as ``Decimal``. Every way hostile text can break ``json.loads`` becomes one
    ``JsonInputError``: over ``limit`` bytes, not UTF-8, nesting that recurses, a 5,000-digit
    number, ``NaN``, or a lone surrogate (which no UTF-8 writer could put in a record)."""
    if len(raw) > limit:
        raise JsonInputError(f"is more than {limit} bytes long")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"is not utf-8 (byte {exc.start + 1})") from None
    try:
        value = json.loads(raw, parse_float=Decimal, parse_int=_json_int,
                           parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"invalid json: {exc.msg.lower()}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise JsonInputError("invalid json: nests too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonInputError("holds a lone surrogate (\\ud800-\\udfff), which is not unicode text") from None
        except RecursionError:  # pragma: no cover - the decoder recursed first
            raise JsonInputError("invalid json: nests too deeply") from None
    return value


def read_lines(fh: BinaryIO, limit: int) -> Iterator[tuple[int, bytes]]:
    """Numbered lines as bytes (decoded per line, so one bad byte spoils one line, not the
    file). A line over ``limit`` bytes is never held whole: its first ``limit + 1`` bytes stand
    for it, enough for the reader to refuse it by its length."""
    number = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield number, line


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
    try:
        value = _parse_model(RefundRequest, data, "", errors)
    except RecursionError:  # a Python caller's self-referencing or absurdly deep value
        errors.add("", "nests too deeply to be a refund request")
        raise InvalidRequest(errors.items) from None
    if not errors.items:
        _check_semantics(value, errors)
    if errors.items:
        raise InvalidRequest(errors.items)
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def printable_text(raw: object) -> str | None:
    """``raw`` when it is text a record, a report or a terminal can hold; else ``None``."""
    if isinstance(raw, str) and len(raw) <= MAX_TEXT and not _SURROGATE.search(raw):
        return raw
    return None


def shown(raw: object, limit: int = 40) -> str:
    """A bounded, printable form of a hostile value for an error message: never ``repr`` of a
    structure (a deep one recurses), never a lone surrogate (it cannot be written as UTF-8)."""
    if isinstance(raw, str):
        return raw[:limit].encode("ascii", "backslashreplace").decode()
    if isinstance(raw, (bool, type(None))):
        return str(raw).lower()
    return f"a {type(raw).__name__}"


# The parser is compiled once per model class from the same field metadata: a table of
# (name, required, leaf) and one closure per field kind, so a request pays no per-field
# reflection (``attrs.fields_dict``, metadata lookups) and builds a field's dotted path only when
# it has an error to report. A leaf is ``leaf(raw, prefix, name, errors)``: the path is
# ``_join(prefix, name)``. The answers are those of the walker it replaced, which
# tests/test_request_parser.py keeps as the oracle of a differential test.
_Leaf = Callable[[Any, str, str, "_Errors"], Any]
_MODELS: dict[tuple[type, bool], Callable[[Any, str, _Errors], Any]] = {}


def _parse_model(cls: type, data: Mapping[str, Any], prefix: str, errors: _Errors) -> Any:
    return _model_parser(cls, root=prefix == "")(data, prefix, errors)


def _model_parser(cls: type, *, root: bool = False) -> Callable[[Any, str, _Errors], Any]:
    parse = _MODELS.get((cls, root))
    if parse is None:
        parse = _MODELS.setdefault((cls, root), _compile_model(cls, root=root))
    return parse


def _compile_model(cls: type, *, root: bool) -> Callable[[Any, str, _Errors], Any]:
    fields = attrs.fields_dict(cls)
    known = frozenset(fields)
    table = tuple((name, f.default is attrs.NOTHING, _compile_leaf(f.metadata, name, root))
                  for name, f in fields.items())

    def ordered(data: Mapping[str, Any], prefix: str, errors: _Errors) -> Any:
        if not known.issuperset(data):
            for key in data:
                if key not in known:
                    errors.add(_join(prefix, shown(key, 60)), "unknown field")
        plain = type(data) is dict
        values: dict[str, Any] = {}
        for name, needed, leaf in table:
            # a caller's Mapping is read as the walker read it: `in`, then `[]`
            raw = data.get(name) if plain else (data[name] if name in data else None)  # noqa: SIM401
            if raw is None:
                if needed:
                    errors.add(_join(prefix, name), "is required")
                continue
            parsed = leaf(raw, prefix, name, errors)
            if parsed is not None:
                values[name] = parsed
        try:
            return cls(**values)
        except TypeError:  # a required field failed to parse; the error is already recorded
            return None

    return _generate_fast(cls, fields, table, root, ordered)


def _generate_fast(cls: type, fields: Mapping[str, Any], table: Sequence[tuple[str, bool, _Leaf]],
                   root: bool, ordered: Callable[[Any, str, _Errors], Any]) -> Callable[[Any, str, _Errors], Any]:
    """The usual request, generated per model: a dict of known keys with every required one
    given, each field read by name into a local and, when it is a plain value that passes (a
    text within its limit, an enum value, a flag, a count, a money amount, an RFC 3339 time), taken
    without a call; anything else goes to the field's leaf. The model is built from the locals
    by position, so no dict of keyword arguments is made per object. On the first error the
    model is parsed again by ``ordered`` (the walk in field order), so errors come out as they
    always have. A check here only ever accepts what the leaf would return (a money integer as
    its ``Decimal``, a time as ``parse_time`` reads it); tests/test_request_parser.py holds both
    to the oracle."""
    names: dict[str, Any] = {"_cls": cls, "_ordered": ordered, "_known": frozenset(fields),
                             "_required": frozenset(n for n, needed, _ in table if needed)}
    body = ["def parse(data, prefix, errors):",
            "    if type(data) is not dict or not _known.issuperset(data) or not _required.issubset(data):",
            "        return _ordered(data, prefix, errors)",
            "    n = len(errors.items)", "    g = data.get"]
    for i, (name, needed, leaf) in enumerate(table):
        names[f"_l{i}"] = leaf
        call = f"_l{i}(x{i}, prefix, {name!r}, errors)"
        body += [f"    x{i} = g({name!r})", f"    if x{i} is None:"]
        if needed:  # null for a required field: the walk reports it, after what came before
            body += ["        del errors.items[n:]", "        return _ordered(data, prefix, errors)"]
        else:
            body.append(f"        x{i} = {fields[name].default!r}")
        body += ["    else:", *(f"        {line}" for line in _fast_field(fields[name].metadata, name, root, i, call, names))]
    body += ["    if len(errors.items) == n:", *_construct(cls, [name for name, _, _ in table], names),
             "    del errors.items[n:]", "    return _ordered(data, prefix, errors)"]
    exec(compile("\n".join(body) + "\n", f"<refundry-request-parser {cls.__name__}>", "exec"), names)  # noqa: S102
    return names["parse"]


def _when_first_used(cls: type, name: str, names: dict[str, Any]) -> Callable[[Any, str, _Errors], Any]:
    """A section's parser, generated when a request first has that section: a one-shot
    `refundry evaluate` of a shop's request then never generates the healthcare and finance
    parsers (the largest). It puts the parser in its place, so later calls go straight to it."""
    def first(data: Any, prefix: str, errors: _Errors) -> Any:
        parse = names[name] = _model_parser(cls)
        return parse(data, prefix, errors)
    return first


def _construct(cls: type, fields: Sequence[str], names: dict[str, Any]) -> list[str]:
    """The generated lines that return the model made of the locals ``x0``, ``x1``, ... in field
    order. A model whose ``__init__`` only stores its arguments (no validator, converter or
    hook: every request model) gets its slots set directly, which is a quarter cheaper than the
    frozen ``__init__`` (a name lookup per field) and is most of a section's cost; anything more
    goes through ``__init__``."""
    slots = [cls.__dict__.get(name) for name in fields]
    plain = all(isinstance(s, types.MemberDescriptorType) for s in slots) and not any(
        f.validator or f.converter or f.on_setattr not in (None, attrs.setters.NO_OP, attrs.setters.frozen)
        for f in attrs.fields(cls)) and not any(
        hasattr(cls, hook) for hook in ("__attrs_pre_init__", "__attrs_post_init__", "__attrs_init__"))
    if not plain:
        return [f"        return _cls({', '.join(f'x{i}' for i in range(len(fields)))})"]
    names["_new"] = object.__new__
    for i, slot in enumerate(slots):
        names[f"_s{i}"] = slot.__set__  # type: ignore[union-attr]
    return ["        o = _new(_cls)", *(f"        _s{i}(o, x{i})" for i in range(len(fields))),
            "        return o"]


def _fast_field(meta: Mapping[str, Any], name: str, root: bool, i: int, call: str,
                names: dict[str, Any]) -> list[str]:
    """The generated lines that turn ``x{i}``, a value given for ``name``, into the field's value."""
    x = f"x{i}"
    if meta["kind"] == "object":
        # a section (or a list of them) that is a dict goes straight to its model's parser
        names[f"_m{i}"] = _when_first_used(meta["model"], f"_m{i}", names)
        path = f"(prefix + '.{name}' if prefix else {name!r})"
        if meta.get("many"):
            return [f"if type({x}) is list and len({x}) <= {MAX_ITEMS} and all(type(e) is dict for e in {x}):",
                    f"    p = {path}",
                    f"    {x} = tuple([_m{i}(e, f'{{p}}[{{k}}]', errors) for k, e in enumerate({x})])",
                    "else:", f"    {x} = {call}"]
        return [f"if type({x}) is dict:", f"    {x} = _m{i}({x}, {path}, errors)", "else:", f"    {x} = {call}"]
    if meta["kind"] == "instant" and not meta.get("many"):
        # an RFC 3339 time is neither a date nor a time without offset, so `parse_time` would
        # read it with `fromisoformat` straight away; an impossible one (Feb 30) goes to the leaf
        names["_time"], names["_iso"] = _TIME_RE.match, dt.datetime.fromisoformat
        return [f"if type({x}) is str and _time({x}) is not None:", "    try:",
                f"        {x} = _iso({x}.upper())", "    except ValueError:", f"        {x} = {call}",
                "else:", f"    {x} = {call}"]
    if meta["kind"] == "money" and not meta.get("many"):
        names["_Decimal"] = Decimal
        # an integer is what parse_money makes a Decimal of; a Decimal without an exponent in
        # its text (`e` where the caller's decimal context has capitals=0) has -exponent digits
        # after the point (`str` is cheaper than `as_tuple`)
        return [f"if type({x}) is _Decimal and {x}.is_finite() and not {x}.is_signed() and "
                f"{x}.adjusted() < {MAX_DIGITS} and 'E' not in (s := str({x})) and 'e' not in s "
                f"and len(s) - s.find('.') <= {MAX_PLACES + 1}:", "    pass",
                f"elif type({x}) is int and 0 <= {x} < {10 ** MAX_DIGITS}:", f"    {x} = _Decimal({x})",
                "else:", f"    {x} = {call}"]
    return [f"if not ({_fast_check(meta, name, root, x, f'_a{i}', names)}):",
            f"    {x} = {call}"]


def _fast_check(meta: Mapping[str, Any], name: str, root: bool, x: str, const: str,
                names: dict[str, Any]) -> str:
    """A test of ``x`` that holds only for a value the field's leaf returns unchanged."""
    kind = "many" if meta.get("many") else meta["kind"]
    names["_sur"] = _SURROGATE.search
    if kind == "text":
        if root and name == "note":
            return f"type({x}) is str and len({x}) <= {MAX_NOTE} and ({x}.isascii() or not _sur({x}))"
        return (f"type({x}) is str and len({x}) <= {MAX_TEXT} and {x} and not {x}.isspace() "
                f"and ({x}.isascii() or not _sur({x}))")
    if kind == "enum":
        names[const] = frozenset(meta["values"])
        return f"type({x}) is str and {x} in {const}"
    if kind == "flag":
        return f"{x} is True or {x} is False"
    if kind == "count":
        return f"type({x}) is int and 0 <= {x} <= 1000000"
    return "False"


def _compile_leaf(meta: Mapping[str, Any], name: str, root: bool) -> _Leaf:
    if meta.get("many"):
        return _many(_compile_leaf({**meta, "many": False}, name, False))
    kind = meta["kind"]
    if kind == "object":
        model = meta["model"]

        def section(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
            if type(raw) is not dict and not isinstance(raw, Mapping):
                errors.add(_join(prefix, name), "must be an object")
                return None
            return _parse_model(model, raw, _join(prefix, name), errors)
        return section
    if kind == "enum":
        return _enum(meta["values"])
    if kind == "text":
        return _text(MAX_NOTE, blank_ok=True) if root and name == "note" else _text(MAX_TEXT)
    if kind == "instant":
        date_ok = not (root and name == "requested_at")
        return lambda raw, prefix, name, errors: _parse_instant(raw, _join(prefix, name), errors,
                                                                date_ok=date_ok)
    return _LEAVES[kind]


def _many(one: _Leaf) -> _Leaf:
    def many(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
        if not isinstance(raw, list):
            errors.add(_join(prefix, name), "must be a list")
            return None
        if len(raw) > MAX_ITEMS:
            errors.add(_join(prefix, name), f"has {len(raw)} entries; at most {MAX_ITEMS} are accepted")
            return None
        return tuple([one(v, prefix, f"{name}[{i}]", errors) for i, v in enumerate(raw)])
    return many


def _enum(values: tuple[str, ...]) -> _Leaf:
    allowed, listed = frozenset(values), ", ".join(values)

    def enum(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
        if type(raw) is str and raw in allowed or isinstance(raw, str) and raw in values:
            return raw
        what = f"`{shown(raw)}` is not" if isinstance(raw, str) else "must be"
        errors.add(_join(prefix, name), f"{what} one of {listed}")
        return None
    return enum


def _text(limit: int, *, blank_ok: bool = False) -> _Leaf:
    def text(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
        if type(raw) is str and len(raw) <= limit and (blank_ok or not raw.isspace() and raw) \
                and (raw.isascii() or not _SURROGATE.search(raw)):
            return raw
        return _parse_text(raw, _join(prefix, name), errors, limit, blank_ok)
    return text


def _money(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    try:
        return parse_money(raw)
    except ValueError as exc:
        errors.add(_join(prefix, name), str(exc))
        return None


def _flag(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if raw is True or raw is False:
        return raw
    errors.add(_join(prefix, name), "must be true or false")
    return None


def _count(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1_000_000:
        errors.add(_join(prefix, name), "must be a whole number from 0 to 1000000")
        return None
    return raw


def _day(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    day = _date(raw)
    if day is None:
        errors.add(_join(prefix, name), f"must be a date such as `2024-03-01`, years {MIN_YEAR} to {MAX_YEAR}")
    return day


def _facts(raw: Any, prefix: str, name: str, errors: _Errors) -> Any:
    if not isinstance(raw, Mapping):
        errors.add(_join(prefix, name), "must be an object")
        return None
    return _parse_facts(raw, _join(prefix, name), errors, 0)


_LEAVES: dict[str, _Leaf] = {"money": _money, "flag": _flag, "count": _count, "date": _day,
                             "facts": _facts}


def _parse_text(raw: Any, path: str, errors: _Errors, limit: int, blank_ok: bool) -> str | None:
    if not isinstance(raw, str):
        errors.add(path, "must be a string")
        return None
    if len(raw) > limit:
        errors.add(path, f"is {len(raw)} characters long; at most {limit} are accepted")
        return None
    if not blank_ok and not raw.strip():
        errors.add(path, "must not be empty")
        return None
    if _SURROGATE.search(raw):
        errors.add(path, "holds a lone surrogate, which is not unicode text")
        return None
    return raw


def _date(raw: Any) -> dt.date | None:
    if not isinstance(raw, str) or not _DATE_RE.match(raw):
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        return None


def parse_time(raw: object) -> dt.datetime:
    """An RFC 3339 time with its UTC offset, years ``MIN_YEAR`` to ``MAX_YEAR``; the one reading
    of a time shared by requests and ``--as-of``. Raises ``ValueError`` with a one-line reason."""
    if isinstance(raw, str) and _NO_OFFSET_RE.match(raw):
        raise ValueError(f"`{shown(raw)}` has no UTC offset; the local time it means is ambiguous")
    if not isinstance(raw, str) or not _TIME_RE.match(raw):
        raise ValueError(f"`{shown(raw)}` is not an RFC 3339 time with offset, years {MIN_YEAR} "
                         f"to {MAX_YEAR}, e.g. `2024-03-01T10:00:00+01:00`")
    try:
        return dt.datetime.fromisoformat(raw.upper())
    except ValueError:
        raise ValueError(f"`{raw}` is not a time that exists") from None


def _parse_instant(raw: Any, path: str, errors: _Errors, *, date_ok: bool) -> Any:
    if date_ok:
        day = _date(raw)
        if day is not None:
            return day
    try:
        return parse_time(raw)
    except ValueError as exc:
        errors.add(path, str(exc))
        return None


_FACT_INT = 10 ** MAX_FACTS_NUMBER_DIGITS  # an integer fact of fewer digits is within bounds


def _plain_fact(value: Any) -> bool:
    """Whether ``value`` is a fact ``_fact_scalar`` gives back as it is, with no error: a
    boolean, null, an integer within bounds or text within bounds."""
    kind = type(value)
    return (kind is bool or value is None or (kind is int and -_FACT_INT < value < _FACT_INT)
            or (kind is str and len(value) <= MAX_TEXT and _SURROGATE.search(value) is None))


class _FactsBudget:
    """How many more values ``facts`` may hold: the bound on its size, whatever its shape."""

    def __init__(self) -> None:
        self.left = MAX_FACTS_VALUES

    def take(self, errors: _Errors) -> bool:
        self.left -= 1
        if self.left == -1:
            errors.add("facts", f"holds more than {MAX_FACTS_VALUES} values")
        return self.left >= 0


def _parse_facts(raw: Any, path: str, errors: _Errors, depth: int,
                 budget: _FactsBudget | None = None) -> Any:
    budget = budget or _FactsBudget()
    if depth > MAX_FACTS_DEPTH:
        errors.add(path, f"nests deeper than {MAX_FACTS_DEPTH} levels")
        return None
    if not budget.take(errors):
        return None
    if isinstance(raw, Mapping):
        if depth == 0 and len(raw) > MAX_FACTS_KEYS:
            errors.add(path, f"has more than {MAX_FACTS_KEYS} entries")
            return None
        out = {}
        for k, v in raw.items():
            if not isinstance(k, str) or len(k) > 64 or _SURROGATE.search(k):
                errors.add(path, "keys must be strings of at most 64 characters")
                return None
            # Most facts (every history fact) parse to themselves: taken here, as the call
            # below takes them, without it and the path it names them by (a third of
            # parsing an enriched request).
            if depth < MAX_FACTS_DEPTH and _plain_fact(v):
                out[k] = v if budget.take(errors) else None
            else:
                out[k] = _parse_facts(v, f"{path}.{k}", errors, depth + 1, budget)
        return out
    if isinstance(raw, list):
        return tuple(_parse_facts(v, f"{path}[{i}]", errors, depth + 1, budget)
                     for i, v in enumerate(raw))
    return _fact_scalar(raw, path, errors)


def _fact_scalar(raw: Any, path: str, errors: _Errors) -> Any:
    if isinstance(raw, float):
        if not math.isfinite(raw):
            errors.add(path, "must be a finite number")
            return None
        raw = Decimal(repr(raw))
    if isinstance(raw, (int, Decimal)) and not isinstance(raw, bool):
        # Checked before any ``str()``: Python refuses to print an int of over 4,300 digits.
        number = Decimal(raw) if isinstance(raw, int) and raw.bit_length() < 80 else raw
        if not isinstance(number, Decimal) or not number.is_finite() or (number != 0 and not (
                abs(number.adjusted()) < MAX_FACTS_NUMBER_DIGITS
                and len(number.as_tuple().digits) <= 2 * MAX_FACTS_NUMBER_DIGITS)):
            errors.add(path, f"must be a finite number of at most {MAX_FACTS_NUMBER_DIGITS} digits")
            return None
        return raw
    if isinstance(raw, str):
        if len(raw) > MAX_TEXT:
            errors.add(path, f"is longer than {MAX_TEXT} characters")
            return None
        if _SURROGATE.search(raw):
            errors.add(path, "holds a lone surrogate, which is not unicode text")
            return None
        return raw
    if raw is None or isinstance(raw, bool):
        return raw
    errors.add(path, "must be a JSON value")
    return None


def _check_semantics(req: RefundRequest, errors: _Errors) -> None:
    if not (_CURRENCY_RE.match(req.currency) and is_currency(req.currency)):
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
    closing = req.finance.billing_cycle_closing_day if req.finance else None
    if closing is not None and not 1 <= closing <= 31:
        errors.add("finance.billing_cycle_closing_day", "must be a day of the month, 1 to 31")


def replace_fields(req: RefundRequest, changes: Mapping[str, Any]) -> RefundRequest:
    """``req`` with the top-level fields in ``changes`` (canonical JSON) replaced, each parsed
    as ``parse_request`` parses it in a whole request, and the whole checked again as it checks
    one: ``parse_request({**data, **changes})`` for a ``req`` parsed from ``data``, without
    parsing the unchanged fields a second time (the service adds history facts to a request it
    has already parsed). ``InvalidRequest`` when a change is not valid."""
    if not changes:
        return req
    errors = _Errors(None)
    values: dict[str, Any] = {}
    for name, raw in changes.items():
        found = _root_field(name)
        if found is None:
            errors.add(shown(name, 60), "unknown field")
            continue
        field, leaf = found
        if raw is None:  # null is absent, as in parse_request
            if field.default is attrs.NOTHING:
                errors.add(name, "is required")
            else:
                values[name] = field.default
            continue
        if name == "refund_to" and isinstance(raw, str):
            raw = {"type": raw}  # the bare type, as parse_request takes it
        values[name] = leaf(raw, "", name, errors)
    if not errors.items:
        req = attrs.evolve(req, **values)
        _check_semantics(req, errors)
    if errors.items:
        raise InvalidRequest(errors.items)
    return req


_ROOT_FIELDS: dict[str, tuple[Any, _Leaf]] = {}


def _root_field(name: object) -> tuple[Any, _Leaf] | None:
    found = _ROOT_FIELDS.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str):
        field = attrs.fields_dict(RefundRequest).get(name)
        if field is None:
            return None
        found = _ROOT_FIELDS.setdefault(
            name, (field, _compile_leaf(field.metadata, name, True)))
    return found


def request_to_dict(req: RefundRequest, fields: Collection[str] | None = None) -> dict[str, Any]:
    """The canonical JSON form of a request (the inverse of ``parse_request``); with
    ``fields``, only those top-level fields of it."""
    if fields is None:
        return _dump(req)
    out = {}
    for name in fields:
        v = getattr(req, name)
        if v is not None and v != ():
            out[name] = _dump(v)
    return out


def _dump(value: Any) -> Any:
    """``_dump_plain(value)``, faster for the types a parsed request holds: dispatched on the
    exact type, with each model's fields looked up once per class (``_fields_of``),
    not through ``attrs.has`` and ``attrs.fields`` at every object. Anything else goes to
    ``_dump_plain``, so the result is the same for every value."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is Decimal:
        return str(value)
    # Members that are their own dump (most: ids, codes, counts, flags) are kept without a
    # call each (a third of the calls dumping an enriched request made).
    if kind is tuple or kind is list:
        return [v if type(v) in _AS_IS else _dump(v) for v in value]
    fields = _fields_of(kind)  # type: ignore[arg-type]  # a class is hashable; typeshed says not
    if fields is not None:
        names, values = fields
        return {name: v if type(v) in _AS_IS else _dump(v)
                for name, v in zip(names, values(value), strict=True)
                if v is not None and v != ()}
    if kind is dt.datetime or kind is dt.date:
        return value.isoformat()
    if kind is dict:
        return {k: v if type(v) in _AS_IS or v is None else _dump(v) for k, v in value.items()}
    return _dump_plain(value)


_AS_IS = frozenset({str, int, bool})  # the exact types ``_dump`` gives back as they are


# Cached per class: the few model classes of a request, looked up at every object of every
# request. Unbounded, but a class is a class of the program, never of the input. The getter
# reads all of an object's fields in one call (a request has dozens, most of them unset).
@functools.cache
def _fields_of(kind: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] | None:
    if not attrs.has(kind):
        return None
    names = tuple(f.name for f in attrs.fields(kind))
    if len(names) == 1:  # ``attrgetter`` of one name gives the value, not a 1-tuple
        return names, lambda obj: (getattr(obj, names[0]),)
    return names, operator.attrgetter(*names)


def _dump_plain(value: Any) -> Any:
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

SCHEMA_ID = "https://refundry.dev/schemas/refund-request/1.1.0/refund-request.schema.json"
# Patterns end with ``END`` (``$(?!\n)``), not a bare ``$``: JSON Schema patterns are ECMA-262,
# where ``$`` is the end of the text, but Python's ``re`` (the ``jsonschema`` package) lets ``$``
# match before a final newline, so ``"12.50\n"`` would pass one validator and not another.
_MONEY: dict[str, Any] = {"type": ["string", "integer"], "pattern": MONEY_PATTERN, "minimum": 0,
          "maximum": 999_999_999_999_999,
          "description": "a decimal string (never a float, never negative), e.g. \"12.50\""}
_TIME_SCHEMA: dict[str, Any] = {"type": "string", "format": "date-time", "pattern": TIME_PATTERN}
_DAY_SCHEMA: dict[str, Any] = {"type": "string", "format": "date", "pattern": DATE_PATTERN}
_INSTANT: dict[str, Any] = {"anyOf": [_TIME_SCHEMA, _DAY_SCHEMA],
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
            return dict(_TIME_SCHEMA)
        return dict(_INSTANT)
    if kind == "date":
        return dict(_DAY_SCHEMA)
    if kind == "facts":
        return {"type": "object", "maxProperties": MAX_FACTS_KEYS,
                "description": "client-specific facts that client rules name as facts.NAME; at "
                f"most {MAX_FACTS_VALUES} values in all, {MAX_FACTS_DEPTH} levels deep"}
    raise AssertionError(kind)  # pragma: no cover


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*kinds, "null"]}
    return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}


def _model_schema(cls: type) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for f in attrs.fields(cls):
        schema = _schema_for(f.metadata, f.name)
        if f.metadata.get("doc"):
            schema["description"] = f.metadata["doc"]
        if f.default is attrs.NOTHING:
            required.append(f.name)
        else:
            schema = _nullable(schema)  # the parser reads null as "not given"
        props[f.name] = schema
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


def json_schema() -> dict[str, Any]:
    """``schemas/refund-request.schema.json``, derived from the models; a test keeps the file
    equal to this."""
    schema = _model_schema(RefundRequest)
    props = schema["properties"]
    props["currency"]["pattern"] = CURRENCY_PATTERN
    method = props["refund_to"]
    props["refund_to"] = {"description": method.pop("description", ""), "anyOf": [
        method, {"type": "string", "maxLength": MAX_TEXT, "description": "a bare type"}]}
    props["jurisdiction"]["pattern"] = "^[A-Z]{2}(-[A-Z0-9]{1,3})?" + END
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "refundry canonical refund request", "x-refundry-schema-version": "1.1.0",
            **schema}
