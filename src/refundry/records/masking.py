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
import functools
import hashlib
import hmac
import operator
import re
import types
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import attrs

# Keys dropped in any mapping, wherever it is nested (``facts`` included). Compared after
# lower-casing and removing everything but letters and digits, so ``Security-Code`` is caught.
SENSITIVE_KEYS = frozenset({
    "cvv", "cvv2", "cvc", "cvc2", "cvn", "cvn2", "cvd", "cid", "csc", "cav2", "securitycode",
    "cardsecuritycode", "cardverificationvalue", "cardverificationcode", "verificationcode",
    "verificationvalue", "cardcode", "pin", "pinblock", "track", "track1", "track2",
    "trackdata", "magstripe",
    "diagnosiscodes", "procedurecodes", "servicedate",
})
# Any key that contains one of these names a security code (``card_cvv``, ``cvcNumber``);
# shorter names like ``cid`` or ``pin`` only as the whole key, since ``incident`` and
# ``shipping`` contain them.
_SENSITIVE_PARTS = ("cvv", "cvc", "cvn", "cvd", "cav2", "securitycode", "verificationcode",
                    "verificationvalue")

# A card number is 13-19 digits with anything between them that is neither a letter nor a
# digit: people and systems write "4111.1111.1111.1111", "4111/1111/...", "(4111) 1111 ...",
# runs of spaces, zero-width spaces. ``\d`` is any Unicode decimal digit (fullwidth too) and
# ``[\W_]`` any separator; the two classes are disjoint, so matching cannot backtrack.
_DIGIT_RUN = re.compile(r"\d(?:[\W_]*\d){12,}")
# A security code written near its name in free text: "cvv 123", "CVC2: 1234", "cid#123",
# "the security code is 123". Up to 20 characters of filler, no digits, between the two.
_CODE_IN_TEXT = re.compile(
    r"(?i)\b(cvv2?|cvc2?|cvn2?|cvd|cid|csc|cav2|card[\s_-]*code|security[\s_-]*code|"
    r"(?:card[\s_-]*)?verification[\s_-]*(?:value|code|number))"
    r"([^\d\n]{0,20}?)(\d[\W_]?\d[\W_]?\d(?:[\W_]?\d)?)(?!\d)")
_DIGIT = re.compile(r"\d")
# Cheap necessary conditions for the two patterns above, checked first because most text with
# digits (every date, every id) matches neither, and the patterns cost several times more to
# fail. Every ``_CODE_IN_TEXT`` match holds one of these words under the same ``(?i)`` (which
# also folds ``ſ`` and ``K``, so ``str.lower`` would not do); a ``_DIGIT_RUN`` match lies
# between two letters (``\w`` that is neither a digit nor ``_``), so a text whose letter-free
# stretches all hold fewer than 13 digits has none.
_CODE_WORD = re.compile(r"(?i)cv|cid|csc|cav2|code|verification")
_LETTERS = re.compile(r"[^\W\d_]+")
_MIN_PAN, _MAX_PAN = 13, 19
_ASCII_LETTERS = bytes(range(65, 91)) + bytes(range(97, 123))
_LETTERS_TO_SPACE = bytes.maketrans(_ASCII_LETTERS, b" " * len(_ASCII_LETTERS))
_NOT_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())  # ASCII separators, _ too
_SAFE_INT = 2**53 - 1  # canonical JSON (RFC 8785) has no exact integers above this
# Integers strictly inside +-_SMALL_INT print with fewer digits than a card number holds, so
# masking keeps them as they are; the walks keep them without printing them (counts, quantities
# and ages in every request's facts).
_SMALL_INT = 10 ** (_MIN_PAN - 1)
# What a money field may hold (schemas/refund-request.schema.json): such a value is an amount,
# never masked, so 1000000000009.00 stays an amount and four-eyes still counts it.
_MONEY = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,12})?")  # ASCII digits only, as the schema
_MONEY_BITS = (10**15).bit_length()  # no integer of more bits has 15 digits or fewer
_TAG_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")


def _norm_key(key: str) -> str:
    return "".join(ch for ch in key.lower() if ch.isalnum())


# Cached: a request's few dozen keys recur in every request, and masking asks about each key
# of every request twice or three times. Bounded, so a source inventing keys costs no memory.
@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    norm = _norm_key(key)
    return norm in SENSITIVE_KEYS or any(part in norm for part in _SENSITIVE_PARTS)


@functools.lru_cache(maxsize=4096)
def _kept_key(key: str) -> str | None:
    """A mapping key as masking keeps it (masked like text), or None for a sensitive key that
    is dropped with its value. Cached like ``is_sensitive_key``: keys recur, values do not."""
    return None if is_sensitive_key(key) else mask_text(key)


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
    positions = [i for i, ch in enumerate(run) if ch.isdecimal()]
    n = len(positions)
    if n < _MIN_PAN:
        return run
    # Luhn sums of every stretch in O(1) each, from prefix sums: the digit at j is doubled when
    # its distance from the stretch's last digit is odd, i.e. by the parity of j.
    plain = [unicodedata.decimal(run[i]) for i in positions]
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


def _may_hold_card(text: str) -> bool:
    r"""``_may_hold_card_plain(text)``; for ASCII text (most) in a few C calls: letters
    (ASCII's ``[^\W\d_]``) become spaces, everything else but digits (ASCII's ``\d``) is
    dropped, and what is left between letters is each letter-free stretch's digits."""
    if text.isascii():
        kept = text.encode("ascii").translate(_LETTERS_TO_SPACE, _NOT_ALNUM)
        return any(len(digits) >= _MIN_PAN for digits in kept.split())
    return _may_hold_card_plain(text)


def _may_hold_card_plain(text: str) -> bool:
    return any(len(part) >= _MIN_PAN and len(_DIGIT.findall(part)) >= _MIN_PAN
               for part in _LETTERS.split(text))


def _hide_code(m: re.Match[str]) -> str:
    return m.group(1) + m.group(2) + _DIGIT.sub("*", m.group(3))


def mask_text(text: str) -> str:
    """``text`` with card numbers cut to their last four digits and spelled-out CVVs removed."""
    if _DIGIT.search(text) is None:
        return text
    # Every code word holds a ``c``, and under ``(?i)`` only ``c`` and ``C`` match one (a test
    # checks every code point): a text without either, every date, skips the slower search.
    if ("c" in text or "C" in text) and _CODE_WORD.search(text) is not None:
        text = _CODE_IN_TEXT.sub(_hide_code, text)
    if len(text) < _MIN_PAN or not _may_hold_card(text):
        return text
    return _mask_cards(text)


def mask_text_plain(text: str) -> str:
    """``mask_text`` without its shortcuts: the reference a differential test holds it to."""
    if _DIGIT.search(text) is None:
        return text
    if _CODE_WORD.search(text) is not None:
        text = _CODE_IN_TEXT.sub(_hide_code, text)
    if len(text) < _MIN_PAN or not _may_hold_card_plain(text):
        return text
    return _mask_cards(text)


def _mask_cards(text: str) -> str:
    # A masked ``*`` is a separator too, so the digits a pass leaves visible (a last four and
    # the digits before a card number) can line up into a new Luhn-valid run; mask again
    # until nothing changes. Each pass only hides digits, so this ends.
    for _ in range(_MAX_PAN):
        masked = _DIGIT_RUN.sub(lambda m: _mask_run(m.group(0)), text)
        if masked == text:
            return masked
        text = masked
    return _DIGIT.sub("*", text)


def scrub_id(request_id: str, key: bytes | Callable[[], bytes]) -> str:
    """A request id as it may be written anywhere: itself, or, when it holds a card number,
    the masked form plus a keyed tag of the whole id (``**** **** **** 1111~kdmafpbc...``).

    Masking alone maps different ids to one (``...1111`` for every card ending in 1111), and
    the id is the case key and the journal key; the tag keeps them apart. It is letters only,
    so it can never add digits to a run. The same id and key always give the same result, and
    a result is its own scrub.
    """
    masked = mask_text(request_id)
    if masked == request_id:
        return request_id
    secret = key() if callable(key) else key  # a callable is asked only when a tag is needed
    tag = hmac.new(secret, request_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{masked}~{tag[:16].translate(_TAG_LETTERS)}"


@functools.cache
def request_money_paths() -> frozenset[str]:
    """The dotted paths (``[]`` for a list member) of every money field of a request."""
    from refundry.core.models import RefundRequest

    def walk(cls: type, prefix: str) -> Iterator[str]:
        for f in attrs.fields(cls):
            kind, model = f.metadata.get("kind"), f.metadata.get("model")
            path = prefix + f.name + ("[]" if f.metadata.get("many") else "")
            if kind == "money":
                yield path
            elif model is not None and attrs.has(model):
                yield from walk(model, path + ".")

    return frozenset(walk(RefundRequest, ""))


DECISION_MONEY = frozenset({"amount"})
DETAILS_MONEY = frozenset({"amount", "four_eyes_above", "value", "current.amount",
                           "original.amount"})


def _is_money(value: Any, path: str, money: frozenset[str]) -> bool:
    if path not in money or isinstance(value, bool):
        return False
    if isinstance(value, Decimal):
        return value.is_finite() and _MONEY.fullmatch(str(value)) is not None
    if isinstance(value, int):
        # An integer too long to print (over 4,300 digits) is no amount: the callers' integer
        # branches keep it out whole, where ``str`` here would have crashed the whole batch.
        return value.bit_length() <= _MONEY_BITS and _MONEY.fullmatch(str(value)) is not None
    return isinstance(value, str) and _MONEY.fullmatch(value) is not None


def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def scrub(value: Any, money: frozenset[str] = frozenset(), path: str = "") -> Any:
    """``value`` as it came in (JSON types kept) with card numbers, security codes and
    sensitive keys removed: what a request may be before anything writes it anywhere. Money
    fields (``money``, dotted paths) holding an amount are left alone.

    The same as ``scrub_plain``, walked faster (``_walk``)."""
    return _walk(value, money, path, scrub_plain)


def scrub_plain(value: Any, money: frozenset[str] = frozenset(), path: str = "") -> Any:
    """``scrub`` as plainly written: the reference the fast walk is tested against, and what
    that walk hands every value other than text, dicts, lists, booleans and null."""
    if type(value) is str:  # most values: checked before the slower ``Mapping`` check
        return value if _is_money(value, path, money) else mask_text(value)
    if isinstance(value, Mapping):
        return {kept: scrub_plain(v, money, _child(path, k)) for k, v in value.items()
                if (kept := _kept_key(str(k))) is not None}
    if isinstance(value, (list, tuple)):
        return [scrub_plain(v, money, path + "[]") for v in value]
    if isinstance(value, bool) or value is None or _is_money(value, path, money):
        return value
    if isinstance(value, str):
        return mask_text(value)
    # A number that must be masked is not turned into a string: that would make a request
    # whose `transaction.id` was the number 4111111111111111 (invalid: ids are text) valid, and
    # then approvable. In a list it stays of the wrong type for every typed field.
    try:
        shown = repr(value) if isinstance(value, float) else str(value)
    except ValueError:  # an integer too long to print: it can hold anything
        return ["(a number too long to keep)"]
    masked = mask_text(shown)
    return value if masked == shown else [masked]


def scrub_request(data: Any, key: bytes | Callable[[], bytes]) -> Any:
    """A request as it arrives from a source, scrubbed before anything writes it: card data
    out, money kept, and the request id scrubbed with ``key`` (``scrub_id``)."""
    if not isinstance(data, Mapping):
        return scrub(data)
    out = scrub(data, request_money_paths())
    rid = data.get("request_id")
    if isinstance(rid, str):
        out["request_id"] = scrub_id(rid, key)
    return out


def pseudonym(value: str, salt: bytes, prefix: str) -> str:
    """A stable stand-in for ``value``: equal inputs give equal outputs within one store, and
    the salt keeps two stores' pseudonyms from being matched against each other."""
    normal = " ".join(value.split()).lower()
    # hmac.digest: the same HMAC in one C call (several keys per request, every request).
    return prefix + hmac.digest(salt, normal.encode("utf-8"), "sha256").hex()[:24]


def mask_email(email: str, salt: bytes) -> str:
    _, at, domain = email.strip().rpartition("@")
    token = pseudonym(email, salt, "email-")
    return f"{token}@{mask_text(domain.lower())}" if at else token


def mask_request(data: Mapping[str, Any], salt: bytes) -> dict[str, Any]:
    """The request as a record may keep it (``data`` in canonical JSON form, valid or not)."""
    out = mask_value(data, request_money_paths())
    if isinstance(data.get("request_id"), str):
        out["request_id"] = scrub_id(data["request_id"], salt)
    return _pseudonyms(out, salt)


def _pseudonyms(out: dict[str, Any], salt: bytes) -> dict[str, Any]:
    """A masked request's customer email and address as their pseudonyms."""
    customer = out.get("customer")
    if isinstance(customer, dict):
        if isinstance(customer.get("email"), str):
            customer["email"] = mask_email(customer["email"], salt)
        if isinstance(customer.get("address"), str):
            customer["address"] = pseudonym(customer["address"], salt, "address-")
    return out


def mask_parsed(request: Any, salt: bytes, fields: Collection[str] | None = None) -> dict[str, Any]:
    """``mask_request(request_to_dict(request, fields), salt)`` for a parsed request, walked
    once: each value masked as its dump would be, without making the dump. A top-level field
    holding what the parser never makes (a float, a mapping other than a plain dict, a class
    of its own) is dumped and masked as ``mask_request`` masks it."""
    from refundry.core.request import request_to_dict

    if type(request.request_id) is str:  # else not as parsed: its dump decides its key
        try:
            return _request_masked(request, salt, fields)
        except Exception:  # noqa: BLE001 - whatever the walk trips on, the plain way answers
            pass  # (as it always did: with the masked request, or with its own exception)
    return mask_request(request_to_dict(request, fields), salt)


def _request_masked(request: Any, salt: bytes, fields: Collection[str] | None) -> dict[str, Any]:
    from refundry.core.request import request_to_dict

    money = request_money_paths()
    out: dict[str, Any] = {}
    plan, values = _plan(type(request), "", money)  # type: ignore[arg-type]  # a class is hashable; typeshed says not
    # A request's fields are its own names, kept as they are (``kept``: the name).
    named: Iterable[tuple[tuple[str, str, bool], Any]] = zip(plan, values(request), strict=True)
    if fields is not None:  # in their order, as ``request_to_dict`` gives them
        by_name = {entry[0]: (entry, v) for entry, v in named}
        named = [by_name[name] for name in fields]
    for (name, path, is_money), v in named:
        if v is None or v == ():
            continue
        try:
            out[name] = _masked_parsed(v, path, is_money, money)
        except _Unusual:
            out[name] = mask_value(request_to_dict(request, (name,)), money)[name]
    if "request_id" in out:
        out["request_id"] = scrub_id(request.request_id, salt)
    return _pseudonyms(out, salt)


class _Unusual(Exception):  # noqa: N818 - not an error: a value the fast walk leaves to the dump
    """A value ``_masked_parsed`` does not take: its field is dumped and masked instead."""


# The path given below a value with no money at or below it: no money path is ever this.
_FREE = "\x00"


@functools.lru_cache(maxsize=256)
def _plan(kind: type, path: str, money: frozenset[str]
          ) -> tuple[tuple[tuple[str, str, bool], ...], Callable[[Any], tuple[Any, ...]]]:
    """A model's fields at ``path`` that masking keeps, as (its key as kept, its dotted path
    or ``_FREE``, whether that is a money path), and a getter of their values in one call.
    Cached: models, their paths and the money paths are the program's, never the input's."""
    prefixes = _money_prefixes(money)
    names, plan = [], []
    for f in attrs.fields(kind):
        kept = _kept_key(f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if kept is not None:
            names.append(f.name)
            plan.append((kept, sub if sub in prefixes else _FREE, sub in money))
    # ``attrgetter`` of one name gives the value, not a 1-tuple.
    getter = operator.attrgetter(*names) if len(names) > 1 \
        else (lambda obj: tuple(getattr(obj, n) for n in names))
    return tuple(plan), getter


def _masked_parsed(value: Any, path: str, is_money: bool, money: frozenset[str]) -> Any:
    """``_walk(dump(value), money, path, mask_value_plain)`` for a value of a parsed request
    (``dump``: ``request_to_dict``'s); ``_Unusual`` for a value it does not take. ``path``
    is ``_FREE`` where no money path is at or below it, and then never built further."""
    kind = type(value)
    if kind is str:
        return value if is_money and _MONEY.fullmatch(value) is not None else mask_text(value)
    if kind is bool or value is None:
        return value
    if kind is Decimal:  # dumped as its text
        text = str(value)
        return text if is_money and _MONEY.fullmatch(text) is not None else mask_text(text)
    if kind is int:
        if is_money:
            return mask_value_plain(value, money, path)
        return value if -_SMALL_INT < value < _SMALL_INT else mask_value_plain(value)
    if kind is dt.datetime or kind is dt.date:
        return _masked_parsed(value.isoformat(), path, is_money, money)
    if kind is tuple or kind is list:
        sub = _FREE if path is _FREE else path + "[]"
        below = sub is not _FREE and sub in money
        if sub is not _FREE and sub not in _money_prefixes(money):
            sub = _FREE
        return [mask_text(v) if type(v) is str and not below
                else _masked_parsed(v, sub, below, money) for v in value]
    if kind is dict and path is _FREE:  # facts: the dump keeps its keys, the walk masks them
        # Text, flags and counts (most of a request's facts) without a call each.
        return {kept: mask_text(v) if type(v) is str
                else v if type(v) is bool or (type(v) is int and -_SMALL_INT < v < _SMALL_INT)
                else _masked_parsed(v, _FREE, False, money)
                for k, v in value.items()
                if (kept := _kept_key(k if type(k) is str else str(k))) is not None}
    if attrs.has(kind) and kind.__module__ == "refundry.core.models":
        plan, values = _plan(kind, path, money) if path is not _FREE \
            else _plan(kind, "", frozenset())
        out = {}
        for (kept, sub, money_here), v in zip(plan, values(value), strict=True):
            if v is not None and v != ():
                out[kept] = mask_text(v) if type(v) is str and not money_here \
                    else v if type(v) is bool else _masked_parsed(v, sub, money_here, money)
        return out
    raise _Unusual


def mask_value(value: Any, money: frozenset[str] = frozenset(), path: str = "") -> Any:
    """A JSON-safe copy of ``value`` with sensitive keys dropped and every string (keys
    included) masked. Decimals and dates become strings; integers a card number could hide in
    are masked like text, and integers canonical JSON cannot carry exactly become strings.
    Amounts at the dotted paths in ``money`` are kept as they are (money is never masked).

    The same as ``mask_value_plain``, walked faster (``_walk``)."""
    return _walk(value, money, path, mask_value_plain)


def mask_value_plain(value: Any, money: frozenset[str] = frozenset(), path: str = "") -> Any:
    """``mask_value`` as plainly written: the reference the fast walk is tested against, and
    what that walk hands every value other than text, dicts, lists, booleans and null."""
    if type(value) is str:  # most values: checked before the slower ``Mapping`` check
        return value if _is_money(value, path, money) else mask_text(value)
    if isinstance(value, Mapping):
        return {kept: mask_value_plain(v, money, _child(path, k))
                for k, v in value.items() if (kept := _kept_key(str(k))) is not None}
    if isinstance(value, (list, tuple)):
        return [mask_value_plain(v, money, path + "[]") for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if _is_money(value, path, money):
        return value if isinstance(value, (str, int)) and abs(int(Decimal(value))) <= _SAFE_INT \
            else str(value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int):
        try:
            shown = mask_text(str(value))
        except ValueError:  # an integer too long to print: it can hold anything
            return "(a number too long to keep)"
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


Leaf = Callable[..., Any]


@functools.lru_cache(maxsize=64)
def _money_prefixes(money: frozenset[str]) -> frozenset[str]:
    """Every string prefix of a money path: a value whose path is none of these has no money
    path at or below it (a child's path always starts with its parent's), so its subtree is
    walked without building paths at all."""
    return frozenset(m[:i] for m in money for i in range(len(m) + 1))


def _walk(value: Any, money: frozenset[str], path: str, leaf: Leaf) -> Any:
    prefixes = _money_prefixes(money)
    if path in prefixes:
        return _walk_money(value, money, prefixes, path, leaf)
    return _walk_free(value, leaf)


def _walk_free(value: Any, leaf: Leaf) -> Any:
    """``leaf(value)`` for a value with no money at or below it, for the common JSON shapes
    without ``leaf``'s chain of ``isinstance`` checks (a ``Mapping`` check is slow) and
    without the dotted paths nothing below will look at. Exactly what ``leaf`` gives: anything
    else (other mappings, numbers, dates) goes to ``leaf`` itself."""
    kind = type(value)
    if kind is str:
        return mask_text(value)
    if kind is dict:  # text, most members, masked here rather than a call deeper
        return {kept: mask_text(v) if type(v) is str else _walk_free(v, leaf)
                for k, v in value.items()
                if (kept := _kept_key(k if type(k) is str else str(k))) is not None}
    if kind is list or kind is tuple:
        return [mask_text(v) if type(v) is str else _walk_free(v, leaf) for v in value]
    if value is None or kind is bool or (kind is int and -_SMALL_INT < value < _SMALL_INT):
        return value
    return leaf(value)


def _walk_money(value: Any, money: frozenset[str], prefixes: frozenset[str], path: str,
                leaf: Leaf) -> Any:
    """``_walk_free`` for a value at ``path``, a prefix of a money path: paths are built
    (as ``leaf`` builds them) while they may still lead to money."""
    kind = type(value)
    if kind is str:
        if path in money and _MONEY.fullmatch(value) is not None:
            return value
        return mask_text(value)
    if kind is dict:
        out = {}
        for k, v in value.items():
            kept = _kept_key(k if type(k) is str else str(k))
            if kept is None:
                continue
            sub = f"{path}.{k}" if path else str(k)  # ``_child``, without the call
            if sub not in prefixes:
                out[kept] = mask_text(v) if type(v) is str else _walk_free(v, leaf)
            elif type(v) is str:  # an amount as text, most often: no call deeper
                out[kept] = (v if sub in money and _MONEY.fullmatch(v) is not None
                             else mask_text(v))
            else:
                out[kept] = _walk_money(v, money, prefixes, sub, leaf)
        return out
    if kind is list or kind is tuple:
        sub = path + "[]"
        if sub in prefixes:
            return [_walk_money(v, money, prefixes, sub, leaf) for v in value]
        return [_walk_free(v, leaf) for v in value]
    if value is None or kind is bool:
        return value
    return leaf(value, money, path)


# The ruleset's own texts, as masking leaves them: rule ids, codes, messages, citations,
# deadline names, layer digests, which every decision snapshot repeats and which hold digits
# (citations, digests) or are long (a Unicode ``\d`` scan of a message costs a microsecond
# and more), against a hash computed once per string object and one lookup. Only texts that
# mask to themselves go in (the store writes them as they are; a text masking changes is
# never kept), and only the ruleset's texts in a snapshot (``mask_snapshot``): request
# text (ids, SKUs, notes, addresses, emails) never enters, so nothing of a customer's
# outlives its request here or is shared between clients. Shared by all threads without a lock: ``in``, ``add``
# and ``clear`` on a set are each one atomic step under the GIL, so a race can only drop
# entries (a miss costs one plain masking), never give a wrong answer. Cleared when full and
# long texts left out, so it stays bounded whatever a ruleset holds.
_RULE_TEXTS: set[str] = set()
_RULE_TEXTS_MAX = 4_096
_RULE_TEXT_LONGEST = 2_048
# The members of a decision snapshot (``Decision.to_dict``) that hold the ruleset's parts, and
# within them the members that are the ruleset's own text. The rest there (a deadline's date,
# an action's amount: computed per request) is masked afresh, like all of the request. The
# engine's own reasons (``refundry.*``: an invalid request, no ruleset in force) can name
# what a request sent, so they are masked afresh too.
_RULE_PARTS = frozenset({"reasons", "deadlines", "actions", "ruleset"})
_ENGINE_OWN = "refundry."  # how the rule ids of the engine's own reasons begin (core.engine)
_RULE_TEXT_KEYS = frozenset({"rule_id", "effect", "code", "message", "customer_message",
                             "customer_messages", "citation", "ruleset", "name", "type", "id",
                             "version", "digest", "layers"})


def mask_rule_text(text: str) -> str:
    """``mask_text(text)`` for a text of the ruleset's, remembered when masking keeps it."""
    exact = type(text) is str  # a subclass could hash and compare as it likes
    if exact and text in _RULE_TEXTS:
        return text
    masked = mask_text(text)
    if exact and masked == text and len(text) <= _RULE_TEXT_LONGEST:
        if len(_RULE_TEXTS) >= _RULE_TEXTS_MAX:
            _RULE_TEXTS.clear()
        _RULE_TEXTS.add(text)
    return masked


def mask_snapshot(snapshot: Any) -> Any:
    """``mask_value(snapshot, DECISION_MONEY)``: a decision as a record keeps it, with the
    ruleset's texts in it through ``mask_rule_text``."""
    if type(snapshot) is not dict:
        return mask_value(snapshot, DECISION_MONEY)
    prefixes = _money_prefixes(DECISION_MONEY)
    out = {}
    for k, v in snapshot.items():
        kept = _kept_key(k if type(k) is str else str(k))
        if kept is None:
            continue
        sub = str(k)  # ``_child("", k)``
        if type(k) is str and k in _RULE_PARTS:
            out[kept] = _walk_rule_part(v)
        elif sub in prefixes:
            out[kept] = _walk_money(v, DECISION_MONEY, prefixes, sub, mask_value_plain)
        else:
            out[kept] = _walk_free(v, mask_value_plain)
    return out


def mask_decision(decision: Any) -> Any:
    """``mask_snapshot(decision.to_dict())`` for a ``Decision`` as the engine makes it, walked
    from the decision itself, without making the dict first; any other decision, or one
    holding a value of a type the engine never puts there, the plain way."""
    if type(decision) is _models().Decision:
        try:
            return _decision_masked(decision)
        except Exception:  # noqa: BLE001 - whatever the walk trips on, the plain way answers
            pass  # (as it always did: with the snapshot, or with its own exception)
    return mask_snapshot(decision.to_dict())


@functools.cache
def _models() -> types.SimpleNamespace:
    """The decision's classes (imported when first needed, as ``request_money_paths`` does)."""
    from refundry.core import models

    return types.SimpleNamespace(**{n: getattr(models, n) for n in (
        "Decision", "Reason", "Deadline", "Line", "Action", "RulesetRef", "Layer")})


def _text(value: Any, mask: Callable[[str], str] = mask_text) -> str:
    if type(value) is not str:
        raise _Unusual
    return mask(value)


def _decision_masked(d: Any) -> dict[str, Any]:
    """``mask_snapshot(d.to_dict())``, member by member in ``Decision.to_dict``'s order (its
    keys, and each part's, mask to themselves: a test holds them to it)."""
    amount = str(d.amount)  # as ``to_dict`` writes it; at the money path ``amount``
    ruleset = d.ruleset
    if ruleset is not None:
        if type(ruleset) is not _models().RulesetRef:
            raise _Unusual
        ruleset = {"id": _text(ruleset.id, mask_rule_text),
                   "version": _text(ruleset.version, mask_rule_text),
                   "digest": _text(ruleset.digest, mask_rule_text),
                   "layers": [_layer_masked(layer) for layer in ruleset.layers]}
    return {
        "request_id": _text(d.request_id), "outcome": _text(d.outcome),
        "amount": amount if _MONEY.fullmatch(amount) is not None else mask_text(amount),
        "currency": _text(d.currency),
        "reasons": [_reason_masked(r) for r in d.reasons],
        "deadlines": [_deadline_masked(x) for x in d.deadlines],
        "lines": [_line_masked(x) for x in d.lines],
        "actions": [_action_masked(x) for x in d.actions],
        "ruleset": ruleset,
        "as_of": _text(d.as_of.isoformat()) if d.as_of else None,  # as ``to_dict`` asks
        "errors": [_text(e) for e in d.errors],
    }


def _rule_mask(rule_id: Any) -> Callable[[str], str]:
    """How a rule part's texts are masked (``_walk_rule_part``): remembered for a ruleset's
    rule, afresh for the engine's own (``refundry.*``)."""
    if type(rule_id) is not str:
        raise _Unusual
    return mask_text if rule_id.startswith(_ENGINE_OWN) else mask_rule_text


def _reason_masked(r: Any) -> dict[str, Any]:
    if type(r) is not _models().Reason or type(r.floor) is not bool:
        raise _Unusual
    mask = _rule_mask(r.rule_id)
    out = {"rule_id": mask(r.rule_id), "effect": _text(r.effect, mask),
           "code": _text(r.code, mask), "message": _text(r.message, mask),
           "customer_message": _text(r.customer_message, mask),
           "citation": _text(r.citation, mask), "floor": r.floor,
           "ruleset": _text(r.ruleset, mask)}
    if r.customer_messages:
        out["customer_messages"] = {_text(lang, _kept_text): _text(text, mask)
                                    for lang, text in dict(r.customer_messages).items()}
    return out


def _kept_text(key: str) -> str:
    kept = _kept_key(key)
    if kept is None:  # a language named like a security code: the plain walk drops it
        raise _Unusual
    return kept


def _deadline_masked(x: Any) -> dict[str, Any]:
    if type(x) is not _models().Deadline:
        raise _Unusual
    mask = _rule_mask(x.rule_id)
    return {"name": _text(x.name, mask), "due": _text(x.due.isoformat()),
            "citation": _text(x.citation, mask), "rule_id": mask(x.rule_id)}


def _line_masked(x: Any) -> dict[str, Any]:
    if type(x) is not _models().Line or type(x.quantity) is not int:
        raise _Unusual
    q = x.quantity
    return {"sku": None if x.sku is None else _text(x.sku),
            "quantity": q if -_SMALL_INT < q < _SMALL_INT else mask_value_plain(q),
            "outcome": _text(x.outcome),
            "amount": None if x.amount is None else mask_text(str(x.amount)),
            "rule_ids": [_text(r) for r in x.rule_ids]}


def _action_masked(x: Any) -> dict[str, Any]:
    if type(x) is not _models().Action:
        raise _Unusual
    mask = _rule_mask(x.rule_id)
    return {"type": _text(x.type, mask), "amount": mask_text(str(x.amount)),
            "due": _text(x.due.isoformat()) if x.due else None,
            "citation": _text(x.citation, mask), "rule_id": mask(x.rule_id)}


def _layer_masked(x: Any) -> dict[str, Any]:
    if type(x) is not _models().Layer:
        raise _Unusual
    return {"id": _text(x.id, mask_rule_text), "version": _text(x.version, mask_rule_text),
            "digest": _text(x.digest, mask_rule_text)}


def _walk_rule_part(value: Any) -> Any:
    """``_walk_free(value, mask_value_plain)`` for a snapshot's rule part (a list of reasons,
    the ruleset), with the members that are the ruleset's text through ``_walk_rule_text``."""
    kind = type(value)
    rule_id = value.get("rule_id", "") if kind is dict else ""
    if kind is dict and (type(rule_id) is not str or rule_id.startswith(_ENGINE_OWN)):
        # The engine's own reasons may name what the request sent (a client id, an `as_of`):
        # masked afresh every time, like the request, never remembered. So is a part whose
        # rule id is not text, which no ruleset writes (``str`` of an integer too long to
        # print raised here, where the plain masking gives a value).
        return _walk_free(value, mask_value_plain)
    if kind is dict:
        return {kept: (_walk_rule_text(v) if type(k) is str and k in _RULE_TEXT_KEYS
                       else _walk_free(v, mask_value_plain))
                for k, v in value.items()
                if (kept := _kept_key(k if type(k) is str else str(k))) is not None}
    if kind is list or kind is tuple:
        return [_walk_rule_part(v) for v in value]
    return _walk_free(value, mask_value_plain)


def _walk_rule_text(value: Any) -> Any:
    """``_walk_free(value, mask_value_plain)`` with text through ``mask_rule_text``."""
    kind = type(value)
    if kind is str:
        return mask_rule_text(value)
    if kind is dict:
        return {kept: _walk_rule_text(v) for k, v in value.items()
                if (kept := _kept_key(k if type(k) is str else str(k))) is not None}
    if kind is list or kind is tuple:
        return [_walk_rule_text(v) for v in value]
    return _walk_free(value, mask_value_plain)
