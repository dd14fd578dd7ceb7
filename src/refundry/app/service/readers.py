"""The service's reads through PostgreSQL row-level security (docs/security.md).

Every read a client-scoped identity makes goes through a ``rowsecurity.ReaderStore`` for its
set of clients, so a bug in the application filter (``records/access.py``) still cannot show
another client's rows: the database hides them too. One reader (one connection) per client
set, kept for the next request of any identity with the same set: a service has a handful of
such sets, and a connection per request would cost a round trip or three each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from refundry.records.rowsecurity import READER_ROLE, ReaderStore, install
from refundry.records.stores import PostgresStore

MAX_READERS = 32  # connections; past it the least recently used is closed


class Readers:
    """``ReaderStore``s beside the owner's ``store``, by client set; safe from many threads.
    ``install`` (idempotent) runs first, so the policies exist before the first read."""

    def __init__(self, store: PostgresStore, role: str = READER_ROLE,
                 limit: int = MAX_READERS) -> None:
        install(store, role)
        self.url, self.role, self.limit = store.connect_url, role, limit
        # A login that may not take the role (docs/deployment.md) fails the start, in one
        # line, rather than every scoped read later.
        ReaderStore(self.url, (), role).close()
        self.lock = threading.Lock()
        self.open: OrderedDict[frozenset[str], ReaderStore] = OrderedDict()

    def get(self, clients: frozenset[str]) -> ReaderStore:
        with self.lock:
            reader = self.open.get(clients)
            if reader is not None:
                self.open.move_to_end(clients)
                return reader
        # Connected outside the lock: one slow connect must not hold up every other read.
        made = ReaderStore(self.url, clients, self.role)
        with self.lock:
            reader = self.open.setdefault(clients, made)
            self.open.move_to_end(clients)
            evicted = [self.open.popitem(last=False)[1]
                       for _ in range(len(self.open) - self.limit)]
        for extra in ([made] if reader is not made else []) + evicted:
            # A request still holding an evicted reader finishes its read first (close waits
            # for the store's lock); a later read on it would connect again on its own.
            extra.close()
        return reader

    def close(self) -> None:
        with self.lock:
            readers, self.open = list(self.open.values()), OrderedDict()
        for reader in readers:
            reader.close()
