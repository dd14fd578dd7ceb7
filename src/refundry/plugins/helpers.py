"""Helpers for adapters: options, money in minor units, time stamps, reading JSON documents,
and an append-only JSON-lines writer that makes a resumed run exactly-once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from refundry.core.models import RefundRequest, json_default
from refundry.core.money import minor_units
from refundry.core.request import MAX_ITEMS, MAX_REQUEST_BYTES, JsonInputError, decode_json
from refundry.plugins.types import SourceError


def option(options: Mapping[str, str], name: str, source: str, default: str | None = None) -> str:
    """``options[name]``, else ``default``; raises ``SourceError`` naming the ``--option`` when
    neither is there, so a whole batch never runs on a guessed client or jurisdiction."""
    value = options.get(name, default)
    if value is None or not str(value).strip():
        raise SourceError(f"source `{source}` needs `--option {name}=...`")
    return str(value)


def from_minor_units(amount: int, currency: str) -> Decimal:
    """Stripe-style integer minor units to a decimal amount (``100 usd`` -> ``1.00``, ``100 jpy``
    -> ``100``). Raises ``KeyError`` for an unknown currency, ``TypeError`` for a non-integer."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amount in minor units must be an integer")
    return Decimal(amount).scaleb(-minor_units(currency))


def to_minor_units(amount: Decimal, currency: str) -> int:
    """The inverse of ``from_minor_units``; raises ``ValueError`` when ``amount`` has more
    decimals than the currency has minor units (it is never rounded silently)."""
    scaled = amount.scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"`{amount}` has more decimals than {currency.upper()} allows")
    return int(scaled)


def epoch_to_rfc3339(seconds: int) -> str:
    """Unix seconds (UTC) to RFC 3339 with an explicit ``+00:00`` offset."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError("a unix time must be an integer")
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def record_error(exc: BaseException) -> str:
    """One lower-case line saying why a record could not be mapped, for its dead letter.

    Sources catch every exception per record: a malformed payload (a list where an object
    belongs, a number where text belongs) is that record's problem, never the batch's.
    """
    if isinstance(exc, KeyError):
        return f"field `{str(exc.args[0])[:60]}` is missing"
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, ValueError) and text:
        return text
    return f"malformed payload ({type(exc).__name__}: {text})" if text else \
        f"malformed payload ({type(exc).__name__})"


def money_text(value: object, currency: str) -> str:
    """An amount as a canonical decimal string at the currency's minor unit (``"348.0"`` ->
    ``"348.00"``). Raises ``ValueError`` for floats, non-numbers, or more decimals than the
    currency has: an amount is never rounded on the way in."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"`{value}` must be read as a decimal, not a float")
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (str, int, Decimal)) else None
    except ArithmeticError:
        amount = None
    if amount is None or not amount.is_finite():
        raise ValueError(f"`{str(value)[:40]}` is not a decimal amount")
    exp = Decimal(1).scaleb(-minor_units(currency))
    quantized = amount.quantize(exp)
    if quantized != amount:
        raise ValueError(f"`{value}` has more decimals than {currency.upper()} allows")
    return str(quantized)


def day_start(day: str, zone: str) -> str:
    """A date without a time (``2014-08-16``) as the start of that day in ``zone``, RFC 3339:
    formats such as FHIR ``date`` and X12 ``CCYYMMDD`` state days, not instants."""
    from zoneinfo import ZoneInfo

    text = day.strip()
    if len(text) == 8 and text.isdigit():
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    d = dt.date.fromisoformat(text)
    return dt.datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(zone)).isoformat()


def request_defaults(options: Mapping[str, str], source: str, industry: str, *,
                     jurisdiction: str | None = None) -> dict[str, Any]:
    """The canonical fields no payload carries, from the run's options: ``client_id``
    (required), ``jurisdiction`` (required unless the format implies one), ``timezone``."""
    out: dict[str, Any] = {
        "client_id": option(options, "client_id", source),
        "industry": industry,
        "jurisdiction": option(options, "jurisdiction", source, jurisdiction),
    }
    if options.get("timezone"):
        out["timezone"] = options["timezone"]
    return out


def zone_for(request: Mapping[str, Any]) -> str:
    """The IANA zone a date-only value is read in: the request's ``timezone`` or its
    jurisdiction's default (UTC when there is none; ``parse_request`` then asks for one)."""
    from refundry.core import jurisdictions

    zone = request.get("timezone") or jurisdictions.default_timezone(str(request["jurisdiction"]))
    return zone or "UTC"


def iter_json_documents(path: Path) -> Iterable[tuple[str, Any, str | None]]:
    """``(name, document, error)`` for a ``.json`` file, each line of a ``.jsonl``/``.ndjson``
    file, or every such file in a directory (sorted). Numbers are read as ``Decimal``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".ndjson"))
    else:
        files = [path]
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read `{file}`: {(exc.strerror or str(exc)).lower()}") from None
        if file.suffix in (".jsonl", ".ndjson"):
            for number, line in enumerate(raw.split(b"\n"), 1):
                if line.strip():
                    yield _decode(f"{file.name}:{number}", line, MAX_REQUEST_BYTES)
        else:
            # An API export holds many objects in one document (a list envelope).
            yield _decode(file.name, raw, MAX_REQUEST_BYTES * MAX_ITEMS)


def iter_api_objects(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(ref, object, error)`` for every object in the input, with API list envelopes
    (``{"object": "list", "data": [...]}``) and JSON arrays unwrapped, as Stripe and similar
    APIs return them. An object is yielded as found; the source decides what it accepts."""
    for name, doc, error in iter_json_documents(path):
        if error:
            yield name, None, error
        elif isinstance(doc, dict) and doc.get("object") == "list":
            for i, obj in enumerate(doc.get("data") or []):
                yield f"{name}#data[{i}]", obj, None
        elif isinstance(doc, list):
            for i, obj in enumerate(doc):
                yield f"{name}[{i}]", obj, None
        else:
            yield name, doc, None


def _decode(name: str, raw: bytes, limit: int) -> tuple[str, Any, str | None]:
    try:
        return name, decode_json(raw, limit=limit), None
    except JsonInputError as exc:
        where = f":{exc.line}:{exc.column}" if exc.line is not None else ""
        return name, None, f"{name}{where}: {exc}"


# ``json.dumps(obj, ensure_ascii=False, default=json_default)`` made once: ``dumps`` with any
# argument builds a new encoder per call, about as long as encoding a journal line.
_LINE = json.JSONEncoder(ensure_ascii=False, default=json_default)


def json_line(obj: Mapping[str, Any]) -> str:
    """The text ``JsonLinesWriter.write`` writes for ``obj`` (without the newline)."""
    return _LINE.encode(obj)


class JsonLinesWriter:
    """Append-only JSON lines, each keyed (e.g. by ``request_id``), safe to re-open after a kill.

    Opening an existing file drops a torn last line and remembers the keys already written, so
    writing the same key again is a no-op: that is what makes a resumed run exactly-once.
    """

    def __init__(self, path: Path | None, key: str, *, stream: IO[str] | None = None) -> None:
        self.path = path
        self.key = key
        self.seen: set[str] = set()
        if path is None:
            self._fh: IO[str] = stream if stream is not None else _stdout()
            self._owned = False
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._repair(path)
        self._fh = path.open("a", encoding="utf-8")
        self._owned = True

    def _repair(self, path: Path) -> None:
        with path.open("r+b") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                fh.truncate(end)
        for line in data[:end].splitlines():
            try:
                value = json.loads(line).get(self.key)
            except (ValueError, AttributeError):
                continue
            if isinstance(value, str):
                self.seen.add(value)

    def write(self, obj: Mapping[str, Any]) -> bool:
        """Write ``obj`` unless its key was written before; returns whether it wrote."""
        key = obj.get(self.key)
        if isinstance(key, str):
            if key in self.seen:
                return False
            self.seen.add(key)
        self._fh.write(json_line(obj) + "\n")
        self._fh.flush()
        return True

    def write_line(self, key: str, line: str) -> bool:
        """Write an already serialised JSON line (e.g. with exact decimals as numbers) under
        ``key``, which must be the line's own value of the key field."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self._fh.write(line + "\n")
        self._fh.flush()
        return True

    def close(self) -> None:
        if self._owned:
            self._fh.close()
        else:
            self._fh.flush()


def _stdout() -> IO[str]:
    import sys

    return sys.stdout


def already_executed(request: RefundRequest) -> bool:
    """Whether the case's own refund is among its transaction's executed refunds (a
    ``prior_refunds`` entry with its ``request_id``): a sink then writes no instruction, even
    if a ruleset approved it."""
    return any(p.request_id == request.request_id for p in request.prior_refunds)
