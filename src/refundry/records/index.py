"""The history index's rows as the chain makes them: pure functions of the recorded events.

``history.History.sync`` writes these rows into ``history_index``; ``verify`` rebuilds them from
the chain and compares (``expected_rows``, ``index_problem``), so a deleted or edited row, which
would make a customer's history facts undercount, cannot go unnoticed. Nothing here reads or
writes a database.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs
import msgspec

from refundry.records.masking import pseudonym

INDEXED_EVENTS = ("evaluated", "approved", "denied", "processed", "refunded", "dispute_resolved")
NAMES_KEPT = 100_000  # pseudonyms a Rebuild remembers (about 20 MB at most)
REBUILD = "; drop history_index and history_meta to rebuild them from the chain"


def parse_watermark(value: object) -> int:
    """The history index's watermark as ``history_meta`` stores it (ASCII digits: ``int``
    would also take " 7", "+7", "7_0" and "²"); ``ValueError`` with a one-line message when
    it was corrupted."""
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        seen = text[:40].encode("unicode_escape").decode("ascii")  # one line, always
        raise ValueError(f"the history index's watermark `{seen}` is not an event number"
                         f"{REBUILD}")
    return int(text)

COLUMNS = ("request_id", "seq", "client_id", "requested_at", "customer_key", "email_key",
           "address_key", "card_key", "transaction_key", "amount", "currency",
           "transaction_amount", "decided_amount", "outcome", "status")

_STATUS = {"approve": "approved", "deny": "denied", "manual_review": "manual_review"}


_DECODER = msgspec.json.Decoder()


def load_json(text: str | bytes) -> Any:
    """A stored event body, decoded (``ValueError`` if it is not JSON): msgspec reads one in
    half the time ``json.loads`` takes, and verify and the index read every body."""
    return _DECODER.decode(text)


def utc_text(when: dt.datetime) -> str:
    """An instant as the sortable text the index keeps (UTC, seconds)."""
    utc = when.astimezone(dt.UTC)
    if utc.year < 1000:  # strftime writes such a year unpadded: the text kept so far
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    # The same text in a quarter of strftime's time: isoformat without `timespec` (a keyword
    # argument costs as much again as the formatting) and the seconds cut from it.
    return utc.isoformat()[:19] + "Z"


@attrs.frozen
class Keys:
    """The pseudonymous attributes of one request, as the index keeps them."""

    request_id: str
    client_id: str
    requested_at: str
    customer: str
    email: str | None
    address: str | None
    card: str | None
    transaction: str
    amount: Decimal
    currency: str
    transaction_amount: Decimal


# The top-level request fields ``keys_of`` reads (whole: masking works by path within them).
KEY_FIELDS = ("request_id", "client_id", "requested_at", "customer", "transaction", "amount",
              "currency")


def keys_of(masked: Mapping[str, Any], salt: bytes,
            name: Callable[[str, bytes, str], str] = pseudonym) -> Keys:
    """Keys from a request in its masked form (what ``events`` keep, or ``mask_request`` of a
    new request): email and address are already pseudonyms there; the rest is hashed here
    (by ``name``: ``pseudonym``, or one that remembers)."""
    return Keys(*_key_values(masked, salt, name))


def _key_values(masked: Mapping[str, Any], salt: bytes,
                name: Callable[[str, bytes, str], str]) -> tuple[Any, ...]:
    """``keys_of``'s fields in order, without the ``Keys``: an index row is made of them
    (verify rebuilds one for every case)."""
    customer = masked.get("customer") or {}
    txn = masked.get("transaction") or {}
    method = txn.get("payment_method") or {}
    card = None
    if method.get("last4"):
        card = name(f"{method.get('type', '')}:{method['last4']}", salt, "card-")
    requested = dt.datetime.fromisoformat(str(masked["requested_at"]))
    return (str(masked["request_id"]), str(masked["client_id"]), utc_text(requested),
            name(str(customer.get("id", "")), salt, "customer-"),
            customer.get("email") or None, customer.get("address") or None,
            card, name(str(txn.get("id", "")), salt, "txn-"),
            Decimal(str(masked["amount"])), str(masked["currency"]),
            Decimal(str(txn.get("amount", "0"))))


def index_row(seq: int, body: Mapping[str, Any], salt: bytes,
              name: Callable[[str, bytes, str], str] = pseudonym) -> tuple[Any, ...] | None:
    request = body.get("request") or {}
    decision = body.get("decision") or {}
    try:
        rid, client, requested, customer, email, address, card, txn, amount, currency, \
            txn_amount = _key_values(request, salt, name)
    except (KeyError, ValueError, ArithmeticError):
        return None  # not a request the index can key; the chain still has it
    outcome = str(decision.get("outcome", "manual_review"))
    return (rid, seq, client, requested, customer, email, address, card, txn, str(amount),
            currency, str(txn_amount), str(decision.get("amount", "0")), outcome,
            _STATUS.get(outcome, "manual_review"))


def status_update(type_: str, body: Mapping[str, Any]) -> tuple[str, str | None, str] | None:
    details = body.get("details") or {}
    if type_ == "dispute_resolved":
        if details.get("resolution") == "overturned":
            return "approved", str(details.get("amount")), str(body["request_id"])
        return None  # upheld: the status before the dispute, which the index still holds
    return type_, None, str(body["request_id"])


class Pseudonyms:
    """``pseudonym(value, salt, prefix)``, remembered: customers, cards and orders come back,
    and each pseudonym is an HMAC. Only what ``keys_of`` names (ids and last fours as a
    record keeps them masked), bounded by ``NAMES_KEPT``; safe to share between threads."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def __call__(self, value: str, salt: bytes, prefix: str) -> str:
        key = (prefix, value)
        found = self._made.get(key)
        if found is None:
            found = pseudonym(value, salt, prefix)
            self._keep(key, found)
        return found

    def learn(self, made: Iterable[tuple[str, str, str]]) -> None:
        """Remember (prefix, value, pseudonym) triples another process made under the same
        salt (``history.key_request``), so this one does not make them again."""
        for prefix, value, name in made:
            if (prefix, value) not in self._made:
                self._keep((prefix, value), name)

    def _keep(self, key: tuple[str, str], name: str) -> None:
        with self._lock:
            if len(self._made) >= NAMES_KEPT:
                self._made.clear()
            self._made[key] = name


class Rebuild:
    """The index rows that events in chain order make, as ``sync`` writes them, one event at
    a time (verify feeds it the bodies its own pass decoded): ``evaluated`` opens a row, later
    events set its status and amount."""

    def __init__(self, salt: bytes, names: Pseudonyms | None = None) -> None:
        self.salt = salt
        # Tuples: the collector stops walking a tuple of text, not a list (a row per case
        # lives until the rebuild ends).
        self.rows: dict[str, tuple[Any, ...]] = {}
        # Customers, cards and orders come back (that is what the index is for): each
        # pseudonym is an HMAC, worth remembering for the length of one rebuild, or of
        # several under the same salt (``names``: a verify worker's, over all its ranges).
        self._name = Pseudonyms() if names is None else names

    def add(self, seq: int, type_: str, body: Mapping[str, Any]) -> None:
        # ``apply(type_, read(...))`` written out: this runs for most events of a verify.
        if type_ == "evaluated":
            row = index_row(seq, body, self.salt, self._name)
            if row is not None:
                self.rows.setdefault(str(row[0]), row)
        elif (update := status_update(type_, body)) is not None and update[2] in self.rows:
            row = self.rows[update[2]]
            amount = row[12] if update[1] is None else update[1]
            self.rows[update[2]] = (*row[:12], amount, row[13], update[0])

    def read(self, seq: int, type_: str, body: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """What one event brings to the index, read from its body alone (a worker process of
        verify reads it; ``apply`` then places it, in chain order): ``evaluated``'s row, a
        later event's status update, or None."""
        if type_ == "evaluated":
            return index_row(seq, body, self.salt, self._name)
        return status_update(type_, body)

    def apply(self, type_: str, item: tuple[Any, ...] | None) -> None:
        if item is None:
            return
        if type_ == "evaluated":
            self.rows.setdefault(str(item[0]), item)
        elif item[2] in self.rows:
            row = self.rows[item[2]]
            amount = row[12] if item[1] is None else item[1]
            self.rows[item[2]] = (*row[:12], amount, row[13], item[0])


def expected_rows(events: Iterable[tuple[int, str, str]], salt: bytes) -> dict[str, tuple[Any, ...]]:
    """The index rows that ``(seq, type, body)`` events in chain order make (``Rebuild``)."""
    rebuild = Rebuild(salt)
    for seq, type_, body_text in events:
        rebuild.add(int(seq), type_, load_json(body_text))
    return rebuild.rows


def _same(value: Any) -> str | None:
    return None if value is None else str(value)


def _same_row(expected: tuple[Any, ...], got: tuple[Any, ...]) -> bool:
    """Whether each column reads the same as text (``_same``), without a call per column:
    values equal as read are equal as text, unless a number equals one of another type (5 and
    5.0, 1 and True); of the expected values only seq, email and address can be numbers."""
    return expected == tuple(got) and type(expected[1]) is type(got[1]) \
        and type(expected[5]) is type(got[5]) and type(expected[6]) is type(got[6])


# The columns a later event changes (``status_update``): a row made from a range of the chain
# is final but for these, which events of a later range may still set.
_LATER = (12, 14)


def range_rows_settled(expected: Mapping[str, tuple[Any, ...]], actual: Sequence[tuple[Any, ...]]
                       ) -> tuple[bool, dict[str, tuple[Any, ...]]]:
    """The rows a range of the chain made against the table's rows of the same request ids
    (verify's workers): False when a row is missing, twice, or differs in a column no later
    event changes (``index_problem`` then says which); and, for each row that differs only in
    the columns a later event changes, (decided_amount, status) made and in the table."""
    found = {str(r[0]): r for r in actual}
    differ: dict[str, tuple[Any, ...]] = {}
    if not len(found) == len(actual) == len(expected):
        return False, differ
    for rid, row in expected.items():
        got = found.get(rid)
        if got is None:
            return False, differ
        if _same_row(row, got):
            continue
        diff = [i for i, (a, b) in enumerate(zip(row, got, strict=True)) if _same(a) != _same(b)]
        if any(i not in _LATER for i in diff):
            return False, differ
        if diff:
            differ[rid] = (row[12], row[14], got[12], got[14])
    return True, differ


def later_rows_settled(differ: Iterable[tuple[Any, ...]]) -> bool:
    """Whether each (decided_amount, status) made, after the later events, reads as the
    table's (as ``index_problem`` compares them)."""
    return all(_same(amount) == _same(had_amount) and _same(status) == _same(had_status)
               for amount, status, had_amount, had_status in differ)


def index_problem(expected: Mapping[str, tuple[Any, ...]], actual: Iterable[tuple[Any, ...]],
                  watermark: int) -> str:
    """What differs between the rows the chain makes and those in the table ("" if nothing)."""
    found = {str(r[0]): r for r in actual}
    for rid, row in expected.items():
        got = found.pop(rid, None)
        if got is None:
            return (f"history_index has no row for request `{rid}` (event {row[1]}): rows "
                    f"were deleted, so history facts undercount{REBUILD}")
        if _same_row(row, got):
            continue
        diff = [c for c, a, b in zip(COLUMNS, row, got, strict=True) if _same(a) != _same(b)]
        if diff:
            return f"history_index row for request `{rid}` differs from the chain in `{diff[0]}`{REBUILD}"
    if found:
        return (f"history_index has a row for request `{next(iter(found))}` that no event up "
                f"to {watermark} made{REBUILD}")
    return ""
