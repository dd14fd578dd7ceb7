"""Money: ``Decimal`` amounts in a currency's minor units, never floats.

Amounts are carried with whatever precision they arrived in and rounded once, half-up, to the
currency's minor unit when a decision states the refundable amount.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
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


def parse_money(value: object) -> Decimal:
    """A money value from JSON: a decimal string or an integer; floats are refused.

    Raises ``ValueError`` with a message fit for a one-line error.
    """
    if isinstance(value, bool):
        raise ValueError("must be a decimal string, not a boolean")
    if isinstance(value, float):
        raise ValueError("must be a decimal string such as `\"12.50\"`, not a float")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 40:
            raise ValueError(f"`{value[:40]}` is not a decimal amount")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"`{value[:40]}` is not a decimal amount") from None
    else:
        raise ValueError("must be a decimal string")
    if not amount.is_finite():
        raise ValueError("must be a finite amount")
    if amount.adjusted() >= MAX_DIGITS:
        raise ValueError(f"`{value}` is larger than any refund can be")
    return amount
