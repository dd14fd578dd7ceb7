"""Counting periods: calendar days, weeks, months clamped to month end, business days and
billing cycles, each ended by the ruleset's own end-of-period convention.

Every count starts from a local date in the consumer's time zone and excludes that first day, as
EU Regulation 1182/71 Art 3(1), California Civil Code §10 and the UK CRA s22(3) all do: "14 days
from delivery on 1 March" ends on 15 March. Holidays come from the ``holidays`` library.
"""

from __future__ import annotations

import calendar as _stdcal
import datetime as dt
import re
import threading
from collections.abc import Callable, Iterable

import attrs
from dateutil.relativedelta import relativedelta

UNITS = ("days", "weeks", "months", "business_days", "billing_cycles")
ROLL = "end"  # the pseudo-step `then` leaves in a period: end the period so far here
_UNIT_WORDS = {
    "day": "days", "days": "days", "calendar day": "days", "calendar days": "days",
    "week": "weeks", "weeks": "weeks", "month": "months", "months": "months",
    "business day": "business_days", "business days": "business_days",
    "working day": "business_days", "working days": "business_days",
    "billing cycle": "billing_cycles", "billing cycles": "billing_cycles",
}
MAX_PERIOD_TEXT = 200
MAX_STEPS = 8
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_BUSINESS_DAYS = 2_000


@attrs.frozen
class Period:
    """``14 days``, ``10 business days``, ``14 days + 12 months``: steps applied in order."""

    steps: tuple[tuple[int, str], ...]
    # Days and weeks only: the period is a fixed number of calendar days, added without a
    # working-day calendar (precomputed once, not per request).
    offset: dt.timedelta | None = attrs.field(init=False, eq=False, repr=False)

    @offset.default
    def _offset(self) -> dt.timedelta | None:
        if not self.steps or any(unit not in ("days", "weeks") for _, unit in self.steps):
            return None
        return dt.timedelta(days=sum(n * (7 if unit == "weeks" else 1) for n, unit in self.steps))

    @classmethod
    def parse(cls, text: str) -> Period:
        # Read by hand, not by a regex: overlapping repeats such as ``\s+([a-z ]+?)\s*`` take
        # quadratic time on a long run of spaces, and a ruleset is untrusted input.
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a period is text such as `14 days` or `10 business days`")
        if len(text) > MAX_PERIOD_TEXT:
            raise ValueError(f"a period is at most {MAX_PERIOD_TEXT} characters")
        steps: list[tuple[int, str]] = []
        # `A then B`: B counts from the *end* of A, after A's end-of-period convention (CRD Art
        # 10(1): "12 months from the end of the initial withdrawal period", which Reg 1182/71
        # Art 3(4) may have moved off a weekend). `+` keeps counting from A's unmoved last day.
        # (`\bthen\b` has no overlapping repeat, so it stays linear on hostile text.)
        for i, chunk in enumerate(re.split(r"\bthen\b", text)):
            if i:
                steps.append((0, ROLL))
            steps.extend(_step(part) for part in chunk.split("+"))
        if sum(1 for _, unit in steps if unit != ROLL) > MAX_STEPS:
            raise ValueError(f"a period has at most {MAX_STEPS} steps")
        return cls(tuple(steps))

    @property
    def units(self) -> frozenset[str]:
        return frozenset(unit for _, unit in self.steps if unit != ROLL)

    def __str__(self) -> str:
        out = ""
        for n, u in self.steps:
            if u == ROLL:
                out += " then "
            else:
                out += ("" if not out or out.endswith(" then ") else " + ") + f"{n} {u.replace('_', ' ')}"
        return out


def _step(part: str) -> tuple[int, str]:
    words = part.lower().split()
    number = words[0] if words else ""
    unit = _UNIT_WORDS.get(" ".join(words[1:]))
    if not (number.isascii() and number.isdigit() and len(number) <= 4) or unit is None:
        raise ValueError(
            f"`{part.strip()[:40]}` is not a period; write a number and one of: days, weeks, "
            "months, business days, billing cycles")
    n = int(number)
    if unit == "business_days" and n > MAX_BUSINESS_DAYS:
        raise ValueError(f"`{part.strip()}` is longer than {MAX_BUSINESS_DAYS} business days")
    return n, unit


@attrs.frozen
class CalendarSpec:
    """A ruleset's way of counting: which days are working days and how a period ends.

    ``holidays`` is ``consumer`` (the request's country and state), ``none``, or a fixed ISO
    code such as ``US`` (federal rules count federal holidays wherever the consumer lives).
    ``period_end`` is ``next_working_day`` (a last day on a weekend or holiday rolls forward,
    EU 1182/71 Art 3(4), Cal. CCP §12a) or ``as_is``.
    """

    weekend: frozenset[int] = frozenset({5, 6})
    holidays: str = "consumer"
    period_end: str = "as_is"


class WorkingDays:
    """Whether a date is a working day for one calendar and one consumer; immutable, so a
    context shared by requests shares it."""

    __slots__ = ("_weekend", "_holidays", "_extra")

    def __init__(self, weekend: frozenset[int], holiday_years: Callable[[int], frozenset[dt.date]],
                 extra: Iterable[dt.date] = ()) -> None:
        self._weekend = weekend
        self._holidays = holiday_years
        self._extra = frozenset(extra)

    def __call__(self, day: dt.date) -> bool:
        if day.weekday() in self._weekend or day in self._extra:
            return False
        return day not in self._holidays(day.year)


class HolidayCalendars:
    """Holiday dates per (country, subdivision, year), computed once and shared by threads.

    The cache is filled under a lock; reads of a filled entry take no lock.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None, int], frozenset[dt.date]] = {}
        self._lock = threading.Lock()

    def dates(self, country: str, subdivision: str | None, year: int) -> frozenset[dt.date]:
        key = (country, subdivision, year)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                found = self._compute(country, subdivision, year)
                self._cache[key] = found
        return found

    @staticmethod
    def _compute(country: str, subdivision: str | None, year: int) -> frozenset[dt.date]:
        if not 1900 <= year <= 2200:
            return frozenset()
        import holidays as _holidays  # ~0.1 s to import: only a calendar that counts holidays pays it

        try:
            cal = _holidays.country_holidays(country, subdiv=subdivision, years=year)
        except NotImplementedError:  # the library has no calendar for this country
            return frozenset()
        except Exception:  # an unknown subdivision: the country's own holidays still apply
            try:
                cal = _holidays.country_holidays(country, years=year)
            except NotImplementedError:
                return frozenset()
        return frozenset(cal.keys())



def add_period(period: Period, start: dt.date, working: Callable[[dt.date], bool],
               closing_day: int | None = None, roll: bool = False) -> dt.date | None:
    """The last day of ``period`` counted from ``start`` (excluded), before any final roll-forward.

    ``roll``: the convention rolls a period's end forward; it applies at each ``then`` inside
    the period. ``None`` when a billing-cycle period has no closing day to count by.
    """
    day = start
    for n, unit in period.steps:
        if unit == ROLL:
            day = roll_forward(day, working) if roll else day
        elif unit == "days":
            day = day + dt.timedelta(days=n)
        elif unit == "weeks":
            day = day + dt.timedelta(weeks=n)
        elif unit == "months":
            day = day + relativedelta(months=n)  # clamps 31 Jan + 1 month to 28/29 Feb
        elif unit == "business_days":
            counted = 0
            while counted < n:
                day += dt.timedelta(days=1)
                if working(day):
                    counted += 1
        elif unit == "billing_cycles":
            if closing_day is None:
                return None
            day = _closing_after(day, closing_day, n)
    return day


def roll_forward(day: dt.date, working: Callable[[dt.date], bool]) -> dt.date:
    for _ in range(60):  # no real calendar has 60 closed days in a row
        if working(day):
            return day
        day += dt.timedelta(days=1)
    return day


def _closing_date(year: int, month: int, closing_day: int) -> dt.date:
    return dt.date(year, month, min(closing_day, _stdcal.monthrange(year, month)[1]))


def _closing_after(day: dt.date, closing_day: int, cycles: int) -> dt.date:
    first = _closing_date(day.year, day.month, closing_day)
    if first <= day:
        nxt = day.replace(day=1) + relativedelta(months=1)
        first = _closing_date(nxt.year, nxt.month, closing_day)
    target = first.replace(day=1) + relativedelta(months=cycles - 1)
    return _closing_date(target.year, target.month, closing_day)
