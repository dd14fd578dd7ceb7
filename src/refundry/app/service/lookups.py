"""History lookups on a few store connections of their own.

A recorded decision makes two history lookups (the union of the customer's, email's, address's
and card's counts, then the transaction's rows) before it is evaluated, and a store connection
serves one statement at a time. On one connection the API's request threads queued for each
other's lookups, and a worker made its batch's lookups one after another, each a round trip to
PostgreSQL (half of a worker's wall time in a py-spy profile). A few connections, each with its
own ``History``, let those waits overlap; the CPU the lookups take stays the same. The API's
decider (decider.py) looks up a whole group on one of them, apart from the connection the
committer's transaction holds.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

from refundry.records.events import RecordStore
from refundry.records.history import History
from refundry.records.index import Pseudonyms

LOOKUP_CONNECTIONS = 4


class Lookups:
    """Up to ``size`` ``History`` objects, each on a store ``opener`` opens when one is first
    needed; safe from many threads. ``shared(store)`` is one over a store the caller owns."""

    def __init__(self, opener: Callable[[], RecordStore], size: int = LOOKUP_CONNECTIONS,
                 *, owned: bool = True) -> None:
        self.size, self._opener, self._owned = max(1, size), opener, owned
        self._free: queue.LifoQueue[History] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._stores: list[RecordStore] = []
        self._made = 0
        # The pseudonyms a lookup made (customer, card, order), for the committer's History
        # to index the same request with, not to compute again.
        self.names = Pseudonyms()

    @classmethod
    def shared(cls, store: RecordStore) -> Lookups:
        return cls(lambda: store, 1, owned=False)

    @contextlib.contextmanager
    def history(self) -> Iterator[History]:
        """A ``History`` no other thread uses until the block ends."""
        history = self._take()
        try:
            yield history
        finally:
            self._free.put(history)

    def _take(self) -> History:
        with contextlib.suppress(queue.Empty):
            return self._free.get_nowait()
        with self._lock:
            make = self._made < self.size
            self._made += make
        if not make:
            return self._free.get()
        try:
            store = self._opener()  # outside the lock: a slow connect holds up no lookup
        except BaseException:
            with self._lock:
                self._made -= 1
            raise
        with self._lock:
            self._stores.append(store)
        return History(store, self.names)

    def close(self) -> None:
        with self._lock:
            stores, self._stores = self._stores, []
        if self._owned:
            for store in stores:
                store.close()
