"""Money: ``Decimal`` amounts in a currency's minor units, never floats.

Amounts are carried with whatever precision they arrived in and rounded once, half-up, to the
currency's minor unit when a decision states the refundable amount.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

import iso4217

ZERO = Decimal(0)

# ISO 4217 lists a few codes with no minor unit figure ("N.A." funds and metals such as XAU);
# those are not currencies a refund can be paid in.
_NOT_PAYABLE = {"XAU", "XAG", "XPT", "XPD", "XDR", "XTS", "XXX", "XBA", "XBB", "XBC", "XBD", "XSU", "XUA"}


@cache
def minor_units(currency: str) -> int:
    """Digits after the decimal point in ``currency`` (EUR 2, JPY 0, BHD 3).

    Raises ``KeyError`` for a code that is not an ISO 4217 currency one can be refunded in.
    """
    code = currency.upper()
    if code in _NOT_PAYABLE:
        raise KeyError(code)
    try:
        cur = iso4217.Currency(code)
    except (ValueError, KeyError):
        raise KeyError(code) from None
    exponent = cur.exponent
    if exponent is None:
        raise KeyError(code)
    return int(exponent)


def is_currency(code: object) -> bool:
    if not isinstance(code, str) or len(code) != 3 or not code.isalpha():
        return False
    try:
        minor_units(code)
    except KeyError:
        return False
    return True


@cache
def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round once, half-up, to the currency's minor unit."""
    return amount.quantize(_quantum(currency), rounding=ROUND_HALF_UP)


MAX_DIGITS = 15  # 10^15 of any unit is more money than a refund can be; bigger is hostile input
MAX_PLACES = 12
# The request schema's money pattern, read the same way: ASCII digits only (``\d`` would take
# fullwidth and other Unicode digits), no sign, no exponent, no underscores, no spaces.
# ``$(?!\n)`` ends the text in both dialects: Python's ``$`` also matches before a final newline.
END = r"$(?!\n)"
MONEY_PATTERN = rf"^[0-9]{{1,{MAX_DIGITS}}}(\.[0-9]{{1,{MAX_PLACES}}})?" + END
_MONEY_TEXT = re.compile(MONEY_PATTERN)


def parse_money(value: object) -> Decimal:
    """A money value from JSON: a decimal string or an integer, never negative; floats are
    refused. ``Decimal`` (what a JSON reader with ``parse_float=Decimal`` gives) is held to the
    same limits as the text.

    Raises ``ValueError`` with a message fit for a one-line error.
    """
    if isinstance(value, bool):
        raise ValueError("must be a decimal string, not a boolean")
    if isinstance(value, float):
        raise ValueError("must be a decimal string such as `\"12.50\"`, not a float")
    if isinstance(value, str):
        if len(value) > MAX_DIGITS + MAX_PLACES + 1 or not _MONEY_TEXT.match(value):
            shown = value[:40].encode("ascii", "backslashreplace").decode()
            if value.startswith("-") and _MONEY_TEXT.match(value[1:]):
                raise ValueError("must not be negative")
            raise ValueError(f"`{shown}` is not a decimal amount such as `12.50` (digits 0-9, "
                             "no sign, no exponent)")
        return Decimal(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        if value >= 10**MAX_DIGITS:
            raise ValueError("is larger than any refund can be")
        return Decimal(value)
    if isinstance(value, Decimal):
        return _checked_decimal(value)
    raise ValueError("must be a decimal string")


def _checked_decimal(amount: Decimal) -> Decimal:
    if not amount.is_finite():
        raise ValueError("must be a finite amount")
    if amount.is_signed() and amount != 0:
        raise ValueError("must not be negative")
    if amount != 0 and amount.adjusted() >= MAX_DIGITS:
        raise ValueError("is larger than any refund can be")
    if amount.as_tuple().exponent < -MAX_PLACES:  # type: ignore[operator]
        raise ValueError(f"has more than {MAX_PLACES} decimal places")
    return abs(amount)  # -0 becomes 0
