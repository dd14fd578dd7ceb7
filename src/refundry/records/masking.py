"""Masking: what is removed from a request (and from anything else) before a record keeps it.

PCI DSS forbids storing sensitive authentication data at all (CVV2/CVC2/CID, PIN, track data)
and a full card number unreadable (reference rows F19-F21); HIPAA's minimum-necessary rule (H11)
means diagnosis codes, procedure codes and service dates have no business in a refund record.
Emails and addresses are kept only as stable pseudonyms, which is all the fraud checks need
(the same email or address across customers), plus the email's domain.

Everything here is a pure function of its input and a per-store ``salt``; nothing is global.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# Keys dropped in any mapping, wherever it is nested (``facts`` included). Compared after
# lower-casing and removing ``_``, ``-`` and spaces, so ``Security-Code`` is caught too.
SENSITIVE_KEYS = frozenset({
    "cvv", "cvv2", "cvc", "cvc2", "cid", "csc", "cav2", "securitycode", "cardsecuritycode",
    "cardverificationvalue", "cardverificationcode", "pin", "pinblock", "track", "track1",
    "track2", "trackdata", "magstripe",
    "diagnosiscodes", "procedurecodes", "servicedate",
})

# At least 13 digits, each after the first optionally preceded by up to three spaces, dashes
# or line breaks ("4111 1111-1111 1111", "4111  1111\n1111 1111": people copy numbers in every
# shape); shorter runs, like dates, never reach the Python code below.
_DIGIT_RUN = re.compile(r"\d(?:[\s\-]{0,3}\d){12,}")
# A security code written next to its name in free text: "cvv 123", "CVC2: 1234", "cid#123".
_CODE_IN_TEXT = re.compile(
    r"(?i)\b(cvv2?|cvc2?|cid|csc|cav2|security[\s_-]*code|card[\s_-]*verification[\s_-]*"
    r"(?:value|code))(\W{0,4})(\d{3,4})\b")
_DIGIT = re.compile(r"\d")
_MIN_PAN, _MAX_PAN = 13, 19
_SAFE_INT = 2**53 - 1  # canonical JSON (RFC 8785) has no exact integers above this


def _norm_key(key: str) -> str:
    return re.sub(r"[\s_\-]", "", key).lower()


def is_sensitive_key(key: str) -> bool:
    return _norm_key(key) in SENSITIVE_KEYS


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_run(run: str) -> str:
    """Mask every 13-19 digit stretch of ``run`` that passes Luhn, keeping its last four.

    Every stretch is tried, not only the whole run: a card number with a few more digits glued
    on ("4111 1111 1111 1111 123") would otherwise fail Luhn as a whole and be kept in full.
    """
    positions = [i for i, ch in enumerate(run) if ch.isdigit()]
    digits = "".join(run[i] for i in positions)
    n = len(digits)
    if n < _MIN_PAN:
        return run
    # Luhn sums of every stretch in O(1) each, from prefix sums: the digit at j is doubled when
    # its distance from the stretch's last digit is odd, i.e. by the parity of j.
    plain = [ord(c) - 48 for c in digits]
    doubled = [(2 * d - 9 if d > 4 else 2 * d) for d in plain]
    sums = ([0] * (n + 1), [0] * (n + 1))  # sums[p]: digits of parity p doubled
    for j in range(n):
        for p in (0, 1):
            sums[p][j + 1] = sums[p][j] + (doubled[j] if j % 2 == p else plain[j])
    hidden = [False] * n
    for end in range(_MIN_PAN, n + 1):
        table = sums[end % 2]  # parity of end - 2, the digit next to the last one
        for length in range(_MIN_PAN, min(_MAX_PAN, end) + 1):
            if (table[end] - table[end - length]) % 10 == 0:
                for k in range(end - length, end - 4):
                    hidden[k] = True
    if not any(hidden):
        return run
    chars = list(run)
    for k, pos in enumerate(positions):
        if hidden[k]:
            chars[pos] = "*"
    return "".join(chars)


def mask_text(text: str) -> str:
    """``text`` with card numbers cut to their last four digits and spelled-out CVVs removed."""
    if _DIGIT.search(text) is None:
        return text
    text = _CODE_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + "*" * len(m.group(3)), text)
    return _DIGIT_RUN.sub(lambda m: _mask_run(m.group(0)), text)


def pseudonym(value: str, salt: bytes, prefix: str) -> str:
    """A stable stand-in for ``value``: equal inputs give equal outputs within one store, and
    the salt keeps two stores' pseudonyms from being matched against each other."""
    normal = " ".join(value.split()).lower()
    return prefix + hmac.new(salt, normal.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def mask_email(email: str, salt: bytes) -> str:
    _, at, domain = email.strip().rpartition("@")
    token = pseudonym(email, salt, "email-")
    return f"{token}@{mask_text(domain.lower())}" if at else token


def mask_request(data: Mapping[str, Any], salt: bytes) -> dict[str, Any]:
    """The request as a record may keep it (``data`` in canonical JSON form, valid or not)."""
    out = mask_value(data)
    customer = out.get("customer")
    if isinstance(customer, dict):
        if isinstance(customer.get("email"), str):
            customer["email"] = mask_email(customer["email"], salt)
        if isinstance(customer.get("address"), str):
            customer["address"] = pseudonym(customer["address"], salt, "address-")
    return out


def mask_value(value: Any) -> Any:
    """A JSON-safe copy of ``value`` with sensitive keys dropped and every string (keys
    included) masked. Decimals and dates become strings; integers a card number could hide in
    are masked like text, and integers canonical JSON cannot carry exactly become strings."""
    if isinstance(value, Mapping):
        return {mask_text(str(k)): mask_value(v) for k, v in value.items()
                if not is_sensitive_key(str(k))}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        shown = mask_text(str(value))
        if shown != str(value) or abs(value) > _SAFE_INT:
            return shown
        return value
    if isinstance(value, Decimal):
        return mask_text(str(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, float):
        return mask_text(repr(value))
    return mask_text(str(value))
