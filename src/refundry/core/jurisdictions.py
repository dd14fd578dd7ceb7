"""Where a request comes from: country codes, EU membership and default time zones.

Country codes and zones come from the IANA tables that ship with ``tzdata``; nothing here is
typed by hand except EU membership and the zones of states that span several (no table has them).
"""

from __future__ import annotations

import re
import zoneinfo
from functools import lru_cache
from importlib import resources

EU_MEMBERS = frozenset(
    ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]
)

_CODE = re.compile(r"([A-Z]{2})(?:-([A-Z0-9]{1,3}))?")  # fullmatch: no "DE\n"

# A state's zone where its country spans several; the country default covers the rest.
_SUBDIVISION_ZONES = {
    "US": {
        "CA": "America/Los_Angeles", "WA": "America/Los_Angeles", "OR": "America/Los_Angeles",
        "NV": "America/Los_Angeles", "AZ": "America/Phoenix", "CO": "America/Denver",
        "UT": "America/Denver", "NM": "America/Denver", "MT": "America/Denver",
        "WY": "America/Denver", "ID": "America/Boise", "TX": "America/Chicago",
        "IL": "America/Chicago", "MN": "America/Chicago", "WI": "America/Chicago",
        "IA": "America/Chicago", "MO": "America/Chicago", "AR": "America/Chicago",
        "LA": "America/Chicago", "MS": "America/Chicago", "AL": "America/Chicago",
        "OK": "America/Chicago", "KS": "America/Chicago", "NE": "America/Chicago",
        "SD": "America/Chicago", "ND": "America/Chicago", "TN": "America/Chicago",
        "AK": "America/Anchorage", "HI": "Pacific/Honolulu", "PR": "America/Puerto_Rico",
    },
    "AU": {
        "NSW": "Australia/Sydney", "ACT": "Australia/Sydney", "VIC": "Australia/Melbourne",
        "QLD": "Australia/Brisbane", "SA": "Australia/Adelaide", "WA": "Australia/Perth",
        "TAS": "Australia/Hobart", "NT": "Australia/Darwin",
    },
    "CA": {
        "BC": "America/Vancouver", "AB": "America/Edmonton", "SK": "America/Regina",
        "MB": "America/Winnipeg", "ON": "America/Toronto", "QC": "America/Toronto",
        "NB": "America/Moncton", "NS": "America/Halifax", "PE": "America/Halifax",
        "NL": "America/St_Johns", "YT": "America/Whitehorse", "NT": "America/Yellowknife",
        "NU": "America/Iqaluit",
    },
}

# Where zone.tab's first zone for a country is not where most consumers live.
_COUNTRY_ZONES = {"US": "America/New_York", "AU": "Australia/Sydney", "CA": "America/Toronto",
                  "ES": "Europe/Madrid", "PT": "Europe/Lisbon", "DE": "Europe/Berlin"}


def _tzdata_table(name: str) -> list[list[str]]:
    text = resources.files("tzdata").joinpath("zoneinfo", name).read_text(encoding="utf-8")
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


@lru_cache(maxsize=1)
def countries() -> frozenset[str]:
    return frozenset(row[0] for row in _tzdata_table("iso3166.tab"))


@lru_cache(maxsize=1)
def _first_zones() -> dict[str, str]:
    zones: dict[str, str] = {}
    for row in _tzdata_table("zone.tab"):
        zones.setdefault(row[0], row[2])
    return zones


@lru_cache(maxsize=1)
def timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@lru_cache(maxsize=8192)
def split(code: str) -> tuple[str, str | None]:
    """``"US-CA"`` -> ``("US", "CA")``; raises ``ValueError`` for a code that is not ISO 3166."""
    m = _CODE.fullmatch(code) if isinstance(code, str) else None
    if not m or m.group(1) not in countries():
        raise ValueError(f"`{str(code)[:20]}` is not an ISO 3166-1 or ISO 3166-2 code")
    return m.group(1), m.group(2)


def is_eu(code: str) -> bool:
    return split(code)[0] in EU_MEMBERS


def default_timezone(code: str) -> str | None:
    country, sub = split(code)
    if sub and sub in _SUBDIVISION_ZONES.get(country, {}):
        return _SUBDIVISION_ZONES[country][sub]
    return _COUNTRY_ZONES.get(country) or _first_zones().get(country)


def matches(scope: str, code: str) -> int:
    """How specifically a ruleset scope (``*``, ``EU``, ``US``, ``US-CA``) covers a request's
    jurisdiction: 0 not at all, then 1 global, 2 EU, 3 country, 4 subdivision."""
    country, sub = split(code)
    if scope == "*":
        return 1
    if scope == "EU":
        return 2 if country in EU_MEMBERS else 0
    if scope == country:
        return 3
    if sub is not None and scope == f"{country}-{sub}":
        return 4
    return 0


def valid_scope(scope: str) -> bool:
    if scope in ("*", "EU"):
        return True
    try:
        split(scope)
    except ValueError:
        return False
    return True
