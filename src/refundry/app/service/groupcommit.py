"""Group commit: decisions recorded from many request threads share one store transaction.

Every commit of an approval record is a disk flush (SQLite ``synchronous=FULL``, PostgreSQL's
WAL flush), and one flush per HTTP request caps the service at what the disk can flush. Here
each request thread hands its append to one committer thread and waits; the committer takes
everything waiting (up to ``MAX_GROUP``), appends it inside ``store.batch()`` (one transaction;
each decision still refused or recorded on its own) and answers the waiting threads only after
the commit, so no client is told "recorded" before the record is durable.

What needs no lock is done by the request thread before it queues (``store.prepare``: parsing,
masking and encoding the request and the decision): with several server processes the chain's
lock is held only to place and insert a group (``store.record_many``: one read of the cases,
one insert), not for the masking of a few hundred decisions, and the one committer thread is
no longer a serial stage of the CPU work.

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
from concurrent.futures import Future
from typing import Any

from refundry.core.errors import RefundryError
from refundry.records.events import Prepared, RecordStore
from refundry.records.history import History

MAX_GROUP = 256
LOG = logging.getLogger("refundry.service")


class StoreUnavailable(RefundryError):
    """The group's transaction failed: nothing in it was written."""


class GroupCommit:
    def __init__(self, store: RecordStore, history: History | None = None) -> None:
        self.store, self.history = store, history
        self._queue: queue.Queue[tuple[Prepared, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="refundry-group-commit",
                                        daemon=True)
        self._thread.start()

    def record(self, request: Any, decision: Any, *, engine: Any, actor: str) -> Any:
        """``store.record``, committed with whatever else is waiting; blocks until durable."""
        prepared = self.store.prepare(request, decision, engine=engine, actor=actor)
        done: Future[Any] = Future()
        self._queue.put((prepared, done))
        return done.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _take(self) -> list[tuple[Prepared, Future[Any]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        group = [first]
        while len(group) < MAX_GROUP:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this group
                break
            group.append(item)
        return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            try:
                with self.store.batch():
                    results = self.store.record_many([prepared for prepared, _done in group])
                    self._sync_history()
            except Exception as exc:  # noqa: BLE001 - the whole group is lost: say so to each
                failed = StoreUnavailable(f"the records store did not commit: {exc}")
                for _prepared, done in group:
                    done.set_exception(failed)
                continue
            for (_prepared, done), got in zip(group, results, strict=True):
                if isinstance(got, BaseException):
                    done.set_exception(got)
                else:
                    done.set_result(got)

    def _sync_history(self) -> None:
        if self.history is None:
            return
        try:
            self.history.sync()
        except Exception as exc:  # noqa: BLE001 - its savepoint is undone and the events
            # still commit; the next group's sync catches the index up
            LOG.warning("history index not synced", extra={"fields": {"error": str(exc)[:300]}})
