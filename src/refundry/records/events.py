"""Approval records: an append-only, hash-chained log of events, and the cases derived from it.

Nothing is ever updated in place. Each event is one canonical JSON document (RFC 8785) that
names the hash of the event before it; the event's hash is the SHA-256 of exactly those bytes.
Editing, deleting, swapping or inserting an event breaks the chain at that event; cutting off
the tail is caught by comparing with a checkpoint (the head hash) kept elsewhere.

A case is everything recorded for one ``request_id``; its status is computed from its events by
the state machine below (see docs/records.md), inside the same locked transaction that appends,
so two processes can never both make the same transition.

``RecordStore`` holds all of the logic; ``stores.py`` supplies the SQLite and PostgreSQL
storage it runs on, and ``open_store`` picks one from a path or URL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, TypedDict

import attrs
import msgspec
import rfc8785

from refundry.core.errors import RefundryError
from refundry.core.models import Decision, RefundRequest
from refundry.records.anchors import SignedCheckpoint, Signer, anchor_problem, check_event_signature
from refundry.records.identity import IdentityError, canonical, same_person
from refundry.records.index import (
    COLUMNS,
    INDEXED_EVENTS,
    Pseudonyms,
    Rebuild,
    expected_rows,
    index_problem,
    later_rows_settled,
    load_json,
    parse_watermark,
    range_rows_settled,
)
from refundry.records.masking import (
    DECISION_MONEY,
    DETAILS_MONEY,
    mask_decision,
    mask_parsed,
    mask_text,
    mask_value,
    scrub_id,
)

FORMAT = 1
GENESIS = "sha256:" + "0" * 64
EVENT_TYPES = ("evaluated", "reviewed", "approved", "denied", "processed", "refunded",
               "disputed", "dispute_resolved", "note")
STATUSES = ("manual_review", "approved", "denied", "processed", "refunded", "disputed")
RESOLUTIONS = ("upheld", "overturned")
DEFAULT_FOUR_EYES_ABOVE = Decimal("500")
FOUR_EYES_CODE = "four_eyes"  # a reason with this code demands two approvers at any amount
COUNT_CAP = 1_000  # the review queue counts its waiting cases up to this many
STORE_CASE = ""  # the request_id of store-level events (settings), which belong to no case
MAX_TEXT = 4_000
ANCHOR_EVERY = 1_000  # a signed checkpoint at least every this many events ...
ANCHOR_SECONDS = 60.0  # ... or this many seconds, and when the store is closed

_EVENT_TYPES = frozenset(EVENT_TYPES)
_OUTCOME_STATUS = {"approve": "approved", "deny": "denied", "manual_review": "manual_review"}

# event type -> the statuses it may follow. `evaluated` opens a case; `note` fits anywhere.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "reviewed": ("manual_review",),
    "approved": ("manual_review",),
    "denied": ("manual_review",),
    "processed": ("approved",),
    "refunded": ("processed",),
    "disputed": ("approved", "denied", "processed", "refunded"),
    "dispute_resolved": ("disputed",),
}


class RecordError(RefundryError):
    """A records operation that cannot be done: unknown case, bad input, a broken store."""


class IllegalTransition(RecordError):
    """The event does not fit the case's status or breaks a maker-checker rule. Nothing was
    appended."""


def _hash(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(value: str | None, what: str, *, required: bool = False) -> str:
    value = "" if value is None else str(value)
    if required and not value.strip():
        raise RecordError(f"{what} must not be empty")
    if len(value) > MAX_TEXT:
        raise RecordError(f"{what} is {len(value)} characters long; at most {MAX_TEXT} are kept")
    return value


def _actor(actor: str | None) -> str:
    """The actor as recorded: its RFC 8265 canonical form (``identity.canonical``), so
    ``Bob`` and ``ｂｏｂ`` are recorded, and compared, as ``bob``."""
    actor = _text(actor, "the actor (`--by`)", required=True).strip()
    if len(actor) > 200 or any(ch in actor for ch in "\r\n\t"):
        raise RecordError(f"actor `{actor[:40]}` is not a plain name")
    try:
        return mask_text(canonical(actor))
    except IdentityError as exc:
        raise RecordError(f"actor {exc}") from None


# --- events --------------------------------------------------------------------------------


@attrs.frozen
class Event:
    """One recorded event. ``body`` is the exact canonical JSON the hash was computed over."""

    seq: int
    request_id: str
    type: str
    at: str
    actor: str
    hash: str
    body: dict[str, Any] = attrs.field(eq=False, repr=False)

    @property
    def prev(self) -> str:
        return str(self.body["prev"])

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.body.get("decision")

    @property
    def details(self) -> dict[str, Any]:
        return dict(self.body.get("details") or {})

    def to_dict(self) -> dict[str, Any]:
        return {**self.body, "hash": self.hash}

    @classmethod
    def from_row(cls, seq: int, body_text: str, hash_: str) -> Event:
        try:
            body = load_json(body_text)
            return cls(seq=seq, request_id=body["request_id"], type=body["type"], at=body["at"],
                       actor=body["actor"], hash=hash_, body=body)
        except (ValueError, KeyError, TypeError):
            # Only a damaged store gets here; say so rather than fail with a traceback.
            raise RecordError(f"event {seq} cannot be read: the store is damaged; run "
                              "`refundry records verify`") from None


class _Replayed(NamedTuple):
    """An event as verify's walk hands it to the state machine: what the state machine reads
    of an ``Event`` (not its hash), in a tuple, made for every event of a store at a fifth of
    the cost of a frozen ``Event``."""

    seq: int
    request_id: str
    type: str
    at: str
    actor: str
    body: Any

    @property
    def details(self) -> dict[str, Any]:
        return dict(self.body.get("details") or {})


@attrs.frozen
class Draft:
    """An event before it has a place in the chain."""

    request_id: str
    type: str
    actor: str
    decision: dict[str, Any] | None
    request: dict[str, Any] | None
    details: dict[str, Any] = attrs.Factory(dict)
    texts: tuple[tuple[str, str, str, str], ...] = ()  # (digest, id, version, text) to keep
    # Canonical bytes of members serialised before the writers' lock was taken: the decision
    # and request are most of an event, and the lock is held by one writer at a time.
    encoded: dict[str, bytes] = attrs.Factory(dict)
    key: str | None = None  # the appender's signing key, when the store has one


@attrs.frozen
class Prepared:
    """A decision made ready to record (``RecordStore.prepare``): its ``evaluated`` event
    without a place in the chain, and the request id as submitted (``events`` takes it)."""

    submitted_id: str
    draft: Draft


@attrs.frozen
class MaskedRequest:
    """Some fields of a parsed request as an event keeps them under a store's ``salt``
    (``masked``: ``mask_parsed(request, salt, fields)``), made where a request is parsed
    before its enrichers (``refundry run --db``: the fields its history lookup keys): its
    event masks only the other fields, and those the enrichers replaced (``updated``)."""

    request: RefundRequest
    salt: bytes
    masked: dict[str, Any]

    def updated(self, request: RefundRequest) -> dict[str, Any]:
        """``mask_parsed(request, salt)``, for any request: a field of ``masked`` that holds
        the very object it holds in ``self.request`` is taken from there, the others masked.
        Masking is field by field (``mask_parsed`` of some fields gives them as the whole
        request's masking does) and masks a function of the field's value alone, which
        nothing changes in place (a parsed request is frozen; ``replace_fields`` keeps the
        objects of the fields it leaves)."""
        names, values = _request_fields()
        kept = self.masked
        same = {n for n, v, w in zip(names, values(request), values(self.request), strict=True)
                if v is w and n in kept}
        fresh = mask_parsed(request, self.salt, [n for n in names if n not in same])
        # In field order, as ``mask_parsed`` (and ``request_to_dict``) orders them.
        return {n: kept[n] if n in same else fresh[n] for n in names if n in same or n in fresh}


@functools.cache
def _request_fields() -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """A request's field names in order, and a getter of all their values in one call."""
    import operator

    names = tuple(f.name for f in attrs.fields(RefundRequest))
    return names, operator.attrgetter(*names)


def _same_submission(case: Case, draft: Draft) -> Case:
    """``case`` when it holds the request ``draft`` would open it with; refused otherwise."""
    if case.request != draft.request:
        raise RecordError(f"request `{draft.request_id}` is already recorded with different "
                          "content; a new request needs a new request_id")
    return case


_JSON = msgspec.json.Encoder(order="sorted")
_FOUR_BYTE_UTF8 = re.compile(rb"[\xf0-\xf4]")


def canonical_json(value: Any) -> bytes:
    """``rfc8785.dumps(value)``, byte for byte, for what an event holds: JSON made by
    ``masking.mask_value`` and the store (text, booleans, null, integers up to 2**53, objects,
    arrays; no floats). msgspec writes that in C with RFC 8785's escaping; its key order is by
    code point, RFC 8785's by UTF-16 unit, and the two differ only for characters beyond
    U+FFFF (4-byte UTF-8), so such a document is left to ``rfc8785`` itself."""
    raw = _JSON.encode(value)
    if raw.isascii():  # most events: one C pass, cheaper than the search below
        return raw
    return rfc8785.dumps(_decoded(value)) if _FOUR_BYTE_UTF8.search(raw) else raw


def _decoded(value: Any) -> Any:
    """``value`` with pre-encoded members (``msgspec.Raw``) read back, for ``rfc8785``."""
    if isinstance(value, msgspec.Raw):
        return json.loads(bytes(value))
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    return value


def encode(decision: dict[str, Any] | None, request: dict[str, Any] | None) -> dict[str, bytes]:
    return {"decision": canonical_json(decision), "request": canonical_json(request)}


def outcome_of(type_: str, body: Mapping[str, Any]) -> str | None:
    """The ``outcome`` column of an event: its decision's outcome if it is ``evaluated``.

    The review-queue index reads it instead of parsing each body in the database (on
    PostgreSQL a guarded JSON read per inserted event); NULL (an event appended by an older
    version) falls back to that read, and verify checks the column against the body."""
    decision = body.get("decision") if type_ == "evaluated" else None
    outcome = decision.get("outcome") if isinstance(decision, dict) else None
    return outcome if isinstance(outcome, str) else None


def seal(draft: Draft, seq: int, prev: str, at: dt.datetime) -> tuple[str, str, dict[str, Any]]:
    """The canonical body text and hash of ``draft`` placed at ``seq`` after ``prev``.

    Members serialised before the lock (``draft.encoded``) are spliced in as they are; the
    result is exactly ``rfc8785.dumps(body)``.
    """
    ruleset = (draft.decision or {}).get("ruleset")
    body = {
        "format": FORMAT, "seq": seq, "prev": prev, "type": draft.type,
        "request_id": draft.request_id,
        "at": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "actor": draft.actor,
        "ruleset": ({k: ruleset[k] for k in ("id", "version", "digest")} if ruleset else None),
        "decision": draft.decision, "request": draft.request,
        # Masked once more here: a justification or note typed by a person may hold a card
        # number. Amounts (a threshold, a resolution's amount) are money, never masked.
        "details": mask_value(draft.details, DETAILS_MONEY),
    }
    if draft.key is not None:  # who appended, bound into the hash (the signature is kept apart)
        body["key"] = draft.key
    raw = canonical_json({k: msgspec.Raw(draft.encoded[k]) if k in draft.encoded else v
                          for k, v in body.items()})
    return raw.decode("utf-8"), _hash(raw), body


def prepare_event(request: Mapping[str, Any] | RefundRequest, decision: Decision, salt: bytes, *,
                  actor: str, texts: tuple[tuple[str, str, str, str], ...],
                  before: MaskedRequest | None = None) -> Prepared:
    """``RecordStore.prepare`` with a store's ``salt``, where there is no store (a worker
    process of ``refundry run --db``, or its one process). ``actor``: as recorded
    (``RecordStore.recorded_actor``); ``texts``: the ruleset texts to keep (``()`` leaves them
    to ``record``, which looks them up in its engine); ``before``: fields of the request it
    was made from (``replace_fields``) masked under ``salt`` already, reused where they are
    its own (``MaskedRequest.updated``: the same event either way)."""
    from refundry.core.request import parse_request, request_to_dict

    try:
        parsed = parse_request(request)
        # The parsed request masked as its dump would be, without making the dump.
        masked = before.updated(parsed) if before is not None and before.salt == salt \
            else mask_parsed(parsed, salt)
    except RefundryError:
        raise RecordError("an invalid request is not recorded; fix it and evaluate again") from None
    request_id = masked["request_id"]
    snapshot = mask_decision(decision)
    snapshot["request_id"] = request_id
    submitted = request_to_dict(parsed, ("request_id",))["request_id"]
    if decision.request_id != submitted:
        raise RecordError(f"the decision is for request `{mask_text(decision.request_id)}`, "
                          f"not `{request_id}`")
    draft = Draft(request_id, "evaluated", actor, snapshot, masked, {}, texts,
                  encode(snapshot, masked))
    return Prepared(submitted, draft)


def with_texts(prepared: Prepared, decision: Decision, engine: Any,
               found: dict[str, tuple[tuple[str, str, str, str], ...]] | None = None) -> Prepared:
    """``prepared`` with the ruleset texts of ``decision`` from ``engine`` (the one that made
    it), when it was made where they were not at hand (``prepare_event`` with ``texts=()``):
    a case is replayable only if the store keeps the exact text that decided it. ``found``:
    the texts already found in ``engine``, by ruleset digest (which covers every layer's
    text), kept for the next call: a run's decisions come from a handful of rulesets."""
    if prepared.draft.texts:
        return prepared
    digest = decision.ruleset.digest if decision.ruleset is not None else None
    texts = found.get(digest) if found is not None and digest is not None else None
    if texts is None:
        texts = _texts_of(decision, engine)
        if found is not None and digest is not None:
            found[digest] = texts
    return Prepared(prepared.submitted_id, attrs.evolve(prepared.draft, texts=texts))


# --- the state machine ---------------------------------------------------------------------


@attrs.frozen
class Case:
    """Everything recorded for one request, and what it adds up to."""

    request_id: str
    status: str
    events: tuple[Event, ...]
    submitter: str
    decision: dict[str, Any]
    request: dict[str, Any]
    approvals: tuple[str, ...]  # who has approved in the current review
    required_approvals: int
    dispute: dict[str, Any] | None  # the latest dispute and its resolution, if any

    @property
    def amount(self) -> str:
        """The amount the case stands at now: a dispute overturned with an amount replaces the
        decision's (a denial decided 0.00; the overturn pays what it says)."""
        dispute = self.dispute or {}
        if dispute.get("resolution") == "overturned" and dispute.get("amount") is not None:
            return str(dispute["amount"])
        return str(self.decision.get("amount", ""))

    def summary(self) -> dict[str, Any]:
        last = self.events[-1]
        return {"request_id": self.request_id, "status": self.status,
                "outcome": self.decision.get("outcome"), "amount": self.amount,
                "decided_amount": self.decision.get("amount"),
                "currency": self.decision.get("currency"), "events": len(self.events),
                "submitted_by": self.submitter, "updated_at": last.at,
                "approvals": list(self.approvals), "required_approvals": self.required_approvals}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "dispute": self.dispute,
                "events": [e.to_dict() for e in self.events]}


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _parse_amount(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise RecordError(f"`{str(value)[:40]}` is not an amount") from None
    if not amount.is_finite() or amount < 0:
        raise RecordError(f"`{str(value)[:40]}` is not an amount")
    return amount


def _threshold(events: Iterable[Event]) -> Decimal:
    value = DEFAULT_FOUR_EYES_ABOVE
    for event in events:
        if event.details.get("setting") == "four_eyes_above":
            value = Decimal(event.details["value"])
    return value


def required_approvals(decision: Mapping[str, Any], request: Mapping[str, Any],
                       four_eyes_above: Decimal) -> int:
    """Two approvers when the money at stake (the larger of the requested and the decided
    amount) is above the store's threshold, or when a rule asked for it by reason code."""
    at_stake = max(_money(decision.get("amount")), _money(request.get("amount")))
    codes = {r.get("code") for r in decision.get("reasons") or ()}
    return 2 if at_stake > four_eyes_above or FOUR_EYES_CODE in codes else 1


@attrs.define
class _Fold:
    """A case's state while its events are read in order (``build_case`` and ``verify``)."""

    request_id: str
    submitter: str
    decision: dict[str, Any]
    request: dict[str, Any]
    status: str
    before_dispute: str
    approvals: list[str] = attrs.Factory(list)
    dispute: dict[str, Any] | None = None

    @classmethod
    def open(cls, first: Event | _Replayed) -> _Fold:
        if first.type != "evaluated":
            raise RecordError(f"event {first.seq}: a case must start with an `evaluated` event")
        decision = first.body.get("decision") or {}
        if decision.get("outcome") not in _OUTCOME_STATUS:
            raise RecordError(f"event {first.seq} has no decision outcome: the store is damaged; "
                              "run `refundry records verify`")
        status = _OUTCOME_STATUS[decision["outcome"]]
        return cls(first.request_id, first.actor, decision, first.body.get("request") or {},
                   status, status)

    def apply(self, event: Event | _Replayed) -> None:
        if event.type in ("reviewed", "approved"):
            self.approvals.append(event.actor)
        if event.type in ("approved", "denied", "processed", "refunded"):
            self.status = event.type
        elif event.type == "disputed":
            self.before_dispute, self.status = self.status, "disputed"
            self.dispute = {"opened_by": event.actor, "opened_at": event.at, **event.details}
        elif event.type == "dispute_resolved":
            details = event.details  # a copy: read here only, not for every event verify replays
            upheld = details.get("resolution") == "upheld"
            self.status = self.before_dispute if upheld else "approved"
            self.dispute = {**(self.dispute or {}), "resolved_by": event.actor,
                            "resolved_at": event.at, "resolution": details.get("resolution"),
                            "explanation": details.get("explanation"),
                            "amount": details.get("amount")}


def build_case(events: Sequence[Event], four_eyes_above: Decimal) -> Case:
    """Fold a case's events, oldest first, into its current state."""
    if not events:
        raise RecordError("a case needs at least one event")
    fold = _Fold.open(events[0])
    for event in events[1:]:
        fold.apply(event)
    return Case(request_id=fold.request_id, status=fold.status, events=tuple(events),
                submitter=fold.submitter, decision=fold.decision, request=fold.request,
                approvals=tuple(fold.approvals),
                required_approvals=required_approvals(fold.decision, fold.request, four_eyes_above),
                dispute=fold.dispute)


def approval_type(approvals: int, required: int) -> str:
    """``approved`` for the approval that completes a review, ``reviewed`` before it."""
    return "approved" if approvals + 1 >= required else "reviewed"


def check_transition(case: Case | _Fold, event_type: str, actor: str) -> None:
    """Raise ``IllegalTransition`` unless ``actor`` may append ``event_type`` to ``case``."""
    if event_type == "note":
        return
    allowed = TRANSITIONS.get(event_type)
    if allowed is None:
        raise IllegalTransition(f"`{event_type}` cannot be appended to an existing case")
    if case.status not in allowed:
        raise IllegalTransition(
            f"request `{case.request_id}` is {case.status}; `{event_type}` needs "
            f"{' or '.join(allowed)}")
    if event_type in ("reviewed", "approved", "denied", "dispute_resolved") \
            and same_person(actor, case.submitter):
        raise IllegalTransition(
            f"`{actor}` submitted request `{case.request_id}` and cannot review or resolve it")
    if event_type in ("reviewed", "approved") and any(same_person(actor, a)
                                                       for a in case.approvals):
        raise IllegalTransition(
            f"`{actor}` already approved request `{case.request_id}`; a second, different "
            "reviewer must approve")


@attrs.frozen
class QueuePage:
    """A page of the manual-review queue and the keyset cursors around it."""

    cases: tuple[Case, ...]
    total: int
    capped: bool  # more than ``total`` cases match
    first: int | None  # position of the page's first case: the cursor for the page before
    last: int | None  # position of its last case: the cursor for the page after
    more: bool  # whether there are more cases past this page in the direction read


# --- verification --------------------------------------------------------------------------


@attrs.frozen
class Verification:
    ok: bool
    count: int
    head: str
    broken_seq: int | None = None
    problem: str = ""
    texts: int = 0
    anchored: bool = False  # an anchor held signed checkpoints of this store, all of which hold
    anchored_count: int = 0  # the events the latest signed checkpoint covers

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "head": self.head,
                "broken_seq": self.broken_seq, "problem": self.problem,
                "ruleset_texts": self.texts, "anchored": self.anchored,
                "anchored_count": self.anchored_count}


@attrs.frozen
class Checkpoint:
    count: int
    head: str

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "head": self.head}


@attrs.frozen
class Replay:
    request_id: str
    same: bool
    original: dict[str, Any]
    replayed: dict[str, Any]
    differences: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "same": self.same,
                "differences": list(self.differences), "original": self.original,
                "replayed": self.replayed}


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


class _Anchoring:
    """When to write a signed checkpoint: every ``every`` events or ``seconds`` seconds
    (whichever comes first), checked after each commit, and at close."""

    def __init__(self, anchor: Any, signer: Signer | None, every: int, seconds: float) -> None:
        if anchor is not None and signer is None:
            raise RecordError("an anchor needs a signing key to sign its checkpoints")
        self.anchor, self.signer, self.every, self.seconds = anchor, signer, every, seconds
        self._count: int | None = None  # what the anchor holds, read on first use
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def after(self, count: int, head: str, genesis: str, *, force: bool = False) -> SignedCheckpoint | None:
        if self.anchor is None or self.signer is None:
            return None
        with self._lock:
            if self._count is None:
                self._count = max((c.count for c in self.anchor.checkpoints()), default=0)
            due = count - self._count >= self.every or time.monotonic() - self._last >= self.seconds
            if count <= self._count or not (due or force):
                return None
            at = _now().isoformat().replace("+00:00", "Z")
            cp = SignedCheckpoint(count, head, genesis, at, self.signer.key_id).signed(self.signer)
            self.anchor.write(cp)
            self._count, self._last = count, time.monotonic()
            return cp

    def due_at_close(self) -> bool:
        return self.anchor is not None and self._count is not None

    def close(self) -> None:
        if self.anchor is not None:
            self.anchor.close()


# --- the store -----------------------------------------------------------------------------


Row = tuple[int, str, str, str, str, str, str]  # seq, request_id, type, at, actor, body, hash
EVENT_COLUMNS = "seq, request_id, type, at, actor, body, hash"  # a Row's columns
# A row as appended: a Row and the ``outcome`` column (``outcome_of``), which a store made
# before that column (``RecordStore.outcome_column`` False) is written without.
NewRow = tuple[int, str, str, str, str, str, str, str | None]
# A row as verify's walk reads it: the body as stored text, or its UTF-8 bytes where a backend
# hands those over without decoding them (SQLite: the hash is over those bytes); then the
# ``outcome`` column, read with the row so that its check costs no second read (None: NULL, or
# a store without the column, ``chain_columns``).
ChainRow = tuple[int, str, str, str, str, str | bytes, str, str | None]


def chain_columns(outcome_column: bool) -> str:
    """The select list of a ``ChainRow``: a store made before the ``outcome`` column, opened
    read-only, has none to select (and is never upgraded by a reader), so NULL stands in."""
    return f"{EVENT_COLUMNS}, {'outcome' if outcome_column else 'NULL'}"


MANY_KEYS = 500  # request ids per query of record_many (SQLite allows 32,766 parameters)
PAGE = 2_000  # rows read per query: verify streams a store of any size in bounded memory


class Transaction(Protocol):
    """What ``RecordStore.transaction()`` yields: SQL with ``?`` placeholders on any backend;
    a failing statement raises ``RecordError`` (and the transaction is rolled back)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run one statement; the rows it returns (none for a write)."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per row of arguments."""

    def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        """Run one statement whose rows are not read: in a ``batch(pipelined=True)`` it is
        sent without waiting for the server's answer."""


class RecordStore:
    """The records API, over a storage backend that subclasses implement.

    A subclass provides ``_transaction`` (serialised against every other writer, in any
    process), ``_rows`` and the few queries below. Instances are safe to share between threads.

    Derived data kept beside the chain (the history index) uses the public ``query``,
    ``transaction`` and ``batch``; their SQL names parameters ``?`` on every backend, and
    ``dialect`` says which backend it runs on where the SQL itself must differ.
    """

    url: str
    dialect = "sqlite"  # or "postgresql"
    # The events table has the ``outcome`` column (a store made or opened for writing by this
    # version; set by the backend when it opens the store).
    outcome_column = False

    def __init__(self, *, clock: Callable[[], dt.datetime] | None = None, anchor: Any = None,
                 signer: Signer | None = None, anchor_every: int = ANCHOR_EVERY,
                 anchor_seconds: float = ANCHOR_SECONDS) -> None:
        self._clock = clock or _now
        self._known_texts: set[str] = set()
        self._salt: bytes | None = None
        self._batch_owner: int | None = None  # the thread whose batch holds the transaction
        self._anchoring = _Anchoring(anchor, signer, anchor_every, anchor_seconds)
        self._signer = signer
        # thread -> the newest head its open batch appended, anchored once the batch commits
        self._pending: dict[int, tuple[int, str]] = {}
        # While a batch holds the writers' lock no one else can append, so the head and the
        # two-approver threshold it last saw are still true: kept here, an append in a batch
        # reads only its own case. Set after an append succeeds, cleared when the batch ends.
        self._held: tuple[int, str, Decimal] | None = None
        self._actors: dict[str, str] = {}  # actor as given -> as recorded (``_actor``)
        self._opening_guard: bool | None = None  # the store refuses a case's second opening

    @contextlib.contextmanager
    def batch(self, *, pipelined: bool = False) -> Iterator[None]:
        """Appends inside share one transaction: one commit (one fsync) for many events.

        Each append is still all or nothing on its own (a savepoint), so a refused one leaves
        the others; nothing is durable before the block ends. Other writers wait meanwhile, so
        keep batches short (a few hundred events).

        ``pipelined``: on a server store, statements whose rows are not read (the inserts,
        savepoints, the commit) are sent without waiting for their answers, so the batch
        holds the writers' lock for the round trips of its reads rather than of every
        statement. The price: a statement's error reaches the caller at the next read or at
        the end, not where it was made, so no savepoint inside can catch it; any error fails
        the whole batch (nothing is written), which the caller must be ready to repeat.
        """
        known = set(self._known_texts)
        try:
            with self._transaction(pipelined=pipelined):
                self._batch_owner, self._held = threading.get_ident(), None
                try:
                    yield
                finally:
                    self._batch_owner, self._held = None, None
        except BaseException:
            self._known_texts = known  # texts written in a batch that did not commit are not kept
            self._pending.pop(threading.get_ident(), None)
            raise
        pending = self._pending.pop(threading.get_ident(), None)
        if pending is not None:
            self._committed(*pending)

    def _committed(self, count: int, head: str) -> None:
        """After a commit: anchor a signed checkpoint when one is due. Only ever a committed
        head: a rolled-back batch would leave the anchor naming events that never were."""
        self._anchoring.after(count, head, self.genesis)

    def anchor_now(self) -> SignedCheckpoint | None:
        """Write a signed checkpoint of the current head to the anchor, if one is set and the
        head moved since the last; returns it."""
        count, head = self._head()
        return self._anchoring.after(count, head, self.genesis, force=True) if count else None

    def _close_anchoring(self) -> None:
        with contextlib.suppress(RecordError):
            if self._anchoring.due_at_close():
                self.anchor_now()
        self._anchoring.close()

    def recorded_actor(self, actor: str) -> str:
        """``actor`` as events record it (RFC 8265 canonical, masked); ``RecordError`` if it is
        not a plain name. Kept for the few names a store's appenders use: a batch records every
        decision under one name, and its canonical form costs more than masking."""
        found = self._actors.get(actor)
        if found is None:
            found = _actor(actor)
            if len(self._actors) < 64:
                self._actors[actor] = found
        return found

    def _in_batch(self) -> bool:
        return self._batch_owner == threading.get_ident()

    def batch_head(self) -> int | None:
        """The last event this thread's open batch appended (no other writer can append
        meanwhile), or None: no batch, or it has appended nothing known here yet."""
        held = self._held if self._in_batch() else None
        return None if held is None else held[0]

    # -- the public SQL surface -------------------------------------------------------------

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read (``?`` placeholders), outside any transaction of this thread's
        unless a ``batch`` holds one. A failing query raises ``RecordError``."""
        return self._query(sql, tuple(args))

    def query_all(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """The rows of each of ``reads`` (``(sql, args)``), as ``query`` gives them; a server
        store sends them together and waits once."""
        return [self.query(sql, args) for sql, args in reads]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A read-write transaction serialised against every other writer, in any process;
        inside this thread's ``batch``, a savepoint of the batch's transaction (so it sees,
        and commits with, the batch's uncommitted events). Committed when the block ends,
        rolled back if it raises."""
        with self._transaction() as tx:
            yield tx

    # -- what a backend implements --------------------------------------------------------

    def _transaction(self, *, pipelined: bool = False) -> Any:  # yields a Transaction
        raise NotImplementedError

    def _rows(self, request_id: str | None = None, after: int = 0,
              columns: str = EVENT_COLUMNS) -> Iterator[Any]:
        where = "" if request_id is None else "AND request_id = ?"
        while True:
            args: tuple[Any, ...] = (after,) if request_id is None else (after, request_id)
            page = self.query(f"SELECT {columns} FROM events WHERE seq > ? {where} "
                              f"ORDER BY seq LIMIT {PAGE}", args)
            yield from page
            if len(page) < PAGE:
                return
            after = page[-1][0]

    def _chain_rows(self) -> Iterable[ChainRow]:
        """Every event in seq order, for verify's walk in this process (``_rows``, or a
        backend's cheaper reader)."""
        return self._rows(columns=chain_columns(self.outcome_column))

    @contextlib.contextmanager
    def _range_reader(self) -> Iterator[Callable[[int, int | None], Iterable[ChainRow]] | None]:
        """A picklable function that reads the events ``lo < seq <= hi`` (to the end when
        ``hi`` is None) over a connection of its own, for verify's worker processes; None
        where there is none (verify then reads in this process)."""
        yield None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def _get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _head(self) -> tuple[int, str]:
        rows = self.query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS)

    def _ruleset_texts(self) -> Iterator[tuple[str, str, str, str]]:
        yield from self.query("SELECT digest, ruleset_id, version, text FROM ruleset_texts "
                               "ORDER BY digest")

    def ruleset_versions(self) -> list[tuple[str, str, str]]:
        """(ruleset id, version, digest) of every ruleset text the store keeps."""
        rows = self.query("SELECT ruleset_id, version, digest FROM ruleset_texts "
                           "ORDER BY ruleset_id, version, digest")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def ruleset_text(self, digest: str) -> tuple[str, str, str] | None:
        """(ruleset id, version, text) kept for a layer digest."""
        rows = self.query("SELECT ruleset_id, version, text FROM ruleset_texts WHERE digest = ?",
                          (digest,))
        return tuple(rows[0]) if rows else None

    def close(self) -> None:
        pass

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    @property
    def salt(self) -> bytes:
        """The store's own key for pseudonyms (emails, addresses); made when it was created."""
        if self._salt is None:
            salt = self._get_meta("salt")
            if salt is None:
                raise RecordError(f"`{self.url}` is not a refundry records store")
            self._salt = bytes.fromhex(salt)
        return self._salt

    def events(self, request_id: str | None = None) -> Iterator[Event]:
        """Every event in chain order, or those of one case (``request_id`` as submitted)."""
        key = None if request_id is None else self.case_key(request_id)
        for seq, _rid, _type, _at, _actor, body, hash_ in self._rows(key):
            yield Event.from_row(seq, body, hash_)

    def case_key(self, request_id: str) -> str:
        """The key a case is stored under: the request id itself, or, when it holds a card
        number, its masked form plus a tag keyed with the store's salt (``scrub_id``), so two
        ids that mask alike stay two cases. An id already in that form is its own key."""
        return scrub_id(str(request_id), self.salt) if request_id else STORE_CASE

    def four_eyes_above(self) -> Decimal:
        """The amount above which two reviewers must approve: the latest store setting."""
        return _threshold(self.events(STORE_CASE))

    def case(self, request_id: str) -> Case:
        events = list(self.events(request_id))
        if not events or not request_id:
            raise RecordError(f"no case for request `{request_id}`")
        return build_case(events, self.four_eyes_above())

    def cases(self, status: str | None = None) -> list[Case]:
        grouped: dict[str, list[Event]] = {}
        for event in self.events():
            if event.request_id != STORE_CASE:
                grouped.setdefault(event.request_id, []).append(event)
        threshold = self.four_eyes_above()
        out = [build_case(evs, threshold) for evs in grouped.values()]
        return [c for c in out if status is None or c.status == status]

    def review_queue(self, *, after: int = 0, before: int | None = None, limit: int = 50,
                     client: str | None = None, industry: str | None = None,
                     request_id: str | None = None,
                     clients: Collection[str] | None = None) -> QueuePage:
        """One page of the cases waiting in manual review, oldest first (``after`` a cursor)
        or newest first (``before``), by SQL keyset on the ``evaluated`` event's position, so a
        page costs the same at 100,000 waiting cases as at ten; only the page's cases are
        folded. ``total`` counts the waiting cases that match the filters, up to
        ``COUNT_CAP + 1`` (``capped`` then says there are more). ``clients``: only cases of
        these clients (tenancy, ``records/access.py``), counted too."""
        where, args = self._queue_filter(client, industry, request_id)
        if clients is not None:
            where += (f" AND {self._json_text('request', 'client_id')} IN "
                      f"({', '.join(['?'] * len(clients)) or 'NULL'})")
            args = (*args, *sorted(clients))
        # Counted only up to COUNT_CAP: an exact count reads every waiting case, which at
        # 100,000 of them costs more than the page itself ("1000+" is what a reviewer needs).
        total = int(self.query(f"SELECT COUNT(*) FROM (SELECT 1 FROM events e WHERE {where} "
                                f"LIMIT {COUNT_CAP + 1}) AS capped", args)[0][0])
        if before is not None:
            sql = f"{where} AND e.seq < ? ORDER BY e.seq DESC"
            cursor_args: tuple[Any, ...] = (before,)
        else:
            sql = f"{where} AND e.seq > ? ORDER BY e.seq"
            cursor_args = (after,)
        rows = self.query(f"SELECT e.request_id, e.seq FROM events e WHERE {sql} LIMIT ?",
                           (*args, *cursor_args, limit + 1))
        threshold = self.four_eyes_above()
        cases = tuple(build_case(list(self._case_events(rid)), threshold)
                      for rid, _seq in rows[:limit])
        seqs = [int(seq) for _rid, seq in rows[:limit]]
        more = len(rows) > limit
        return QueuePage(cases=cases, total=min(total, COUNT_CAP),
                         capped=total > COUNT_CAP, first=min(seqs, default=None),
                         last=max(seqs, default=None), more=more)

    def _queue_filter(self, client: str | None, industry: str | None,
                      request_id: str | None) -> tuple[str, tuple[Any, ...]]:
        where = ["e.type = 'evaluated'", f"{self._queue_outcome()} = 'manual_review'",
                 "NOT EXISTS (SELECT 1 FROM events d WHERE d.request_id = e.request_id "
                 "AND d.type IN ('approved', 'denied'))"]
        args: list[Any] = []
        for value, path in ((client, ("request", "client_id")),
                            (industry, ("request", "industry"))):
            if value:
                where.append(f"{self._json_text(*path)} = ?")
                args.append(value)
        if request_id:
            where.append("e.request_id = ?")
            args.append(self.case_key(request_id))
        return " AND ".join(where), tuple(args)

    def case_page(self, *, after: int = 0, limit: int = 100, status: str | None = None,
                  clients: Collection[str] | None = None) -> list[tuple[int, Case]]:
        """Up to ``limit`` cases opened after position ``after`` (the ``seq`` of a case's
        ``evaluated`` event: the cursor), oldest first, with their positions; with ``status``,
        only cases in that status. Keyset in SQL, status derived in SQL as the fold derives it
        (the last status event; a dispute resolved as upheld counts as never opened), so a page
        costs the same at any depth and only the page's cases are read. ``clients``: only
        cases of these clients (tenancy, ``records/access.py``)."""
        if status is not None and status not in STATUSES:
            raise RecordError(f"`{str(status)[:40]}` is not a case status")
        # Integers and a known status inlined; client ids (caller text) as parameters.
        where = f"c.type = 'evaluated' AND c.seq > {int(after)}"
        if status is not None:
            outcome = self._json_text("decision", "outcome")
            resolution = self._json_text("details", "resolution")
            where += (
                " AND COALESCE((SELECT CASE WHEN e.type = 'dispute_resolved' THEN 'approved' "
                "ELSE e.type END FROM events e WHERE e.request_id = c.request_id AND "
                "(e.type IN ('approved', 'denied', 'processed', 'refunded') OR (e.type = "
                "'disputed' AND NOT EXISTS (SELECT 1 FROM events r WHERE r.request_id = "
                "e.request_id AND r.type = 'dispute_resolved' AND r.seq > e.seq)) OR (e.type = "
                f"'dispute_resolved' AND {resolution} = 'overturned')) ORDER BY e.seq DESC "
                f"LIMIT 1), (SELECT CASE {outcome} WHEN 'approve' THEN 'approved' WHEN 'deny' "
                f"THEN 'denied' ELSE 'manual_review' END FROM events e WHERE e.seq = c.seq)) "
                f"= '{status}'")
        args: tuple[str, ...] = ()
        if clients is not None:  # client ids are caller text: parameters, never inlined
            where += (" AND EXISTS (SELECT 1 FROM events e WHERE e.seq = c.seq AND "
                      f"{self._json_text('request', 'client_id')} IN "
                      f"({', '.join(['?'] * len(clients)) or 'NULL'}))")
            args = tuple(sorted(clients))
        rows = self.query(f"SELECT c.request_id, c.seq FROM events c WHERE {where} "
                          f"ORDER BY c.seq LIMIT {int(limit)}", args)
        threshold = self.four_eyes_above()
        return [(int(seq), build_case(list(self._case_events(rid)), threshold))
                for rid, seq in rows]

    def _case_events(self, masked_id: str) -> Iterator[Event]:
        for seq, _rid, _type, _at, _actor, body, hash_ in self._rows(masked_id):
            yield Event.from_row(seq, body, hash_)

    def _json_text(self, *path: str) -> str:
        """SQL for the text at ``path`` inside an event body (each backend has its syntax)."""
        raise NotImplementedError

    def _queue_outcome(self) -> str:
        """A decision's outcome as the review-queue index reads it, so the queue's query is
        answered from that index: the column, else (an event appended before it) the body."""
        body = self._json_text("decision", "outcome")
        return f"COALESCE(e.outcome, {body})" if self.outcome_column else body

    # -- appending --------------------------------------------------------------------------

    def _append(self, request_id: str,
                make: Callable[[Case | None, Decimal], Draft | None]) -> tuple[Case | None, Event | None]:
        """Append what ``make`` returns, deciding under the writers' lock. ``make`` sees the
        case as it is now (or None) and raises to refuse; returning None appends nothing.
        Returns the case as it is afterwards, and the new event."""
        with self._transaction() as tx:
            held = self._held if self._in_batch() and request_id != STORE_CASE else None
            if held is not None:
                case_rows = tx.case_rows(request_id)
                seq, prev, threshold = held
            else:
                case_rows, store_rows, (seq, prev) = tx.snapshot(request_id, STORE_CASE)
                prev = prev if seq else self.genesis
                threshold = _threshold(Event.from_row(r[0], r[5], r[6]) for r in store_rows)
            events = [Event.from_row(r[0], r[5], r[6]) for r in case_rows]
            case = build_case(events, threshold) if events and request_id != STORE_CASE else None
            draft = make(case, threshold)
            if draft is None:
                return case, None
            if self._signer is not None:
                draft = attrs.evolve(draft, key=self._signer.key_id)
            at = self._clock()
            body_text, hash_, body = seal(draft, seq + 1, prev, at)
            for digest, rid, version, text in draft.texts:
                if digest not in self._known_texts:
                    tx.put_text(digest, rid, version, text)
            tx.insert((seq + 1, draft.request_id, draft.type, body["at"], draft.actor,
                       body_text, hash_, outcome_of(draft.type, body)))
            if self._signer is not None:
                tx.put_signature(seq + 1, self._signer.key_id, self._signer.sign_event(hash_))
        self._known_texts.update(d for d, *_ in draft.texts)
        if self._in_batch():
            self._pending[threading.get_ident()] = (seq + 1, hash_)
            # A store-level event may be a new threshold: the next append reads it again.
            self._held = None if request_id == STORE_CASE else (seq + 1, hash_, threshold)
        else:
            self._committed(seq + 1, hash_)
        event = Event(seq=seq + 1, request_id=draft.request_id, type=draft.type, at=body["at"],
                      actor=draft.actor, hash=hash_, body=body)
        after = None if request_id == STORE_CASE else build_case([*events, event], threshold)
        return after, event

    def record(self, request: Mapping[str, Any] | RefundRequest, decision: Decision, *,
               engine: Any = None, actor: str, prepared: Prepared | None = None) -> tuple[Case, bool]:
        """Record a decision as the ``evaluated`` event that opens its case.

        ``request_id`` is the idempotency key: the same request again returns the existing case
        and appends nothing (the bool says whether a case was created); a different request
        under a known ``request_id`` is refused. ``engine`` (the one that decided) supplies the
        ruleset texts kept for replay. ``prepared``: ``prepare(request, decision, salt)`` of
        this request and decision with this store's ``salt``, made ahead (in a worker process).
        """
        if prepared is None:
            prepared = self.prepare(request, decision, engine=engine, actor=actor)
        else:
            prepared = with_texts(prepared, decision, engine)
        draft = prepared.draft
        # A retry (a resumed batch, a client resending) is answered without the writers' lock;
        # a batch holds the lock already, and the append below reads the case anyway.
        known = [] if self._in_batch() else list(self.events(prepared.submitted_id))
        if known:
            return _same_submission(build_case(known, self.four_eyes_above()), draft), False
        opened = self._append_opening(draft)
        if opened is not None:
            return opened, True

        def make(case: Case | None, _threshold: Decimal) -> Draft | None:
            if case is not None:  # another writer opened it since the look above
                _same_submission(case, draft)
                return None
            return draft

        case, event = self._append(draft.request_id, make)
        assert case is not None
        return case, event is not None

    def prepare(self, request: Mapping[str, Any] | RefundRequest, decision: Decision, *,
                engine: Any = None, actor: str) -> Prepared:
        """Everything ``record`` does before it needs the writers' lock: the request parsed
        and masked, the decision's snapshot masked, both encoded, the ruleset texts found.
        Raises ``RecordError`` for what ``record`` would refuse before looking at the store."""
        return prepare_event(request, decision, self.salt, actor=self.recorded_actor(actor),
                             texts=_texts_of(decision, engine))

    def record_many(self, items: Sequence[Prepared]) -> list[tuple[Case, bool] | RecordError]:
        """``record`` for many prepared decisions under one hold of the writers' lock, in
        order: their existing cases read in one query and their events inserted in one
        statement, so a server store's lock is held for a few round trips, not a few per
        decision. Each is answered on its own, as ``record`` answers (a refused one is its
        ``RecordError`` in the list); a store that fails raises, and then nothing is written.
        """
        out: list[tuple[Case, bool] | RecordError] = []
        if not items:
            return out
        with self._transaction() as tx:
            seq, prev, threshold, cases = self._head_and_cases(
                tx, sorted({p.draft.request_id for p in items}))
            rows: list[NewRow] = []
            for item in items:
                draft = item.draft
                case = cases.get(draft.request_id)
                if case is not None:
                    try:
                        out.append((_same_submission(case, draft), False))
                    except RecordError as exc:
                        out.append(exc)
                    continue
                if self._signer is not None:
                    draft = attrs.evolve(draft, key=self._signer.key_id)
                body_text, prev, body = seal(draft, seq + 1, prev, self._clock())
                seq += 1
                rows.append((seq, draft.request_id, draft.type, body["at"], draft.actor,
                             body_text, prev, outcome_of(draft.type, body)))
                event = Event(seq=seq, request_id=draft.request_id, type=draft.type,
                              at=body["at"], actor=draft.actor, hash=prev, body=body)
                cases[draft.request_id] = build_case([event], threshold)
                out.append((cases[draft.request_id], True))
            texts = self._write_rows(tx, rows, [i.draft for i in items])
        if rows:
            self._known_texts.update(texts)
            if self._in_batch():
                self._pending[threading.get_ident()] = (seq, prev)
                self._held = (seq, prev, threshold)
            else:
                self._committed(seq, prev)
        return out

    def _head_and_cases(self, tx: Any, keys: Sequence[str]
                        ) -> tuple[int, str, Decimal, dict[str, Case]]:
        """The head, the two-approver threshold and the cases already recorded under any of
        ``keys`` (sorted). The head and threshold come from the batch that holds the lock
        when it has them; otherwise they are read in the same statement as the first
        ``MANY_KEYS`` keys' events (on a server, one round trip under the lock, not two)."""
        events: dict[str, list[Event]] = {}

        def add(rows: Iterable[Row]) -> None:
            for r in rows:
                events.setdefault(r[1], []).append(Event.from_row(int(r[0]), r[5], r[6]))

        held = self._held if self._in_batch() else None
        start = 0
        if held is None:
            start = min(len(keys), MANY_KEYS)
            case_rows, store_rows, (seq, prev) = tx.snapshot_many(keys[:start], STORE_CASE)
            add(case_rows)
            held = (seq, prev if seq else self.genesis,
                    _threshold(Event.from_row(r[0], r[5], r[6]) for r in store_rows))
        for at in range(start, len(keys), MANY_KEYS):
            part = keys[at:at + MANY_KEYS]
            add(tx.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE request_id IN "
                           f"({', '.join('?' * len(part))}) ORDER BY seq", part))
        threshold = held[2]
        return (*held, {key: build_case(found, threshold) for key, found in events.items()})

    def _write_rows(self, tx: Any, rows: list[NewRow], drafts: Iterable[Draft]) -> set[str]:
        """Insert ``rows`` (and their signatures) and the ruleset texts of ``drafts`` not yet
        kept; returns the digests of those texts."""
        if not rows:
            return set()
        texts = {t[0]: t for d in drafts for t in d.texts if t[0] not in self._known_texts}
        tx.executemany("INSERT INTO ruleset_texts VALUES (?, ?, ?, ?) ON CONFLICT (digest) "
                       "DO NOTHING", list(texts.values()))
        tx.executemany(self.insert_event_sql(), [self.event_args(r) for r in rows])
        if self._signer is not None:
            tx.executemany("INSERT INTO signatures VALUES (?, ?, ?)",
                           [(r[0], self._signer.key_id, self._signer.sign_event(r[6]))
                            for r in rows])
        return set(texts)

    def _append_opening(self, draft: Draft) -> Case | None:
        """In a batch that holds the head: append ``draft``, the event that opens a case,
        without first reading the case, since the store's index of one evaluation per case
        refuses it if the case exists (then nothing is written and None is returned, and the
        checked ``_append`` decides). Saves a read per decision; on a server, the round trips."""
        if not self._in_batch() or self._held is None or self._signer is not None:
            return None
        if self._opening_guard is None:  # a store made before the index, or one it was dropped from
            self._opening_guard = self._has_index("events_one_evaluation")
        if not self._opening_guard:
            return None
        seq, prev, threshold = self._held
        body_text, hash_, body = seal(draft, seq + 1, prev, self._clock())
        texts = [t for t in draft.texts if t[0] not in self._known_texts]
        if not self._open_case((seq + 1, draft.request_id, draft.type, body["at"], draft.actor,
                                body_text, hash_, outcome_of(draft.type, body)), texts):
            return None
        self._known_texts.update(d for d, *_ in texts)
        self._pending[threading.get_ident()] = (seq + 1, hash_)
        self._held = (seq + 1, hash_, threshold)
        event = Event(seq=seq + 1, request_id=draft.request_id, type=draft.type, at=body["at"],
                      actor=draft.actor, hash=hash_, body=body)
        return build_case([event], threshold)

    def insert_event_sql(self) -> str:
        """The INSERT of one appended row (a ``NewRow``, or a ``Row`` where the store has no
        ``outcome`` column)."""
        if self.outcome_column:
            return f"INSERT INTO events ({EVENT_COLUMNS}, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        return f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"

    def event_args(self, row: NewRow | Row) -> tuple[Any, ...]:
        """The parameters of ``insert_event_sql`` for ``row`` (a ``Row`` has no outcome: NULL,
        which reads the body)."""
        if not self.outcome_column:
            return row[:7]
        return row if len(row) == 8 else (*row, None)

    def _open_case(self, row: NewRow, texts: Sequence[tuple[str, str, str, str]]) -> bool:
        """Insert a case's opening event and the ruleset texts it needs, all or nothing, in the
        batch's transaction; False (nothing written) if the store refuses it."""
        return False

    def _has_index(self, name: str) -> bool:
        return False

    def _step(self, request_id: str, event_type: str | Callable[[Case], str], actor: str,
              details: Callable[[Case, Decimal], dict[str, Any]] | dict[str, Any],
              texts: tuple[tuple[str, str, str, str], ...] = ()) -> Case:
        """Append one event to an existing case, if the state machine allows it."""
        actor = _actor(actor)
        key = self.case_key(request_id)
        if not key:
            raise RecordError("a request id is needed")
        # A case's decision and request never change after `evaluated`, so they can be
        # encoded from a read before the lock; everything else is decided under it.
        before = self.case(request_id)
        encoded = encode(before.decision, before.request)

        def make(case: Case | None, threshold: Decimal) -> Draft:
            if case is None:
                raise RecordError(f"no case for request `{key}`")
            kind = event_type(case) if callable(event_type) else event_type
            check_transition(case, kind, actor)
            extra = details(case, threshold) if callable(details) else details
            return Draft(key, kind, actor, case.decision, case.request, extra, texts, encoded)

        case, _event = self._append(key, make)
        assert case is not None
        return case

    def review(self, request_id: str, *, actor: str, approve: bool, reason: str | None = None) -> Case:
        """One review step on a case in manual_review. Approving appends ``reviewed`` while more
        approvers are needed and ``approved`` with the last one; denying appends ``denied``."""
        reason = _text(reason, "the justification (`--reason`)", required=not approve)
        if not approve:
            return self._step(request_id, "denied", actor, {"verdict": "deny",
                                                             "justification": reason})

        # Which type the approval becomes depends on the approvals before it, so it is chosen
        # under the writers' lock together with the checks.
        def kind(case: Case) -> str:
            return approval_type(len(case.approvals), case.required_approvals)

        def details(case: Case, threshold: Decimal) -> dict[str, Any]:
            return {"verdict": "approve", "justification": reason,
                    "approval": len(case.approvals) + 1,
                    "required_approvals": case.required_approvals,
                    "four_eyes_above": str(threshold)}

        return self._step(request_id, kind, actor, details)

    def mark(self, request_id: str, event_type: str, *, actor: str, reference: str | None = None) -> Case:
        """``processed`` (the refund was sent to the payment system) or ``refunded`` (the money
        arrived)."""
        if event_type not in ("processed", "refunded"):
            raise RecordError(f"`{event_type}` is not processed or refunded")
        return self._step(request_id, event_type, actor,
                          {"reference": _text(reference, "the reference")})

    def note(self, request_id: str, text: str | None = None, *, actor: str,
             details: Mapping[str, Any] | None = None) -> Case:
        """A note on a case: ``text`` typed by a person, and/or structured ``details`` (what
        a customer was told, for one); either is masked like every note."""
        body = dict(details or {})
        if text is not None or not body:
            body["text"] = _text(text, "the note", required=True)
        return self._step(request_id, "note", actor, body)

    def open_dispute(self, request_id: str, *, actor: str, reason: str, engine: Any,
                     as_of: dt.datetime | None = None) -> Case:
        """Open a dispute on a decided case: re-evaluate it with the rules in force now and
        with the exact rules that decided it, and record both."""
        reason = _text(reason, "the dispute reason (`--reason`)", required=True)
        case = self.case(request_id)
        check_transition(case, "disputed", _actor(actor))  # fail before two evaluations
        when = as_of or self._clock()
        now = engine.evaluate(case.request, as_of=when)
        try:
            original = self.replay(request_id).replayed
        except RecordError as exc:
            original = {"error": str(exc)}
        current = mask_value(now.to_dict(), DECISION_MONEY)
        current["request_id"] = case.request_id
        details = {"reason": reason, "as_of": when.isoformat(), "current": current,
                   "original": original,
                   # as_of always differs (today versus then); the rest is what the rules changed.
                   "changed_since": [k for k in _differences(original, current) if k != "as_of"]
                   if "error" not in original else []}
        return self._step(request_id, "disputed", actor, details, texts=_texts_of(now, engine))

    def resolve_dispute(self, request_id: str, *, actor: str, resolution: str, explanation: str,
                        amount: Decimal | str | None = None) -> Case:
        """``upheld`` keeps the decision; ``overturned`` approves the case (again) for
        ``amount`` (default: the amount of the re-evaluation under today's rules).
        ``explanation`` is what the customer is told."""
        if resolution not in RESOLUTIONS:
            raise RecordError(f"resolution `{resolution}` is not upheld or overturned")
        explanation = _text(explanation, "the explanation (`--explanation`)", required=True)
        given = None if amount is None else _parse_amount(amount)

        def details(case: Case, _t: Decimal) -> dict[str, Any]:
            paid = given
            if resolution == "overturned" and paid is None:
                current = (case.dispute or {}).get("current") or {}
                paid = _money(current.get("amount", case.decision.get("amount")))
            return {"resolution": resolution, "explanation": explanation,
                    "amount": str(paid) if resolution == "overturned" else None}

        return self._step(request_id, "dispute_resolved", actor, details)

    def store_note(self, details: Mapping[str, Any], *, actor: str) -> Event:
        """A note that belongs to no case (an access decision, ``records/access.py``): in the
        chain like any event, so it cannot be removed without verify noticing."""
        actor = _actor(actor)
        _case, event = self._append(STORE_CASE, lambda _c, _t: Draft(
            STORE_CASE, "note", actor, None, None, dict(details)))
        assert event is not None
        return event

    def set_four_eyes_above(self, amount: Decimal | str, *, actor: str) -> Event:
        """Change the two-approver threshold; the change is itself an event in the chain."""
        value = _parse_amount(amount)
        actor = _actor(actor)
        _case, event = self._append(STORE_CASE, lambda _c, _t: Draft(
            STORE_CASE, "note", actor, None, None,
            {"setting": "four_eyes_above", "value": str(value)}))
        assert event is not None
        return event

    # -- audit ------------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The head to keep somewhere else; ``verify(expect_head=...)`` then proves that no event
        up to it was removed, even from the end."""
        return Checkpoint(*self._head())

    @property
    def genesis(self) -> str:
        """What the first event names as ``prev``: a commitment to the store's salt, so a
        changed ``meta.salt`` (which would make every pseudonym and case key new, hiding a
        customer's history) breaks the chain at event 1."""
        return genesis_of(self.salt)

    def _starts(self) -> tuple[str, ...]:
        """The ``prev`` values event 1 may name: the salt commitment, and for a store made
        before salts were chained (format 1) also the all-zero genesis."""
        legacy = self._get_meta("format") == "1"
        return (self.genesis, GENESIS) if legacy else (self.genesis,)

    def verify(self, *, expect_head: str | None = None, anchor: Any = None,
               trusted_keys: Sequence[str] = (), workers: int | None = None) -> Verification:
        """Recompute the chain from the first event and replay the state machine over it;
        check the kept ruleset texts and the derived history index; with an ``anchor``
        (``anchors.open_anchor``), check every signed checkpoint it holds. Reports the first
        thing that is wrong.

        The chain proves that nothing was changed, removed or reordered; only a checkpoint
        kept elsewhere (``expect_head``, or an anchor's signed ones) shows that the end was not
        cut and the whole was not rewritten. Whoever can write to the database can still append
        well-formed events; the state machine check refuses those that break the rules.

        ``workers``: the processes that read and check the events, range by range, the state
        machine of the cases each range opens included, while this one joins the ranges (None:
        one per idle core, up to four, for a store of ``VERIFY_PROCESSES_FROM`` events or more;
        0 or 1: none); the answer is the same.
        """
        if self._get_meta("salt") is None:
            return Verification(False, 0, GENESIS, None, "`meta.salt` is missing: the store's "
                                "pseudonym key was removed")
        signed = anchor.checkpoints() if anchor is not None else []
        mark = self._index_mark()
        walk = _ChainWalk(self._starts(), expect_head,
                          None if mark is None else (Rebuild(self.salt), mark))
        job = _Job(walk.starts, None if mark is None else self.salt, mark or 0,
                   frozenset(c.count for c in signed), expect_head)
        # Paused for the index's check too: its rows are read while every case's state and
        # rebuilt row are alive (96 against 132-160 ms of a 53,750-event verify, measured).
        with _collector_paused():
            result = self._walk(walk, job, self._signatures(), workers)
            if result.ok:
                # The anchor first: a cut or a restored copy explains whatever the others find.
                problem = anchor_problem(signed, walk.count, walk.genesis, walk.hash_at,
                                         trusted_keys)
                texts_problem, texts = self._check_texts(walk.digests)
                problem = (problem or texts_problem or walk.outcome_problem
                           or self._check_history(walk, mark))
            # Freed before the collector resumes: its first pass then would go over every
            # case's state the walk kept, all of it new to the collector (20-30 ms of a
            # 35,417-event verify, measured).
            del walk
        if not result.ok:
            return result
        if problem:
            return attrs.evolve(result, ok=False, problem=problem, texts=texts)
        return attrs.evolve(result, texts=texts, anchored=bool(signed),
                            anchored_count=max((c.count for c in signed), default=0))

    def _walk(self, walk: _ChainWalk, job: _Job, signatures: Mapping[int, tuple[str, str]],
              workers: int | None) -> Verification:
        """The chain walked in worker processes, range by range, or in this one."""
        last = self._head()[0]
        workers = _idle_workers(last) if workers is None else workers
        if workers > 1:
            with self._range_reader() as read:
                pool = None if read is None else _start_workers(
                    workers, read, attrs.evolve(job, thresholds=self._thresholds()), signatures)
                if pool is not None:
                    with contextlib.closing(pool):
                        result = walk.run_ranges(pool.checked(last))
                    if result is not None:
                        return result
                    walk.restart()
        return walk.run(self._chain_rows(), signatures, job)

    def _thresholds(self) -> tuple[tuple[int, Decimal], ...]:
        """The four-eyes thresholds the store's settings name, by seq, read as the state
        machine reads them, to tell each range where it starts (``_Job.thresholds``); one that
        does not read is left out (the walk then finds it, or the join finds the range wrong)."""
        found = []
        for seq, body_text in self.query("SELECT seq, body FROM events WHERE request_id = ? AND "
                                         "type = 'note' ORDER BY seq", (STORE_CASE,)):
            try:
                details = load_json(body_text).get("details")
                if details.get("setting") == "four_eyes_above":
                    found.append((int(seq), _parse_amount(details.get("value"))))
            except (RecordError, ValueError, AttributeError, TypeError):
                continue
        return tuple(found)

    def _check_texts(self, used: set[str]) -> tuple[str, int]:
        """Every kept ruleset text matches its digest, and every one an event used is kept
        (a deleted text would make that decision impossible to replay)."""
        kept = set()
        for digest, rid, version, text in self._ruleset_texts():
            kept.add(digest)
            if _hash(text.encode("utf-8")) != digest:
                return (f"the kept text of ruleset `{rid}` {version} does not match its digest "
                        f"`{digest}`"), len(kept)
        missing = sorted(used - kept)
        if missing:
            return (f"the text of ruleset layer `{missing[0]}` is missing from `ruleset_texts` "
                    f"({len(missing)} missing): decisions that used it cannot be replayed"), len(kept)
        return "", len(kept)

    def _signatures(self) -> dict[int, tuple[str, str]]:
        """seq -> (key, signature) of events appended with a signing key."""
        try:
            rows = self.query("SELECT seq, key, signature FROM signatures")
        except RecordError:  # a store that never had a signing key has no such table
            return {}
        return {int(seq): (key, sig) for seq, key, sig in rows}

    def _index_mark(self) -> int | None:
        """The history index's watermark before the chain is read (None: no index, or one
        that does not read as a number, which ``_check_history`` then meets as before)."""
        try:
            mark = self.query("SELECT value FROM history_meta WHERE key = 'seq'")
            return parse_watermark(mark[0][0]) if mark else 0
        except (RecordError, ValueError):
            return None

    def _check_history(self, walk: _ChainWalk, mark: int | None) -> str:
        """The history index against the rows the chain makes up to its watermark ("" if they
        agree, or if the store has no index). ``walk``: the chain walk up to ``mark``; the rows
        it made (``rebuild``) are read again if the index has moved since (a writer synced it).
        With workers, what they found comparing the rows themselves; when that settles it, the
        table is only counted, else read whole and compared here, which names the problem."""
        try:
            mark_now = self.query("SELECT value FROM history_meta WHERE key = 'seq'")
        except RecordError:  # no index: nothing derived to check
            return ""
        try:
            watermark = parse_watermark(mark_now[0][0]) if mark_now else 0
        except ValueError as exc:
            return str(exc)
        if walk.index_count and watermark == mark and walk.index_agrees(
                int(self.query("SELECT count(*) FROM history_index")[0][0])):
            return ""
        # Workers compared their rows and hand back none: the parent holds only a part.
        rebuild = walk.rebuild if watermark == mark and not walk.index_count else None
        expected = (rebuild.rows if rebuild is not None
                    else expected_rows(self._indexed(watermark), self.salt))
        actual = self.query(f"SELECT {', '.join(COLUMNS)} FROM history_index")
        return index_problem(expected, actual, watermark)

    def _indexed(self, watermark: int) -> Iterator[tuple[int, str, str]]:
        """(seq, type, body) of the events up to ``watermark`` the history index is made of."""
        types = ", ".join(f"'{t}'" for t in INDEXED_EVENTS)
        after = 0
        while rows := self.query(f"SELECT seq, type, body FROM events WHERE seq > ? AND "
                                  f"seq <= ? AND type IN ({types}) ORDER BY seq LIMIT 5000",
                                   (after, watermark)):
            yield from rows
            after = int(rows[-1][0])

    def export(self, out: IO[str]) -> int:
        """Write every event as one JSON line (the hashed body plus its hash)."""
        n = 0
        for seq, _rid, _t, _at, _actor, body, hash_ in self._rows():
            # The hashed body, byte for byte, with its hash added as the last member.
            out.write(f'{body[:-1]},"hash":"{hash_}"}}\n')
            n = seq
        return n

    def replay(self, request_id: str) -> Replay:
        """Re-evaluate a recorded decision from the ruleset texts kept in the store alone."""
        case = self.case(request_id)
        original = case.decision
        with self._recorded_engine(case) as (engine, as_of, ruleset_id):
            again = engine.evaluate(case.request, as_of=as_of, ruleset=ruleset_id)
        replayed = mask_value(again.to_dict(), DECISION_MONEY)
        replayed["request_id"] = case.request_id
        diff = _differences(original, replayed)
        return Replay(case.request_id, not diff, original, replayed, diff)

    def explain(self, request_id: str) -> Any:
        """``--explain`` for a recorded case: every rule of the recorded ruleset versions and
        the values it saw in the recorded (masked) request, as of the decision's time."""
        case = self.case(request_id)
        with self._recorded_engine(case) as (engine, as_of, ruleset_id):
            return engine.explain(case.request, as_of=as_of, ruleset=ruleset_id)

    @contextlib.contextmanager
    def _recorded_engine(self, case: Case) -> Iterator[tuple[Any, dt.datetime | None, str]]:
        """An engine built from the ruleset texts the store kept for ``case``'s decision."""
        original = case.decision
        ruleset = original.get("ruleset")
        if not ruleset:
            raise RecordError(f"the decision for `{case.request_id}` names no ruleset; there is "
                              "nothing to replay")
        with self.kept_engine([layer["digest"] for layer in ruleset.get("layers") or ()]) \
                as engine:
            as_of = dt.datetime.fromisoformat(original["as_of"]) if original.get("as_of") else None
            yield engine, as_of, ruleset["id"]

    @contextlib.contextmanager
    def kept_engine(self, digests: Sequence[str]) -> Iterator[Any]:
        """An engine built from the ruleset texts kept under ``digests`` (baseline first),
        each checked against its digest."""
        from refundry.core.engine import Engine

        with tempfile.TemporaryDirectory(prefix="refundry-replay-") as tmp:
            for i, digest in enumerate(digests):
                kept = self.ruleset_text(digest)
                if kept is None:
                    raise RecordError(f"the store has no text for ruleset `{digest}`")
                rid, version, text = kept
                if _hash(text.encode("utf-8")) != digest:
                    raise RecordError(f"the kept text of ruleset `{rid}` {version} does not "
                                      "match its digest")
                (Path(tmp) / f"{i:02d}-{rid}.yaml").write_text(text, encoding="utf-8")
            yield Engine.from_path(tmp)

    def cases_decided_with(self, digest: str, limit: int) -> list[Case]:
        """Up to ``limit`` cases (oldest first) whose decision used the ruleset text ``digest``."""
        rows = self.query("SELECT e.request_id FROM events e WHERE e.type = 'evaluated' AND "
                           "e.body LIKE ? ORDER BY e.seq LIMIT ?",
                           (f'%"digest":"{digest}"%', limit))
        threshold = self.four_eyes_above()
        return [build_case(list(self._case_events(rid)), threshold) for (rid,) in rows]


def genesis_of(salt: bytes) -> str:
    return _hash(b"refundry-genesis:" + salt)


def _layer_digests(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The ruleset layers an event's decisions used (the case's, and a dispute's re-run)."""
    details = body.get("details")
    current = details.get("current") if isinstance(details, dict) else None
    decision = body.get("decision")
    used = _used_layers(decision.get("ruleset")) if isinstance(decision, dict) else ()
    return used + _used_layers(current.get("ruleset")) if isinstance(current, dict) else used


def _used_layers(ruleset: Any) -> tuple[str, ...]:
    if isinstance(ruleset, msgspec.Raw):  # as verify's view reads it (`_Decision`)
        return _raw_layers(bytes(ruleset))
    return tuple(layer["digest"] for layer in (ruleset or {}).get("layers") or ()
                 if isinstance(layer, dict) and isinstance(layer.get("digest"), str))


@functools.lru_cache(maxsize=256)
def _raw_layers(text: bytes) -> tuple[str, ...]:
    """``_used_layers`` of a ruleset's JSON text: every event of a case, and most cases, name
    the same few rulesets, so each text is decoded once, not once an event."""
    return _used_layers(load_json(text))


# What verify reads of an event body, and nothing else: decoding a body to these typed dicts
# skips the rest of it (the decision's reasons, lines and messages, the request's items and
# facts) in C, about half of a whole decode. Every value is `Any` (a ruleset its JSON text), so
# what is kept is exactly what a whole decode gives; a body of another shape (a tampered one: a
# decision that is a list, say) is decoded whole instead, so every check sees what it saw before.
# Readers: the checks below (`_check_row`, `_Lifecycle`, `_Fold`, `required_approvals`,
# `_layer_digests`, `check_event_signature`) and the history index's (`index_row`, `keys_of`,
# `status_update`); tests/records/test_verify_view.py holds verify on these to verify on whole
# bodies.
class _Code(TypedDict, total=False):
    code: Any


class _Used(TypedDict, total=False):
    # Kept as its JSON text, which `_layer_digests` reads once per distinct text: a case's
    # events all repeat its decision, and most cases name the same rulesets.
    ruleset: msgspec.Raw


class _Decision(_Used, total=False):
    outcome: Any
    amount: Any
    reasons: list[_Code] | None


class _Method(TypedDict, total=False):
    type: Any
    last4: Any


class _Transaction(TypedDict, total=False):
    id: Any
    amount: Any
    payment_method: _Method | None


class _Customer(TypedDict, total=False):
    id: Any
    email: Any
    address: Any


class _Request(TypedDict, total=False):
    request_id: Any
    client_id: Any
    requested_at: Any
    amount: Any
    currency: Any
    customer: _Customer | None
    transaction: _Transaction | None


class _Details(TypedDict, total=False):
    setting: Any
    value: Any
    resolution: Any
    explanation: Any
    amount: Any
    current: _Decision | None


class _Step(TypedDict, total=False):
    seq: Any
    prev: Any
    type: Any
    request_id: Any
    at: Any
    actor: Any
    key: Any
    details: _Details | None


class _Later(_Step, total=False):
    decision: _Used | None  # the case's, repeated: only its layers are read after `evaluated`


class _Body(_Step, total=False):
    decision: _Decision | None
    request: _Request | None  # read only from the `evaluated` event that opens a case


_BODY = msgspec.json.Decoder(_Body)
_STEP = msgspec.json.Decoder(_Later)


def _read_body(text: str | bytes, type_: str) -> Any:
    """An event body as verify reads it (``_Body``; without the request, a copy of the
    case's, for the events after `evaluated`, whose type column ``type_`` must then be the
    body's); ``ValueError`` if it is not JSON."""
    try:
        return (_BODY if type_ == "evaluated" else _STEP).decode(text)
    except ValueError:  # another shape, or not JSON: read whole, as every check expects
        return load_json(text)


# Verify in worker processes: a store of at least VERIFY_PROCESSES_FROM events is cut into ranges
# of VERIFY_RANGE events; each worker reads its range over a connection of its own and checks all
# that needs no event before the range (hashes, decoding, links, columns, signatures, the state
# machine and index rows of the cases the range opens), and the parent joins what they hand back
# in seq order: each range linked to the one before, the events of cases opened in an earlier
# range replayed on those cases' states (``_Checked``). A smaller store stays in one process:
# starting the workers costs more than they save there.
VERIFY_RANGE = 5_000
VERIFY_PROCESSES_FROM = 20_000


@attrs.frozen
class _Job:
    """What every range's checks need besides its rows (the same for all of them)."""

    starts: tuple[str, ...]
    salt: bytes | None  # None: the history index is not rebuilt
    watermark: int
    counts: frozenset[int]  # the event counts signed checkpoints name
    expect_head: str | None
    # (seq, value) of the store's four-eyes settings, read before the walk: what each range
    # assumes its threshold starts at; the parent holds every range to the threshold the
    # chain before it really left (``_ChainWalk._join``), and verifies in one process if not.
    thresholds: tuple[tuple[int, Decimal], ...] = ()

    def threshold_after(self, lo: int) -> Decimal:
        value = DEFAULT_FOUR_EYES_ABOVE
        for seq, setting in self.thresholds:
            if seq <= lo:
                value = setting
        return value


@attrs.define
class _Checked:
    """One range checked by a worker as far as it can be without the events before it: every
    row, and the state machine and index rows of the cases opened in the range; the parent
    joins it to the chain before it (``_ChainWalk._join``) with no work an event but for the
    events of cases opened before the range (``carried``).

    ``first``: the seq of the range's first event (0: none), whose seq and link the parent
    checks (``link``, the ``prev`` its body names in a 1-tuple, None when the body was not
    read that far; ``start``, the genesis event 1 names); ``last``: the seq and hash of the
    last event checked clean. ``opened``: the ``_Fold`` fields of each case opened in the
    range as it leaves it; ``rows``: their index rows, unless the worker held them to the
    table's itself (``index``: whether they agree but for what a later event may set, how many,
    those rows' (decided_amount, status) made and in the table, and the cases opened here that
    made no row). ``carried``: (seq, request_id, type, at, actor, what the state machine reads
    of the body, the index's item, the threshold then, the hash before it or None for the
    chain's so far). ``flaw``: the first problem the range has of itself (seq, count, head or
    None, problem, or an exception one pass would have raised there), after every carried
    event up to it."""

    first: int = 0
    last: tuple[int, str] = (0, "")
    link: tuple[Any] | None = None
    start: str | None = None
    threshold_in: Decimal = DEFAULT_FOUR_EYES_ABOVE
    threshold_out: Decimal = DEFAULT_FOUR_EYES_ABOVE
    opened: dict[str, tuple[Any, ...]] = attrs.Factory(dict)
    packed: bytes | None = None  # ``opened`` as it crossed the pipe (``_packed``), if it could
    rows: dict[str, tuple[Any, ...]] = attrs.Factory(dict)
    index: tuple[bool, int, dict[str, tuple[Any, ...]], list[str]] | None = None
    carried: list[tuple[Any, ...]] = attrs.Factory(list)
    flaw: tuple[int, int, str | None, Any] | None = None
    outcome_problem: str = ""  # the first event's whose `outcome` column is forged, if any
    hash_at: dict[int, str] = attrs.Factory(dict)
    seen_head: bool = False
    digests: set[str] = attrs.Factory(set)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cycle collector off for a walk: every case's state lives to the end of it, and the
    collector walked all of it again and again (8 % of one process's CPU, about 40 % of the
    parent's beside workers, measured). A walk makes no cycles; refcounting frees the rest as
    before. Left off if someone else turned it off."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _named_start(body_text: str | bytes, starts: Sequence[str]) -> str:
    """The genesis event 1 names, if it is one this store may start from."""
    try:
        named = load_json(body_text).get("prev")
    except (ValueError, AttributeError):
        return starts[0]
    return named if named in starts else starts[0]


def _fold_fields(fold: _Fold) -> tuple[Any, ...]:
    """A case's state as it leaves a range, for the parent (``_Fold(*fields)``): the decision
    and request as the state machine keeps them (``_Lifecycle``: what ``required_approvals``
    reads), so the parent replays on what one pass holds; the dispute, which no check reads,
    left out. Cutting the reasons to the four-eyes one here saved 32 bytes of pickle a case
    and cost 1.1 us a case in the worker to save 0.25 in the parent (measured)."""
    return (fold.request_id, fold.submitter, fold.decision, fold.request, fold.status,
            fold.before_dispute, fold.approvals, None)


def _first_row(out: _Checked, row: ChainRow, job: _Job) -> tuple[str, Any]:
    """The range's first event, checked but for its seq and link, which the parent checks."""
    seq, rid, type_, at, actor, body_text, hash_, _outcome = row
    out.first = seq
    if seq == 1:
        out.start = _named_start(body_text, job.starts)
    problem, body = _check_body(seq, type_, body_text, hash_, seq)
    if not problem:
        out.link = (body.get("prev"),)
        problem = _columns_problem(seq, rid, type_, at, actor, body)
    return problem, body


def _check_range_rows(rows: Iterable[ChainRow], job: _Job,
                      signatures: Mapping[int, tuple[str, str]], lo: int = 0,
                      names: Pseudonyms | None = None) -> _Checked:
    """Check one range's rows (in seq order) apart from the chain before it, up to the first
    flaw: each row, and the state machine and index rows of the cases it opens; the events of
    cases opened before it are carried to the parent."""
    rebuild = Rebuild(job.salt, names) if job.salt is not None else None
    lifecycle = _Lifecycle()
    lifecycle.threshold = job.threshold_after(lo)
    out, expected, prev = _Checked(threshold_in=lifecycle.threshold), 0, ""
    for row in rows:
        seq, rid, type_, at, actor, body_text, hash_, outcome = row
        if not expected:
            problem, body = _first_row(out, row, job)
            expected = seq
        else:
            body = _clean_body(row, expected, prev)
            problem = ""
            if body is None:
                problem, body = _check_row(seq, rid, type_, at, actor, body_text, hash_,
                                           expected, prev)
        if problem:
            out.flaw = (min(seq, expected), expected - 1, prev or None, problem)
            break
        flaw = _range_event(out, lifecycle, rebuild, job, signatures.get(seq),
                            _Replayed(seq, rid, type_, at, actor, body), hash_, prev or None)
        if flaw:
            out.flaw = (seq, seq - 1, prev or None, flaw)
            break
        if outcome is not None and not out.outcome_problem:
            out.outcome_problem = _outcome_problem(seq, type_, body, outcome)
        if seq in job.counts:
            out.hash_at[seq] = hash_
        out.seen_head = out.seen_head or hash_ == job.expect_head
        expected, prev = seq + 1, hash_
        out.last = (seq, hash_)
    out.opened = {rid: _fold_fields(fold) for rid, fold in lifecycle.cases.items()}
    out.rows = rebuild.rows if rebuild is not None else {}
    out.threshold_out = lifecycle.threshold
    return out


def _range_event(out: _Checked, lifecycle: _Lifecycle, rebuild: Rebuild | None, job: _Job,
                 signed: tuple[str, str] | None, event: _Replayed, hash_: str,
                 prev: str | None) -> str | Exception:
    """One clean row's event in a worker, in one pass's order: the state machine (or, for a
    case opened before the range, the event carried to the parent), the signature, the
    layers used, the index; its problem, or what it raised, as one pass would meet it."""
    seq, rid, type_, _at, _actor, body = event
    carried = rid != STORE_CASE and type_ != "evaluated" and rid not in lifecycle.cases
    try:
        if carried:
            # Only its details: the state machine reads no more of an event after `evaluated`.
            slim = {"details": body["details"]} if "details" in body else {}
            out.carried.append((seq, rid, type_, event.at, event.actor, slim, None,
                                lifecycle.threshold, prev))
            problem = ""
        else:
            problem = lifecycle.check(event)
        problem = problem or check_event_signature(seq, body, hash_, signed)
        if problem:
            return problem
        out.digests.update(_layer_digests(body))
        if rebuild is not None and seq <= job.watermark and type_ in INDEXED_EVENTS:
            if carried:
                out.carried[-1] = (*out.carried[-1][:6], rebuild.read(seq, type_, body),
                                   *out.carried[-1][7:])
            else:
                rebuild.add(seq, type_, body)
    except Exception as exc:  # noqa: BLE001 - raised by the parent where one pass raised it
        return exc
    return ""


def _idle_workers(events: int) -> int:
    """Worker processes for verifying ``events`` events when the caller names none: as many
    as there are idle cores (up to four), and none for a small store or on a busy machine,
    where they only add their own cost (17-22 % more CPU than one process at a load average
    of 0.5-0.7 on 2 cores, 35-48 % at 3-5, where they were no faster: measured)."""
    cores = os.cpu_count() or 1
    try:
        idle = round(cores - os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average here (Windows)
        idle = cores
    return min(4, idle) if events >= VERIFY_PROCESSES_FROM and idle >= 2 else 1


def _check_range(read: Callable[[int, int | None], Iterable[ChainRow]], job: _Job,
                 signatures: Mapping[int, tuple[str, str]], lo: int, hi: int | None,
                 names: Pseudonyms | None = None) -> _Checked:
    """A worker process's task: the events ``lo < seq <= hi`` (to the end when ``hi`` is None),
    read over a connection of its own; ``names``, the worker's memory of pseudonyms."""
    with _collector_paused():
        out = _check_range_rows(read(lo, hi), job, signatures, lo, names)
        index_rows = getattr(read, "index_rows", None)
        if job.salt is not None and out.flaw is None and index_rows is not None:
            # The table's rows of this range's cases read and compared here, in parallel, not
            # every row pickled to the parent to be read and compared there again.
            settled, differ = range_rows_settled(out.rows, index_rows(list(out.rows)))
            settled = settled and out.rows.keys() <= out.opened.keys()  # each row its case's
            out.index = (settled, len(out.rows), differ,
                         [rid for rid in out.opened if rid not in out.rows])
            out.rows = {}
        out.packed = _packed(out.opened)
        if out.packed is not None:
            out.opened = {}
        return out


_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder()


def _packed(opened: dict[str, tuple[Any, ...]]) -> bytes | None:
    """A range's opened cases as they cross the pipe: msgpack, which carries what a body's
    JSON holds as it is, at half of pickle's CPU both ways (0.47 + 0.58 against 1.28 + 0.81 us
    a case, measured; each tuple comes back a list, which ``_ChainWalk._carried`` reads the
    same); left to pickle where msgpack cannot carry a value as it is (an integer past 64
    bits, text that is not UTF-8)."""
    try:
        return _PACK.encode(opened)
    except (OverflowError, ValueError, TypeError):
        return None


def _ranges(last: int) -> list[tuple[int, int | None]]:
    """The ranges a store whose last event is ``last`` is verified in; the last one reads to
    the end, so an event appended meanwhile is read as one process would read it."""
    bounds: list[tuple[int, int | None]] = [(lo, lo + VERIFY_RANGE)
                                            for lo in range(0, last, VERIFY_RANGE)]
    return [*bounds[:-1], (bounds[-1][0], None)] if bounds else [(0, None)]


class _Workers:
    """verify's worker processes (``_range_worker``): each takes the ranges the parent hands
    out, one at a time, and sends each one's ``_Checked`` back, keeping what its ranges share
    (the pseudonyms it made, the job and the signatures it got once at its start) for the
    whole verify, where a pool's task got them pickled anew and made its pseudonyms again for
    every range (an HMAC for each customer, card and order a range meets: 2 us an `evaluated`
    event, measured)."""

    def __init__(self, count: int, read: Callable[[int, int | None], Iterable[ChainRow]],
                 job: _Job, signatures: Mapping[int, tuple[str, str]]) -> None:
        context = multiprocessing.get_context()
        self.todo = context.SimpleQueue()
        self.results, sender = context.Pipe(duplex=False)
        sending = context.Lock()  # one whole message at a time on the one pipe
        self.finished = False  # every range handed out was checked and received
        self.processes = [context.Process(target=_range_worker, daemon=True,
                                          args=(read, job, signatures, self.todo, sender, sending))
                          for _ in range(count)]
        try:
            for process in self.processes:
                process.start()
        finally:
            sender.close()  # the workers' own ends stay open: all of them gone reads as EOF

    def checked(self, last: int) -> Generator[_Checked, None, None]:
        """Every range's ``_Checked``, in seq order; at most two ranges a worker wait to be
        joined, so memory stays bounded on a store of any size."""
        todo = list(enumerate(_ranges(last)))
        ahead = 2 * len(self.processes)
        for n, (lo, hi) in todo[:ahead]:
            self.todo.put((n, lo, hi))
        arrived: dict[int, Any] = {}
        for n in range(len(todo)):
            while n not in arrived:
                done, result = self._receive()
                arrived[done] = result
            if n + ahead < len(todo):
                self.todo.put((n + ahead, *todo[n + ahead][1]))
            result = arrived.pop(n)
            if isinstance(result, BaseException):  # what the range's check raised, as one pass
                raise result
            self.finished = n == len(todo) - 1
            yield result

    def _receive(self) -> tuple[int, Any]:
        """The next range a worker sent, whichever; a worker gone before verify ended is an
        error (killed by the out-of-memory killer or a signal: its ranges will never come)."""
        while True:
            ready = multiprocessing.connection.wait(
                [self.results, *(p.sentinel for p in self.processes)])
            if self.results in ready:
                try:
                    found: tuple[int, Any] = pickle.loads(self.results.recv_bytes())
                except EOFError:
                    break
                return found
            if any(p.exitcode is not None for p in self.processes):
                break
        # The pipe's end comes when every worker has closed its side, which can be before the
        # process has exited and its code is known: waited for here, briefly.
        for process in self.processes:
            process.join(timeout=5)
        codes = [p.exitcode for p in self.processes if p.exitcode]
        code = codes[0] if codes else "unknown"
        raise RecordError(f"a worker process of verify died (exit code {code}); try "
                          "`--workers 1`")

    def close(self) -> None:
        """Every worker ended: told to, once every range was checked (each then closes its
        connection), or at once, when verify stopped before (what it checks is not needed)."""
        if self.finished:
            for _process in self.processes:
                self.todo.put(None)
            for process in self.processes:
                process.join(timeout=10)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join()
        self.results.close()
        self.todo.close()


def _range_worker(read: Callable[[int, int | None], Iterable[ChainRow]], job: _Job,
                  signatures: Mapping[int, tuple[str, str]], todo: Any, results: Any,
                  sending: Any) -> None:
    """A worker process of verify (``_Workers``): the ranges ``todo`` names, (n, lo, hi),
    until None, each one's ``_Checked``, or what its check raised, sent to ``results``; over
    one connection for all of them where the reader can hold one (``held``)."""
    names = Pseudonyms()  # this worker's, for all its ranges: one salt, one verify
    # The collector paused for the worker's life, not each range's: a range's check left
    # what it sends alive as the pause ended, and the collector's first pass went over all of
    # it while it was pickled. Each range's objects are freed as it is sent (no cycles).
    gc.disable()
    with contextlib.ExitStack() as stack:
        reader, failed = read, None
        held = getattr(read, "held", None)
        try:
            reader = read if held is None else stack.enter_context(held())
        except Exception as exc:  # noqa: BLE001 - the first range's answer, as before
            failed = exc
        while (task := todo.get()) is not None:
            n, lo, hi = task
            try:
                if failed is not None:
                    raise failed
                result: Any = _check_range(reader, job, signatures, lo, hi, names)
            except Exception as exc:  # noqa: BLE001 - raised by the parent, as one pass raises
                result = exc
            message = pickle.dumps((n, result), protocol=pickle.HIGHEST_PROTOCOL)
            with sending:
                results.send_bytes(message)


def _start_workers(count: int, read: Callable[[int, int | None], Iterable[ChainRow]],
                   job: _Job, signatures: Mapping[int, tuple[str, str]]) -> _Workers | None:
    """Worker processes for verify, or None where none can start (no semaphores in a
    sandbox, say): verify then reads in this process."""
    try:
        return _Workers(count, read, job, signatures)
    except (OSError, NotImplementedError, ImportError):
        return None


class _ChainWalk:
    """The pass over the events in ``seq`` order: links, hashes, columns, signatures and the
    state machine (``run``), or the same over what worker processes checked, each range linked
    to the one before (``run_ranges``); it keeps what the later checks need (the layer digests
    used, the hash at each count a signed checkpoint names, the index rows)."""

    def __init__(self, starts: Sequence[str], expect_head: str | None,
                 index: tuple[Rebuild, int] | None = None) -> None:
        self.starts, self.expect_head, self._index = tuple(starts), expect_head, index
        self.rebuild: Rebuild | None = index[0] if index is not None else None
        self.digests: set[str] = set()
        self.hash_at: dict[int, str] = {}
        self.count, self.head, self.genesis = 0, GENESIS, self.starts[0]
        self.expected, self.prev = 1, self.starts[0]
        self.seen_head = expect_head is None or expect_head in (GENESIS, *self.starts)
        self.lifecycle = _Lifecycle()
        # The first forged `outcome` column, named only once the chain, the anchor and the texts
        # are found sound (it is a lesser problem than any of those, which explain it).
        self.outcome_problem = ""
        # The index rows the workers held to the table themselves (``_Checked.index``): all
        # agreed so far, how many, those a later event may still set, the cases with no row.
        self.index_settled, self.index_count = True, 0
        self.index_later: dict[str, tuple[Any, ...]] = {}
        self.unindexed: set[str] = set()

    def restart(self) -> None:
        """Back to the first event, as made: ``run`` after ``run_ranges`` gave up."""
        index = self._index
        self.__init__(self.starts, self.expect_head,  # type: ignore[misc]
                      None if index is None else (Rebuild(index[0].salt), index[1]))

    def run(self, rows: Iterable[ChainRow], signatures: Mapping[int, tuple[str, str]],
            job: _Job) -> Verification:
        """In one process: each row checked and replayed as it is read (the cheapest way for
        one core: nothing is kept of a body but the case's state)."""
        expected_seq, prev, lifecycle, rebuild = 1, self.starts[0], self.lifecycle, self.rebuild
        seen_head = self.seen_head
        for row in rows:
            seq, rid, type_, at, actor, body_text, hash_, outcome = row
            if seq == 1 == expected_seq:
                prev = self.genesis = _named_start(body_text, self.starts)
            body, problem = _clean_body(row, expected_seq, prev), ""
            if body is None:
                problem, body = _check_row(seq, rid, type_, at, actor, body_text, hash_,
                                           expected_seq, prev)
            if seq == 1 and problem.startswith("event 1 does not follow"):
                problem = _GENESIS_PROBLEM
            if not problem:
                problem = (lifecycle.check(_Replayed(seq, rid, type_, at, actor, body))
                           or check_event_signature(seq, body, hash_, signatures.get(seq)))
            if problem:
                return Verification(False, expected_seq - 1, prev, min(seq, expected_seq), problem)
            if outcome is not None and not self.outcome_problem:
                self.outcome_problem = _outcome_problem(seq, type_, body, outcome)
            self.digests.update(_layer_digests(body))
            if rebuild is not None and seq <= job.watermark and type_ in INDEXED_EVENTS:
                rebuild.add(seq, type_, body)
            if seq in job.counts:
                self.hash_at[seq] = hash_
            seen_head = seen_head or hash_ == self.expect_head
            expected_seq, prev = seq + 1, hash_
        self.expected, self.prev, self.seen_head = expected_seq, prev, seen_head
        return self._end()

    def run_ranges(self, ranges: Iterable[_Checked]) -> Verification | None:
        """What worker processes checked, range by range in seq order, joined; None when a
        range's assumption about the chain before it did not hold (a case opened twice across
        ranges, another four-eyes threshold than it assumed): one pass then says what."""
        for checked in ranges:
            joined = self._join(checked)
            if not isinstance(joined, str):  # the chain's answer, or None
                return joined
        return self._end()

    def _end(self) -> Verification:
        self.count = self.expected - 1
        self.head = self.prev if self.count else GENESIS
        if not self.seen_head:
            return Verification(False, self.count, self.head, self.count + 1,
                                f"the checkpoint head `{self.expect_head}` is not in the chain: "
                                "events were removed from the end or rewritten")
        return Verification(True, self.count, self.head)

    def _join(self, checked: _Checked) -> Verification | str | None:
        """One range joined to the chain so far: its first event's seq and link, what it
        assumed, the events it carried of earlier cases, its own first flaw; then what it
        leaves ("joined"), or the chain's answer, or None (see ``run_ranges``)."""
        first, lifecycle = checked.first, self.lifecycle
        if first and first != self.expected:
            return Verification(False, self.expected - 1, self.prev, min(first, self.expected),
                                _seq_problem(first, self.expected))
        problem = self._link(first, checked) if first else ""
        if problem:
            return Verification(False, first - 1, self.prev, first, problem)
        opened: dict[str, Any] = checked.opened if checked.packed is None \
            else _UNPACK.decode(checked.packed)
        if checked.threshold_in != lifecycle.threshold \
                or not lifecycle.cases.keys().isdisjoint(opened):
            return None
        broken = self._carried(checked.carried)
        if broken is not None:
            return broken
        if checked.flaw is not None:
            seq, count, head, flaw = checked.flaw
            if isinstance(flaw, Exception):  # what one pass raised after this event's checks
                raise flaw
            return Verification(False, count, self.prev if head is None else head, seq, flaw)
        lifecycle.cases.update(opened)  # made a _Fold when read (``_carried``)
        lifecycle.threshold = checked.threshold_out
        if self.rebuild is not None:
            self.rebuild.rows.update(checked.rows)
        if checked.index is not None:
            settled, count, later, unindexed = checked.index
            self.index_settled = self.index_settled and settled
            self.index_count += count
            self.index_later.update(later)
            self.unindexed.update(unindexed)
        if first:
            self.expected, self.prev = checked.last[0] + 1, checked.last[1]
        self.digests |= checked.digests
        self.outcome_problem = self.outcome_problem or checked.outcome_problem
        self.hash_at.update(checked.hash_at)
        self.seen_head = self.seen_head or checked.seen_head
        return "joined"

    def _carried(self, carried: Iterable[tuple[Any, ...]]) -> Verification | None:
        """The state machine over a range's events of cases opened before it, each case's
        state made a ``_Fold`` from a worker's fields when first read."""
        lifecycle, rebuild, cases = self.lifecycle, self.rebuild, self.lifecycle.cases
        for seq, rid, type_, at, actor, slim, item, threshold, prev in carried:
            fold: Any = cases.get(rid)
            if fold.__class__ is tuple or fold.__class__ is list:  # as a worker sent it
                cases[rid] = _Fold(*fold)
            lifecycle.threshold = threshold
            problem = lifecycle.check(_Replayed(seq, rid, type_, at, actor, slim))
            if problem:
                return Verification(False, seq - 1, self.prev if prev is None else prev, seq,
                                    problem)
            if item is not None and rebuild is not None:
                self._index_update(rebuild, type_, item)
        return None

    def _index_update(self, rebuild: Rebuild, type_: str, item: tuple[Any, ...]) -> None:
        """A later event's change to the index row of a case an earlier range opened."""
        rid = item[2]
        if rid in rebuild.rows:  # a row the parent holds (no worker compared it)
            rebuild.apply(type_, item)
        elif rid in self.index_later:
            amount, _status, *had = self.index_later[rid]
            self.index_later[rid] = (amount if item[1] is None else item[1], item[0], *had)
        elif self.index_count and rid not in self.unindexed:
            # A row a worker found as the table has it, changed by a later event: only the
            # whole check can say how it now differs (or not).
            self.index_settled = False

    def index_agrees(self, table_rows: int) -> bool:
        """Whether the rows the workers compared settle the index check: every one agreed,
        but for what later events set, which now agrees too, and the table holds no more."""
        return (self.index_count > 0 and self.index_settled and table_rows == self.index_count
                and not (self.rebuild is not None and self.rebuild.rows)
                and later_rows_settled(self.index_later.values()))

    def _link(self, seq: int, checked: _Checked) -> str:
        """What is wrong with the link from the chain so far to a range's first event."""
        if seq == 1 and checked.start is not None:
            self.prev = self.genesis = checked.start
        if checked.link is None or checked.link[0] == self.prev:
            return ""
        return _GENESIS_PROBLEM if seq == 1 else _link_problem(seq)


_GENESIS_PROBLEM = ("event 1 does not start from this store's genesis: `meta.salt` was changed, "
                    "or the chain was replaced")


def _seq_problem(seq: int, expected_seq: int) -> str:
    if seq > expected_seq:
        return f"event {expected_seq} is missing (the next one is {seq})"
    return f"event {seq} appears twice"


def _link_problem(seq: int) -> str:
    return f"event {seq} does not follow event {seq - 1}: an event was removed, moved or changed"


def _check_body(seq: int, type_: str, body_text: str | bytes, hash_: str,
                expected_seq: int) -> tuple[str, Any]:
    """What is wrong with one stored event before its link and columns are looked at ("" if
    nothing), and its parsed body."""
    if seq != expected_seq:
        return _seq_problem(seq, expected_seq), {}
    raw = body_text.encode("utf-8") if isinstance(body_text, str) else body_text
    if _hash(raw) != hash_:
        return f"event {seq} does not match its hash: it was changed", {}
    try:
        body = _read_body(raw, type_)
    except ValueError:
        return f"event {seq} is not valid json", {}
    if not isinstance(body, dict):
        return f"event {seq} is not a json object", {}
    if body.get("seq") != seq:
        return f"event {seq} says it is event {body.get('seq')}: events were moved", body
    return "", body


def _clean_body(row: ChainRow, expected_seq: int, prev: str) -> Any:
    """The body of a row with nothing wrong as a link of the chain (every check of
    ``_check_row``, in one call, with no message made), or None: ``_check_row`` then says
    what is wrong. Nearly every row of a store is clean; the calls saved are 0.3-0.5 us of
    the 15-16 an event costs in Python."""
    seq, rid, type_, at, actor, body_text, hash_, _outcome = row
    if seq != expected_seq:
        return None
    raw = body_text.encode("utf-8") if isinstance(body_text, str) else body_text
    if "sha256:" + hashlib.sha256(raw).hexdigest() != hash_:
        return None
    try:
        body = (_BODY if type_ == "evaluated" else _STEP).decode(raw)
    except ValueError:  # another shape, or not JSON: the whole checks say which
        return None
    if body.__class__ is not dict:
        return None
    get = body.get
    if get("seq") == seq and get("prev") == prev and get("request_id") == rid \
            and get("type") == type_ and get("at") == at and get("actor") == actor:
        return body
    return None


def _outcome_problem(seq: int, type_: str, body: Any, outcome: str) -> str:
    """What is wrong with an event's non-NULL ``outcome`` column (NULL, written before the
    column, is read from the body, so it agrees): the review queue reads the column, so a
    forged one would hide a case from it or add one. Only a decision has an outcome, the one
    its hashed body holds (the state machine has read that body by now: a dict)."""
    if outcome_of(type_, body) == outcome:
        return ""
    return f"event {seq}: column `outcome` differs from the hashed event"


def _check_row(seq: int, rid: str, type_: str, at: str, actor: str, body_text: str | bytes,
               hash_: str, expected_seq: int, prev: str) -> tuple[str, dict[str, Any]]:
    """What is wrong with one stored event as a link of the chain ("" if nothing), and its
    parsed body."""
    # ``_clean_body`` passes a row on these same checks without calling this: a check added
    # here must be added there too, or every clean-looking row skips it.
    problem, body = _check_body(seq, type_, body_text, hash_, expected_seq)
    if problem:
        return problem, body
    if body.get("prev") != prev:
        return _link_problem(seq), body
    return _columns_problem(seq, rid, type_, at, actor, body), body


def _columns_problem(seq: int, rid: str, type_: str, at: str, actor: str, body: Any) -> str:
    get = body.get
    if get("request_id") == rid and get("type") == type_ and get("at") == at \
            and get("actor") == actor:  # every event of a whole store: no tuple to walk
        return ""
    for name, value in (("request_id", rid), ("type", type_), ("at", at), ("actor", actor)):
        if body.get(name) != value:
            return f"event {seq}: column `{name}` differs from the hashed event"
    return ""


class _Lifecycle:
    """The state machine replayed over the whole chain, one event at a time, keeping only
    each case's small state."""

    def __init__(self) -> None:
        self.cases: dict[str, _Fold] = {}
        self.threshold = DEFAULT_FOUR_EYES_ABOVE

    def check(self, event: _Replayed) -> str:
        problem = self._problem(event)
        return f"event {event.seq}{problem}" if problem else ""

    def _problem(self, event: _Replayed) -> str:
        """``check``'s problem after its "event N" (which is made only for a problem)."""
        if event.type not in _EVENT_TYPES:
            return f": `{event.type}` is not an event type"
        if event.request_id == STORE_CASE:
            if event.type != "note":
                return ": only a note can belong to no case"
            if event.details.get("setting") == "four_eyes_above":
                try:
                    self.threshold = _parse_amount(event.details.get("value"))
                except RecordError as exc:
                    return f": {exc}"
            return ""
        fold = self.cases.get(event.request_id)
        try:
            if event.type == "evaluated":
                if fold is not None:
                    return f" opens request `{event.request_id}` a second time"
                fold = self.cases[event.request_id] = _Fold.open(event)
                # Kept of the decision and request: what `required_approvals` reads, no more.
                # A case's state lives to the end of the walk, and the collector walks every
                # object that does, again and again (a third of verify's time when the whole
                # of both was kept).
                fold.decision = {"amount": fold.decision.get("amount"),
                                 "reasons": fold.decision.get("reasons")}
                if isinstance(fold.request, dict):  # else left for the approval to trip on
                    fold.request = {"amount": fold.request.get("amount")}
                return ""
            if fold is None:
                return f": request `{event.request_id}` has no `evaluated` event before it"
            check_transition(fold, event.type, event.actor)
        except RecordError as exc:
            return f": {exc}"
        if event.type == "dispute_resolved" and event.details.get("resolution") not in RESOLUTIONS:
            return ": a dispute resolution must be upheld or overturned"
        if event.type in ("reviewed", "approved"):
            required = required_approvals(fold.decision, fold.request, self.threshold)
            expected = approval_type(len(fold.approvals), required)
            if event.type != expected:
                return (f": `{event.type}` as approval {len(fold.approvals) + 1} of "
                        f"{required}; it should be `{expected}`")
        fold.apply(event)
        return ""


def _texts_of(decision: Decision, engine: Any) -> tuple[tuple[str, str, str, str], ...]:
    """The exact text of every layer that made ``decision``, from the engine that made it."""
    if decision.ruleset is None:
        return ()
    if engine is None:
        raise RecordError("recording a decision needs the engine that made it (for its rulesets)")
    out = []
    for layer in decision.ruleset.layers:
        doc = next((d for d in engine.library.versions.get(layer.id, ())
                    if d.digest == layer.digest), None)
        if doc is None:
            raise RecordError(f"ruleset `{layer.id}` {layer.version} is not loaded in this engine")
        out.append((doc.digest, doc.id, doc.version, doc.text))
    return tuple(out)


def new_salt() -> str:
    return secrets.token_hex(32)


