"""History lookups on a bounded set of connections (app/service/lookups.py)."""

from __future__ import annotations

import threading

from refundry.app.service.lookups import Lookups
from refundry.records.stores import open_store


def test_lookups_open_at_most_size_stores_and_never_share_one_between_threads(tmp_path):
    db = tmp_path / "s.db"
    open_store(db).close()
    opened, in_use, clashes = [], set(), []
    guard = threading.Lock()

    def opener():
        store = open_store(db, create=False)
        opened.append(store)
        return store

    lookups = Lookups(opener, size=3)
    barrier = threading.Barrier(8)

    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            use()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def use() -> None:
        for _ in range(20):
            with lookups.history() as history:
                with guard:
                    if id(history) in in_use:
                        clashes.append(history)
                    in_use.add(id(history))
                history.sync()  # real reads (and the index tables) on its own connection
                with guard:
                    in_use.discard(id(history))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and clashes == []
    assert 1 <= len(opened) <= 3
    lookups.close()
    # Closed with the pool: a read on a closed SQLite connection fails.
    assert all(_closed(s) for s in opened)


def test_a_shared_pool_leaves_the_callers_store_open(tmp_path):
    store = open_store(tmp_path / "s.db")
    lookups = Lookups.shared(store)
    with lookups.history() as history:
        assert history.store is store
    lookups.close()
    assert store.checkpoint().count == 0  # still usable
    store.close()


def _closed(store) -> bool:
    try:
        store.checkpoint()
    except Exception:  # noqa: BLE001 - any failure means closed here
        return True
    return False
