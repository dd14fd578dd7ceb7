"""On PostgreSQL, each history lookup statement is planned through the index made for its
lookup, in the cached (generic) plan a server keeps for it, whatever the table's statistics:
on a fresh table, on one with rows but no statistics yet (where a client-led index used to
take every lookup, a scan of the client's whole history), and on an analyzed one. A store made
with the older client-led indexes is upgraded to these. The facts themselves are held by
test_history.py and test_history_batched.py."""

from __future__ import annotations

import re

import pytest

from refundry.records.history import History
from refundry.records.index import COLUMNS
from refundry.records.stores import open_store

from .conftest import make_request
from .test_outcome_column import _sql

PG = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)

# Per statement, the index of each read of history_index, in plan order.
_OTHER = ["history_card_clients"] * 2 + ["history_address_clients"] * 2
_KEYED = ["history_customer_client", "history_email_client", "history_address_clients",
          "history_card_clients"]
_COUNTS = ["history_index_pkey", *_KEYED, *_OTHER]
_PRIOR = ["history_transaction_client"]
_BASELINE = ["history_currency_client"]


def _request(n: int) -> dict:
    req = make_request(f"q-{n}", client_id="acme")
    req["customer"] = {"id": f"c-{n}", "email": f"c{n}@mail.example", "address": f"Weg {n}"}
    req["transaction"]["payment_method"] = {"type": "card", "last4": "4242"}
    return req


def _statements(store) -> list[tuple[str, tuple]]:
    """The reads of history_index a lookup of one request (the short UNION form) and of a
    group of eight (the array form) make, with their arguments."""
    ran: list[tuple[str, tuple]] = []
    query, query_all = store.query, store.query_all

    def one(sql, args=()):
        ran.append((sql, tuple(args)))
        return query(sql, args)

    def each(reads):
        ran.extend((sql, tuple(args)) for sql, args in reads)
        return query_all(reads)

    store.query, store.query_all = one, each
    try:
        history = History(store)
        history.facts(_request(0))
        history.facts_each([_request(n) for n in range(8)])
    finally:
        store.query, store.query_all = query, query_all
    first: dict[str, tuple] = {}
    for sql, args in ran:
        if "history_index" in sql:
            first.setdefault(sql, args)
    return list(first.items())


def _generic_plan(url: str, sql: str, args: tuple) -> str:
    from psycopg import sql as psql

    numbered = iter(range(1, 1000))
    text = re.sub(r"\?", lambda _m: f"${next(numbered)}", sql)
    values = ", ".join(psql.Literal(a).as_string(None) for a in args)
    rows = _sql(url, "DEALLOCATE ALL", f"PREPARE lookup AS {text}",
                "SET plan_cache_mode = force_generic_plan",
                f"EXPLAIN EXECUTE lookup({values})")
    return "\n".join(row[0] for row in rows)


def _indexes(plan: str) -> list[str]:
    assert not re.search(r"Seq Scan on history_index", plan), plan
    return re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? "
                      r"(?:using|on) (\w+)", plan)


def _rows(n: int) -> list[tuple]:
    """``n`` index rows of one large client (the one looked up), in COLUMNS order."""
    return [(f"f-{i}", i + 1, "acme", f"2026-01-{1 + i % 28:02d}T00:00:00Z", f"cust-{i % 300}",
             f"mail-{i % 300}", f"addr-{i % 200}", f"card-{i % 40}", f"txn-{i}", "10", "EUR",
             "20", "10", "approve", "approved") for i in range(n)]


@PG
@pytest.mark.parametrize(("rows", "analyzed"), [(0, False), (300, False), (3000, True)])
def test_each_lookup_reads_its_own_index_in_the_generic_plan(store_url, rows, analyzed):
    assert len(_rows(1)[0]) == len(COLUMNS)
    with open_store(store_url) as store:
        History(store).bulk_insert(_rows(rows))
        if analyzed:
            _sql(store_url, "ANALYZE history_index")
        statements = _statements(store)
    expected = {"'recorded'": _COUNTS, "'prior'": _PRIOR, "currency = ?": _BASELINE}
    seen = []
    for sql, args in statements:
        kind = next(k for k in expected if k in sql)
        seen.append(kind)
        assert _indexes(_generic_plan(store_url, sql, args)) == expected[kind], (kind, sql)
    # The short UNION form (one lookup) and the array form (eight), and the baseline.
    assert sorted(seen) == sorted(["'recorded'", "'prior'"] * 2 + ["currency = ?"])
    assert any("unnest" in sql for sql, _args in statements)


@PG
def test_a_store_with_the_client_led_indexes_is_upgraded(store_url, engine):
    old = {"customer": "customer_key", "email": "email_key", "address": "address_key",
           "card": "card_key", "transaction": "transaction_key", "client": "currency"}
    with open_store(store_url) as store:
        History(store).ensure()
        req = _request(1)
        store.record(req, engine.evaluate(req), engine=engine, actor="shop")
        before = History(store).facts(_request(2))
    _sql(store_url, *(f"CREATE INDEX history_{name} ON history_index (client_id, {column}, "
                      "requested_at)" for name, column in old.items()))
    with open_store(store_url) as store:
        assert History(store).facts(_request(2)) == before
    names = {name for (name,) in _sql(store_url, "SELECT indexname FROM pg_indexes WHERE "
                                      "schemaname = current_schema() AND tablename = "
                                      "'history_index'")}
    assert names == {"history_index_pkey", *_KEYED, *_PRIOR, *_BASELINE}
