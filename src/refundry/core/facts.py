"""From a request to the flat facts that rules match on: shared by every backend.

Everything a backend cannot or should not compute itself happens here, once per request: local
dates in the consumer's time zone, working days, window ends, and the derived facts. Backends
only match; so the ``compiled`` and ``durable`` backends cannot disagree on dates or amounts.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import io
import os
import threading
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from refundry.core import jurisdictions
from refundry.core.fields import lookup
from refundry.core.language import PRIOR_REFUNDS, item_paths
from refundry.core.loader import CompiledRuleset, DeadlineDef, PauseDef
from refundry.core.models import RefundRequest
from refundry.core.money import ZERO
from refundry.core.periods import (
    CalendarSpec,
    HolidayCalendars,
    WorkingDays,
    add_period,
    roll_forward,
)

MAX_CONTEXTS = 4096


class Zones:
    """IANA zones of one engine. Every zone file is read when the engine is built, so
    ``evaluate`` reads no file; each is parsed from those bytes the first time a request names
    it (parsing was two thirds of reading all 600, and a one-shot needs one), under a lock."""

    def __init__(self) -> None:
        self._files = {name: _zone_file(name) for name in jurisdictions.timezones()}
        self._zones: dict[str, zoneinfo.ZoneInfo] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> zoneinfo.ZoneInfo:
        found = self._zones.get(name)
        if found is None:
            data = self._files[name]  # an unknown name is a KeyError, as it always was
            with self._lock:
                found = self._zones.get(name)
                if found is None:
                    found = zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key=name)
                    self._zones[name] = found
        return found


def _zone_file(name: str) -> bytes:
    """The zone's TZif file where ``zoneinfo.ZoneInfo(name)`` finds it: the first of
    ``zoneinfo.TZPATH`` that has it, else the ``tzdata`` package."""
    for root in zoneinfo.TZPATH:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    return importlib.resources.files("tzdata").joinpath("zoneinfo", *name.split("/")).read_bytes()


def consumer_timezone(req: RefundRequest) -> str:
    """The request's own zone, else its jurisdiction's; the parser refuses a request with
    neither, so this always names a zone."""
    return req.timezone or jurisdictions.default_timezone(req.jurisdiction) or "UTC"


@attrs.define
class Context:
    """What the facts were derived with; the combiner reuses it for deadlines."""

    tz: zoneinfo.ZoneInfo
    calendar: CalendarSpec
    country: str
    subdivision: str | None
    extra_holidays: tuple[dt.date, ...]
    holidays: HolidayCalendars
    closing_day: int | None
    _working: WorkingDays | None = None
    _others: dict[CalendarSpec, WorkingDays] | None = None

    @property
    def working(self) -> WorkingDays:
        if self._working is None:
            self._working = self._working_days(self.calendar)
        return self._working

    def working_for(self, spec: CalendarSpec | None) -> WorkingDays:
        """The working days of a window's or deadline's own calendar (default: the ruleset's)."""
        if spec is None or spec == self.calendar:
            return self.working
        if self._others is None:
            self._others = {}
        found = self._others.get(spec)
        if found is None:
            found = self._others[spec] = self._working_days(spec)
        return found

    def _working_days(self, spec: CalendarSpec) -> WorkingDays:
        if spec.holidays == "none":
            years: Callable[[int], frozenset[dt.date]] = lambda _y: frozenset()  # noqa: E731
        else:
            if spec.holidays == "consumer":
                country, sub = self.country, self.subdivision
            else:
                country, sub = jurisdictions.split(spec.holidays)
            cals = self.holidays

            def years(y: int) -> frozenset[dt.date]:
                return cals.dates(country, sub, y)
        return WorkingDays(spec.weekend, years, self.extra_holidays)

    def local_date(self, value: Any) -> dt.date | None:
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value.astimezone(self.tz).date()
        return value

    def period_end(self, period: Any, start: dt.date, calendar: CalendarSpec | None = None,
                   pause: tuple[dt.date, int | None] | None = None) -> dt.date | None:
        """The last day of ``period`` from ``start``, before any roll-forward lengthened by a
        ``pause`` (its first day, its length) that began by that day: a pause that began later
        stopped nothing (CRA s22(6): a repair asked for before the time limit expired). A pause
        that has not ended leaves no last day yet."""
        spec = calendar or self.calendar
        if period.offset is not None and pause is None and spec.period_end != "next_working_day":
            return start + period.offset  # plain calendar days: what add_period would count
        working = self.working_for(spec)
        rolls = spec.period_end == "next_working_day"
        end = add_period(period, start, working, self.closing_day, roll=rolls)
        if end is not None and pause is not None and pause[0] <= end:
            if pause[1] is None:
                return None
            end += dt.timedelta(days=pause[1])
        if end is not None and rolls:
            end = roll_forward(end, working)
        return end


def _prior_total(req: RefundRequest) -> Decimal:
    return sum([p.amount for p in req.prior_refunds], ZERO) if req.prior_refunds else ZERO


_DERIVED: dict[str, Callable[[RefundRequest], Any]] = {
    "prior_refunds.total": _prior_total,
    "prior_refunds.count": lambda r: len(r.prior_refunds),
    "transaction.refundable": lambda r: r.transaction.amount - _prior_total(r),
    "items.count": lambda r: len(r.items),
    "jurisdiction.country": lambda r: jurisdictions.split(r.jurisdiction)[0],
    "jurisdiction.eu": lambda r: jurisdictions.is_eu(r.jurisdiction),
}


def _fact_reader(path: str) -> Callable[[RefundRequest], Any]:
    keys = path.split(".")[1:]

    def read_fact(req: RefundRequest) -> Any:
        value: Any = req.facts
        for k in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(k)
        return value
    return read_fact


def _extractor(paths: Iterable[str], item_names: Iterable[str]) -> Callable[..., Any]:
    """Generate one function that copies exactly the facts a ruleset reads out of a request.

    Generated, not looped, because this runs on every evaluation and is most of its cost; the
    names come from the field registry, never from ruleset text.
    """
    lines = ["def extract(req, tz, _DT):", "    f = {}"]
    readers: list[Callable[[RefundRequest], Any]] = []
    for path in paths:
        info = lookup(path)
        local = info is not None and info.kind in ("instant", "date")
        store = (f"f[{path!r}] = v.astimezone(tz).date() if v.__class__ is _DT else v"
                 if local else f"f[{path!r}] = v")
        if path in _DERIVED or path.startswith("facts."):
            readers.append(_DERIVED.get(path) or _fact_reader(path))
            lines += [f"    v = _readers[{len(readers) - 1}](req)", "    if v is not None:",
                      f"        {store}"]
            continue
        parts = path.split(".")
        indent = "    "
        lines.append(f"{indent}v = req.{parts[0]}")
        for part in parts[1:]:
            lines.append(f"{indent}if v is not None:")
            indent += "    "
            lines.append(f"{indent}v = v.{part}")
        lines += [f"{indent}if v is not None:", f"{indent}    {store}"]
    pairs = ", ".join(f"{name!r}: it.{name}" for name in item_names)
    lines.append(f"    return f, [{{{pairs}}} for it in req.items]" if pairs else "    return f, []")
    namespace: dict[str, Any] = {"_readers": tuple(readers)}
    exec(compile("\n".join(lines) + "\n", "<refundry-facts>", "exec"), namespace)  # noqa: S102
    return namespace["extract"]


class FactBuilder:
    """Built once per composed ruleset: reads only the facts that ruleset's rules name."""

    def __init__(self, ruleset: CompiledRuleset, holidays: HolidayCalendars, zones: Zones) -> None:
        self.ruleset = ruleset
        self.holidays = holidays
        self.zones = zones
        wanted = ruleset.paths() | {"requested_at"}
        self._prior = PRIOR_REFUNDS in wanted
        paths = sorted(wanted - {PRIOR_REFUNDS})
        item_names = sorted(set().union(*(item_paths(r.when) for r in ruleset.rules)))
        self._extract = _extractor(paths, item_names)
        self.windows = ruleset.windows
        # The fact names a window writes, made once here rather than formatted per request.
        self._window_keys = tuple((w, f"window.{w.name}.end", f"window.{w.name}.notice",
                                   f"window.{w.name}.within") for w in ruleset.windows)
        # Contexts without a finance section depend on the zone and jurisdiction only, so they
        # are made once per pair; the bound keeps a stream of odd pairs from growing it.
        self._contexts: dict[tuple[zoneinfo.ZoneInfo, str], Context] = {}

    def context(self, req: RefundRequest, tz: zoneinfo.ZoneInfo | None = None) -> Context:
        """``tz``: the consumer's zone when the caller has it already (the engine does)."""
        tz = tz or self.zones.get(consumer_timezone(req))
        fin = req.finance
        if fin is None:
            found = self._contexts.get((tz, req.jurisdiction))
            if found is not None:
                return found
        country, sub = jurisdictions.split(req.jurisdiction)
        ctx = Context(
            tz=tz, calendar=self.ruleset.calendar, country=country, subdivision=sub,
            extra_holidays=fin.holidays if fin else (), holidays=self.holidays,
            closing_day=fin.billing_cycle_closing_day if fin else None)
        if fin is None and len(self._contexts) < MAX_CONTEXTS:
            # Shared between threads: its lazily made working days are the same whoever makes them.
            self._contexts[(tz, req.jurisdiction)] = ctx
        return ctx

    def build(self, req: RefundRequest, ctx: Context) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        facts, items = self._extract(req, ctx.tz, dt.datetime)
        if self._prior:
            facts[PRIOR_REFUNDS] = self._prior_entries(req, facts, ctx)
        for w, end_key, notice_key, within_key in self._window_keys:
            start = facts.get(w.start)
            if start is None:
                continue
            end = ctx.period_end(w.period, start, w.calendar,
                                 None if w.pause is None else paused(w.pause, start, facts, ctx))
            if end is None:
                continue
            facts[end_key] = end
            notice = facts.get(w.notice)
            if notice is not None:
                facts[notice_key] = notice
                facts[within_key] = notice <= end
        return facts, items

    @staticmethod
    def _prior_entries(req: RefundRequest, facts: Mapping[str, Any],
                       ctx: Context) -> tuple[dict[str, Any], ...]:
        """Each prior refund as a flat entry, with the request's facts under ``request.`` so a
        condition can compare the two (``{field: request_id, eq: {request: request_id}}``)."""
        mine = {f"request.{k}": v for k, v in facts.items()}
        return tuple({**mine, "amount": p.amount, "refunded_at": ctx.local_date(p.refunded_at),
                      "request_id": p.request_id} for p in req.prior_refunds)

    def deadline(self, spec: DeadlineDef, facts: Mapping[str, Any], ctx: Context) -> dt.date | None:
        if spec.window is not None:
            return facts.get(f"window.{spec.window}.end")
        start = facts.get(spec.start) if spec.start else None
        if start is None or spec.period is None:
            return None
        return ctx.period_end(spec.period, start, spec.calendar,
                              paused(spec.pause, start, facts, ctx))


def paused(pause: PauseDef | None, start: dt.date, facts: Mapping[str, Any],
           ctx: Context) -> tuple[dt.date, int | None] | None:
    """When a pause of a clock that starts on ``start`` began, and how many days it adds
    (``None``: it has not ended, so the clock cannot be counted yet); ``None`` when nothing
    was paused."""
    if pause is None or facts.get(pause.start) is None:
        return None
    began, until = facts[pause.start], facts.get(pause.until)
    if pause.at_most is not None:
        cap = add_period(pause.at_most, start, ctx.working)
        until = cap if until is None or (cap is not None and cap < until) else until
    if until is None:
        return began, None
    return began, max(0, (until - began).days + (1 if pause.inclusive else 0))
