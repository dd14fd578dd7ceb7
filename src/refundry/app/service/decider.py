"""Recorded decisions, a group at a time, on one thread.

A recorded decision used to take a thread of the pool for itself: the event loop handed it
over, the thread took one of the lookup connections for its two history queries, evaluated,
prepared, handed the decision to the committer and slept until the commit, then handed the
answer back to the event loop. Four hand-overs between threads per decision, and sixteen
requests in flight were sixteen threads taking turns at the GIL for work that is all Python.

Here the event loop queues a request and awaits a future. One decider thread takes everything
waiting (up to ``MAX_GROUP``), looks up the group's history together (``take_many``: a few
queries for the group), evaluates and prepares each request and gives the group to the
committer (groupcommit.py); after the commit, the group's futures are settled with one call
into the event loop. The hand-overs are per group, and while the committer waits for the
flush the decider works on the next group.

The group's history is looked up on a thread of its own, one stage ahead of the decider: on
PostgreSQL a lookup is a round trip the decider used to wait for, between evaluating one group
and the next, while the process had nothing else to do. Now the lookup thread waits for the
next group's rows while the decider evaluates and prepares this one and the committer commits
the one before (three groups in flight, each in a different stage).

History facts stay what they were: requests in one group are ones in flight at the same time,
and a request sent after another's answer is in a later group, looked up after that answer's
commit (whose transaction also synced the history index): the lookup of a request starts
after it arrived, and it arrived after every answer its client had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from refundry.app.service.groupcommit import GroupCommit, Result, StoreUnavailable, take_group
from refundry.app.service.intake import Intake, take_many
from refundry.app.service.lookups import Lookups
from refundry.app.submissions import recorded_as_submitted
from refundry.core.engine import Engine
from refundry.core.errors import RefundryError
from refundry.core.models import Decision
from refundry.records.events import Prepared, RecordError, RecordStore, canonical_json

MAX_GROUP = 32
LOG = logging.getLogger("refundry.service")


@attrs.frozen
class Recorded:
    """The answer to a recorded decision: the decision as the store keeps it (masked), as
    canonical JSON (the same bytes whenever it is answered), and whether it was recorded now."""

    body: bytes
    created: bool


@attrs.frozen
class _Ask:
    data: dict[str, Any]
    actor: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Recorded]


@attrs.frozen
class _Looked:
    """A group and, per request, its ``take_many`` answer."""

    group: list[_Ask]
    taken: Sequence[Intake | BaseException]


class Decider:
    """``record(data, actor)`` from any event loop; safe to share between them.

    ``engine`` gives the engine in force (taken once per group); ``counted`` is told the
    outcome of every decision recorded now (metrics)."""

    def __init__(self, store: RecordStore, lookups: Lookups, engine: Callable[[], Engine],
                 committer: GroupCommit, counted: Callable[[str], None]) -> None:
        self._store, self._lookups, self._engine = store, lookups, engine
        self._committer, self._counted = committer, counted
        self._queue: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        # Groups with their history looked up, for the decider; None: stop.
        self._looked: queue.SimpleQueue[_Looked | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=target, name=name, daemon=True)
                         for target, name in ((self._look_up, "refundry-lookups"),
                                              (self._run, "refundry-decider"))]
        for thread in self._threads:
            thread.start()

    async def record(self, data: dict[str, Any], actor: str) -> Recorded:
        """The decision for ``data``, enriched from and appended to the store as ``actor``.
        Raises what refused it: ``InvalidRequest``, ``RecordError`` (the request id is
        recorded with other content), ``StoreUnavailable`` (nothing of the group committed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recorded] = loop.create_future()
        self._queue.put(_Ask(data, actor, loop, future))
        return await future

    def close(self) -> None:
        """Stop after what is queued (the server stops taking requests first)."""
        self._queue.put(None)
        for thread in self._threads:  # the lookups stop first, then pass the stop on
            thread.join(30)

    def _take(self) -> list[_Ask] | None:
        return take_group(self._queue, MAX_GROUP)

    def _look_up(self) -> None:
        try:
            while (group := self._take()) is not None:
                try:
                    with self._lookups.history() as history:
                        taken = take_many([ask.data for ask in group], history)
                except RefundryError as exc:  # the lookups' store: nothing decided or written
                    _unavailable(group, exc, "history lookup failed")
                except Exception as exc:  # noqa: BLE001 - a fault here must not end the thread
                    LOG.exception("a group's history lookup failed")
                    _settle(group, [exc] * len(group))
                else:
                    self._looked.put(_Looked(group, taken))
        finally:
            self._looked.put(None)

    def _run(self) -> None:
        while (looked := self._looked.get()) is not None:
            try:
                self._decide(looked.group, looked.taken)
            except RefundryError as exc:  # the store, read for a refused one: nothing written
                _unavailable(looked.group, exc, "a group's store read failed")
            except Exception as exc:  # noqa: BLE001 - a fault here must not end the thread
                LOG.exception("a group of decisions failed")
                _settle(looked.group, [exc] * len(looked.group))

    def _decide(self, group: list[_Ask], taken: Sequence[Intake | BaseException]) -> None:
        engine = self._engine()  # one version decides the whole group
        answers: list[Recorded | BaseException | None] = [None] * len(group)
        waiting: list[tuple[int, Intake, Decision, Prepared]] = []
        for i, (ask, got) in enumerate(zip(group, taken, strict=True)):
            if isinstance(got, BaseException):
                answers[i] = got
                continue
            try:
                decision = engine.evaluate(got.request)
                prepared = self._store.prepare(got.request, decision, engine=engine,
                                               actor=ask.actor)
            except Exception as exc:  # noqa: BLE001 - answered to this request alone
                answers[i] = self._refused(got, exc)
                continue
            waiting.append((i, got, decision, prepared))
        if not waiting:
            _settle(group, answers)
            return

        def done(results: list[Result]) -> None:
            for (i, got, decision, prepared), result in zip(waiting, results, strict=True):
                answers[i] = self._answer(got, decision, prepared, result)
            _settle(group, answers)

        self._committer.submit([item[3] for item in waiting], done)

    def _answer(self, got: Intake, decision: Decision, prepared: Prepared,
                result: Result) -> Recorded | BaseException:
        if isinstance(result, BaseException):
            return self._refused(got, result)
        case, created = result
        if not created:
            return Recorded(canonical_json(case.decision), False)
        self._counted(decision.outcome)
        # The bytes the event holds for its decision, encoded once when it was prepared (the
        # same canonical JSON a retry's answer encodes from the stored case).
        encoded = prepared.draft.encoded.get("decision")
        return Recorded(encoded or canonical_json(case.decision), True)

    def _refused(self, got: Intake, exc: BaseException) -> Recorded | BaseException:
        """A refused record that is the same submission decided at the same moment elsewhere
        (other history facts) is answered with that case; anything else stays refused."""
        if not isinstance(exc, RecordError):
            return exc
        existing = recorded_as_submitted(self._store, got.data)
        return exc if existing is None else Recorded(canonical_json(existing.decision), False)


def _unavailable(group: Sequence[_Ask], exc: RefundryError, what: str) -> None:
    """The store did not answer: the group's requests are 503s, nothing of them written."""
    LOG.warning(what, extra={"fields": {"error": str(exc)[:300]}})
    _settle(group, [StoreUnavailable(f"the records store did not answer: {exc}")] * len(group))


def _settle(group: Sequence[_Ask], answers: Sequence[Recorded | BaseException | None]) -> None:
    """Hand each answer to its request's event loop: one call per loop for the group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Recorded], Any]]] = {}
    for ask, answer in zip(group, answers, strict=True):
        by_loop.setdefault(ask.loop, []).append((ask.future, answer))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its loop has closed: no one is waiting
            loop.call_soon_threadsafe(_set, pairs)


def _set(pairs: list[tuple[asyncio.Future[Recorded], Any]]) -> None:
    for future, answer in pairs:
        if future.done():  # the client went away and its request was cancelled
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        elif answer is None:
            future.set_exception(RuntimeError("no answer was made for this request"))
        else:
            future.set_result(answer)
