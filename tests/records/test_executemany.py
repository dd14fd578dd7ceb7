"""``Transaction.executemany`` of an INSERT: every row must land, in order, with what ON
CONFLICT says about repeats and with NULLs, on both stores alike. (Sending it as INSERTs of
many rows on PostgreSQL was tried and taken out: a statement text that changes with the row
count is parsed anew each time, which cost the NATS worker more CPU than it saved the server.)"""

from __future__ import annotations

from refundry.records.stores import open_store

# A row count: a key repeats on each side of row 500, where the multi-row INSERTs (since
# removed) split a batch; executemany is psycopg's own now, and must keep the first row still.
MULTI_ROWS = 500


def test_executemany_inserts_every_row_as_one_row_at_a_time_would(store_url: str) -> None:
    n = MULTI_ROWS * 2 + 7
    rows = [(i, f"v{i}", None if i % 3 else f"n{i}") for i in range(n)]
    # Repeats of keys inserted before them, one before row 500 and one after: the first row wins.
    again = [(5, "again", None)], [(MULTI_ROWS + 1, "again", None)]
    with open_store(store_url) as store:
        with store.transaction() as tx:
            tx.execute("CREATE TABLE scratch (k BIGINT PRIMARY KEY, v TEXT NOT NULL, n TEXT)")
            tx.executemany("INSERT INTO scratch (k, v, n) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           [*rows[:10], *again[0], *rows[10:], *again[1]])
        got = store.query("SELECT k, v, n FROM scratch ORDER BY k")
    assert [tuple(r) for r in got] == rows
