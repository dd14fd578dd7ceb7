"""Tenancy: a records store as one identity sees it, only the cases of its clients.

A BPO decides refunds for many client businesses from one store; a reviewer of one retailer
must not see, change or even count another's cases (docs/security.md). ``ScopedStore`` wraps a
``RecordStore`` with the set of ``client_id``s an identity may act on and is the one place the
application filters: every read goes through it, and every state change first asks it for the
case. A case of another client answers exactly like a case that does not exist (the same
``RecordError``, so the API's 404), so request ids of other clients do not leak.

Every refused access is an event in the chain: a ``note`` on the store-level stream (it
belongs to no case, so it changes no case's state and ``verify`` accepts it) naming who, which
client, what was tried and that it was refused. Allowed state changes are events anyway, with
the actor and the case's client in them. Reads that are allowed are not recorded: one event
per page view would make the chain mostly reads.

In PostgreSQL the same rule is enforced a second time by row-level security
(``records/rowsecurity.py``); this filter is the first layer, and the only one for SQLite.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import IO, Any

import rfc8785
import yaml

from refundry.records.events import (
    STORE_CASE,
    Case,
    Event,
    QueuePage,
    RecordError,
    RecordStore,
)

ALL_CLIENTS = "*"
ACCESS_NOTE = "access"  # the details key that marks an access decision in a store-level note


class AccessRefused(RecordError):
    """An identity tried to act on a client that is not its own (where a 404 would not hide
    anything: the caller named the client itself, e.g. in a submitted request)."""


def client_of(case: Case) -> str:
    return str(case.request.get("client_id", ""))


def ruleset_client(text: str) -> str | None:
    """The ``client`` a kept ruleset text is an overlay for (None: a baseline, or a text that
    does not read as one; both are shown only to whoever may see baselines)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    client = doc.get("client") if isinstance(doc, dict) else None
    return str(client) if client else None


class ScopedStore:
    """``store`` as seen by ``actor``, who may act on ``clients`` (``*``: every client).

    Shares the store (and its connection): build one per request, it holds nothing else.
    ``recorder``: where refusals and state changes are appended, when ``store`` may only read
    (a PostgreSQL ``rowsecurity.ReaderStore``; the owner's store then appends them, each
    change after the case was found through ``store``)."""

    def __init__(self, store: RecordStore, actor: str, clients: Iterable[str], *,
                 recorder: RecordStore | None = None) -> None:
        self.store = store
        self.actor = actor
        self.clients = frozenset(clients)
        self.recorder = recorder or store

    @property
    def all(self) -> bool:
        return ALL_CLIENTS in self.clients

    def allows(self, client_id: str | None) -> bool:
        return self.all or (client_id is not None and client_id in self.clients)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> ScopedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording access decisions -----------------------------------------------------------

    def refuse(self, action: str, client_id: str, request_id: str | None = None) -> Event:
        """Record that ``actor`` was refused ``action`` on ``client_id``'s data."""
        details: dict[str, Any] = {ACCESS_NOTE: "refused", "identity": self.actor,
                                   "client": client_id, "action": action}
        if request_id:
            details["request_id"] = request_id
        return self.recorder.store_note(details, actor=self.actor)

    def check_client(self, client_id: str, action: str) -> None:
        """Refuse (and record) ``action`` for a client named by the caller itself."""
        if not self.allows(client_id):
            self.refuse(action, client_id)
            raise AccessRefused(f"`{self.actor}` may not act for client `{client_id[:100]}`")

    def ask(self, client_id: str | None, action: str) -> bool:
        """Whether a filter by ``client_id`` (None: no filter) stays within the identity's
        clients; one outside is refused and recorded (the caller then shows nothing)."""
        if client_id and not self.allows(client_id):
            self.refuse(action, client_id)
            return False
        return True

    # -- reading ------------------------------------------------------------------------------

    def case(self, request_id: str, action: str = "read") -> Case:
        """The case, when it belongs to one of the clients; otherwise the store's own "no
        case" error, word for word, after recording the refusal."""
        try:
            case = self.store.case(request_id)
        except RecordError:
            if not self.all:
                # Recorded too (client "": no such case), so that a missing case costs what
                # another client's does and the answer's timing does not tell them apart.
                self.refuse(action, self.hidden_client(request_id), str(request_id)[:200])
            raise
        if not self.allows(client_of(case)):
            self.refuse(action, client_of(case), case.request_id)
            raise RecordError(f"no case for request `{request_id}`")
        return case

    def hidden_client(self, request_id: str) -> str:
        """The client of a case the read store did not show ("" when there is none): a
        ``ReaderStore`` hides other clients' cases, yet the refusal is that client's record.
        Asked of the recorder (the owner) for the note only; the case is never returned."""
        if self.recorder is self.store:
            return ""
        try:
            return client_of(self.recorder.case(request_id))
        except RecordError:
            return ""

    def cases(self, status: str | None = None) -> list[Case]:
        return [c for c in self.store.cases(status) if self.allows(client_of(c))]

    def review_queue(self, *, after: int = 0, before: int | None = None, limit: int = 50,
                     client: str | None = None, industry: str | None = None,
                     request_id: str | None = None) -> QueuePage:
        """The review queue of the identity's clients; asking for (even counting) another
        client's queue is refused, recorded, and answered with an empty page."""
        if not self.ask(client, "count"):
            return QueuePage(cases=(), total=0, capped=False, first=None, last=None, more=False)
        return self.store.review_queue(after=after, before=before, limit=limit, client=client,
                                       industry=industry, request_id=request_id,
                                       clients=None if self.all else self.clients)

    def case_page(self, *, after: int = 0, limit: int = 100,
                  status: str | None = None) -> list[tuple[int, Case]]:
        return self.store.case_page(after=after, limit=limit, status=status,
                                    clients=None if self.all else self.clients)

    def visible(self, event: Event, seen: set[str]) -> bool:
        """Whether ``event`` is the identity's to see, in chain order: ``seen`` collects the
        cases of its clients as their ``evaluated`` events go by."""
        if event.request_id == STORE_CASE:
            details = event.details
            if ACCESS_NOTE in details:  # an attempt on a client is that client's record
                return self.allows(str(details.get("client")))
            return True  # store settings (the two-approver threshold) concern every client
        if event.type == "evaluated" and self.allows(
                str((event.body.get("request") or {}).get("client_id", ""))):
            seen.add(event.request_id)
        return event.request_id in seen

    def events(self, request_id: str | None = None) -> Iterator[Event]:
        if request_id is not None:
            yield from self.case(request_id).events
            return
        seen: set[str] = set()
        for event in self.store.events():
            if self.all or self.visible(event, seen):
                yield event

    def export(self, out: IO[str]) -> int:
        """The identity's events as JSON lines, each its hashed body plus its hash (the same
        lines ``RecordStore.export`` writes; the chain links between them skip what is not
        shown, so only an export of everything verifies as a whole)."""
        n = 0
        for event in self.events():
            out.write(rfc8785.dumps(event.body)[:-1].decode("utf-8")
                      + f',"hash":"{event.hash}"}}\n')
            n = event.seq
        return n

    def checkpoint(self) -> Any:
        return self.store.checkpoint()

    @property
    def salt(self) -> bytes:
        return self.store.salt

    def four_eyes_above(self) -> Any:
        return self.store.four_eyes_above()

    def replay(self, request_id: str) -> Any:
        self.case(request_id, "replay")
        return self.store.replay(request_id)

    def explain(self, request_id: str) -> Any:
        self.case(request_id, "explain")
        return self.store.explain(request_id)

    # -- rulesets -----------------------------------------------------------------------------

    def ruleset_versions(self) -> list[tuple[str, str, str]]:
        """Kept ruleset versions: baselines (law, no client's data) and the identity's
        clients' overlays."""
        return [v for v in self.store.ruleset_versions() if self.ruleset_text(v[2]) is not None]

    def ruleset_text(self, digest: str) -> tuple[str, str, str] | None:
        kept = self.store.ruleset_text(digest)
        if kept is None:
            return None
        owner = ruleset_client(kept[2])
        return kept if owner is None or self.allows(owner) else None

    def cases_decided_with(self, digest: str, limit: int) -> list[Case]:
        if self.ruleset_text(digest) is None:
            return []
        return [c for c in self.store.cases_decided_with(digest, limit)
                if self.allows(client_of(c))]

    def kept_engine(self, digests: Collection[str]) -> Any:
        if any(self.ruleset_text(d) is None for d in digests):
            raise RecordError("the store has no text for one of these rulesets")
        return self.store.kept_engine(list(digests))

    # -- changing -----------------------------------------------------------------------------

    def review(self, request_id: str, *, actor: str, approve: bool,
               reason: str | None = None) -> Case:
        self.case(request_id, "approve" if approve else "deny")
        return self.recorder.review(request_id, actor=actor, approve=approve, reason=reason)

    def open_dispute(self, request_id: str, *, actor: str, reason: str, engine: Any,
                     **kw: Any) -> Case:
        self.case(request_id, "dispute")
        return self.recorder.open_dispute(request_id, actor=actor, reason=reason, engine=engine,
                                       **kw)

    def resolve_dispute(self, request_id: str, *, actor: str, resolution: str,
                        explanation: str, amount: Any = None) -> Case:
        self.case(request_id, "resolve")
        return self.recorder.resolve_dispute(request_id, actor=actor, resolution=resolution,
                                          explanation=explanation, amount=amount)

    def mark(self, request_id: str, event_type: str, *, actor: str,
             reference: str | None = None) -> Case:
        self.case(request_id, event_type)
        return self.recorder.mark(request_id, event_type, actor=actor, reference=reference)

    def set_four_eyes_above(self, amount: Any, *, actor: str) -> Event:
        """A store setting binds every client: only an identity of every client changes it."""
        if not self.all:
            self.refuse("settings", ALL_CLIENTS)
            raise AccessRefused(f"`{self.actor}` may not change a setting of every client")
        return self.recorder.set_four_eyes_above(amount, actor=actor)

    def note(self, request_id: str, text: str, *, actor: str) -> Case:
        self.case(request_id, "note")
        return self.recorder.note(request_id, text, actor=actor)


def access_notes(events: Iterable[Event]) -> list[Mapping[str, Any]]:
    """The access decisions among ``events`` (for audits and tests), oldest first."""
    return [e.details | {"seq": e.seq, "at": e.at} for e in events
            if e.request_id == STORE_CASE and ACCESS_NOTE in e.details]
