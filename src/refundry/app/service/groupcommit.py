"""Group commit: recorded decisions of many requests share one store transaction.

Every commit of an approval record is a disk flush (SQLite ``synchronous=FULL``, PostgreSQL's
WAL flush), and one flush per HTTP request caps the service at what the disk can flush. Here
the decider (decider.py) hands each group of prepared decisions to one committer thread; the
committer takes everything waiting (up to ``MAX_GROUP`` decisions), appends it inside
``store.batch()`` (one transaction; each decision still refused or recorded on its own) and
answers each group only after the commit, so no client is told "recorded" before the record
is durable. While it waits for the flush, the decider prepares the next group.

What needs no lock is done before a group is queued (``store.prepare``: parsing,
masking and encoding the request and the decision): with several server processes the chain's
lock is held only to place and insert a group (``store.record_many``: one read of the cases,
one insert), not for the masking of a few hundred decisions.

The history index is brought up to date inside the group's own transaction, after its appends
(the store's transactions nest as savepoints in a batch): its rows commit with the events they
index, under the one lock and the one flush the group takes anyway, and a client told
"recorded" is counted in the history facts of its next request (a burst from one customer sees
itself). Synced after the commit instead, the index took the chain's lock a second time per
group, and either the committer waited for it (a third of its time) or the answers did.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from refundry.core.errors import RefundryError
from refundry.records.events import Event, Prepared, RecordStore
from refundry.records.history import History

MAX_GROUP = 256
LOG = logging.getLogger("refundry.service")


class StoreUnavailable(RefundryError):
    """The group's transaction failed: nothing in it was written."""


Result = Any  # (Case, created) or the exception that refused or lost it
Done = Callable[[list[Result]], None]
T = TypeVar("T")


def take_group(waiting: queue.SimpleQueue[T | None], most: int,
               size: Callable[[T], int] = lambda _item: 1) -> list[T] | None:
    """The next item and whatever else is already waiting, up to ``most`` in all by ``size``;
    it waits only for the first. None once the queue's stop (a ``None``) comes first; a stop
    behind a group is put back, so the group is still worked and the next take stops."""
    first = waiting.get()
    if first is None:
        return None
    group, taken = [first], size(first)
    while taken < most:
        try:
            item = waiting.get_nowait()
        except queue.Empty:
            break
        if item is None:
            waiting.put(None)
            break
        group.append(item)
        taken += size(item)
    return group


class GroupCommit:
    def __init__(self, store: RecordStore, history: History | None = None) -> None:
        self.store, self.history = store, history
        self._queue: queue.SimpleQueue[tuple[list[Prepared], Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="refundry-group-commit",
                                        daemon=True)
        self._thread.start()

    def submit(self, prepared: Sequence[Prepared], done: Done) -> None:
        """Commit ``prepared`` with whatever else is waiting. ``done`` is called on the
        committer's thread once the transaction has ended, with one result per item: its
        ``(case, created)``, or the exception that refused it (``StoreUnavailable`` for
        every item when the transaction failed). A caller with many decisions hands them
        over at once: one hand-over between threads per group, not per decision."""
        self._queue.put((list(prepared), done))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _take(self) -> list[tuple[list[Prepared], Done]] | None:
        return take_group(self._queue, MAX_GROUP, lambda item: len(item[0]))  # by decisions

    def _run(self) -> None:
        while (group := self._take()) is not None:
            results = self._commit([p for prepared, _done in group for p in prepared])
            at = 0
            for prepared, done in group:
                try:
                    done(results[at:at + len(prepared)])
                except Exception:  # noqa: BLE001 - the committer serves the other groups
                    LOG.exception("a committed group's answer failed")
                at += len(prepared)

    def _commit(self, prepared: list[Prepared]) -> list[Result]:
        try:
            # Pipelined: on PostgreSQL the group's inserts, its index rows and the commit go
            # without a round trip each, so the chain's lock is held for the reads' few.
            return self._commit_once(prepared, pipelined=True)
        except Exception as exc:  # noqa: BLE001 - nothing was written; once more, statement
            # by statement, where an index that cannot be synced does not cost the group. Said
            # in the log: a pipeline that always fails would otherwise only show as slowness.
            LOG.warning("pipelined commit failed; retrying it plainly",
                        extra={"fields": {"error": str(exc)[:300]}})
        try:
            return self._commit_once(prepared, pipelined=False)
        except Exception as exc:  # noqa: BLE001 - the whole group is lost: say so to each
            failed = StoreUnavailable(f"the records store did not commit: {exc}")
            return [failed] * len(prepared)

    def _commit_once(self, prepared: list[Prepared], *, pipelined: bool) -> list[Result]:
        with self.store.batch(pipelined=pipelined):
            results: list[Result] = list(self.store.record_many(prepared))
            # A created case's one event is the group's append, in chain order.
            self._sync_history([got[0].events[-1] for got in results
                                if not isinstance(got, BaseException) and got[1]],
                               pipelined=pipelined)
        return results

    def _sync_history(self, appended: list[Event], *, pipelined: bool) -> None:
        if self.history is None:
            return
        if pipelined:  # an error here fails the batch, which is then tried without
            self.history.sync(appended)
            return
        try:
            self.history.sync(appended)
        except Exception as exc:  # noqa: BLE001 - its savepoint is undone and the events
            # still commit; the next group's sync catches the index up
            LOG.warning("history index not synced", extra={"fields": {"error": str(exc)[:300]}})
