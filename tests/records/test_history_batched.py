"""`refundry run --db` looks up the history of a group of requests together (``facts_many``):
every request must get the facts, and so the decision, that looking it up alone would give it
once the requests before it are recorded. Checked on a history with shared keys: the planted
abuse of tests/fraudgen.py (a card's type and last four digits shared by many customers, an
address by six, duplicates, a serial returner), a second client with the same card and address,
and one customer and one order asked about twice in a row, so groups must be cut.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from refundry.app.runner import StoreRecorder, run
from refundry.plugins.history import Enricher, plugins_with_history
from refundry.records import stores
from refundry.records.events import RecordStore
from refundry.records.history import History
from refundry.records.stores import open_store
from tests import fraudgen

from .conftest import PG_ENV, drop_pg_schema

SALT = "3c" * 32


def requests() -> list[dict[str, Any]]:
    out = fraudgen.abusive(300)
    # Customers of their own whose cards end alike: one card key.
    day = fraudgen.START + dt.timedelta(days=40)
    out += [fraudgen.request(f"card-{i}", day + dt.timedelta(minutes=i), f"holder-{i}",
                             amount=Decimal("20"), last4="1234") for i in range(12)]
    shared = out[-1]
    other = copy.deepcopy(shared)  # the same card and address at another client
    other.update(request_id="other-client", client_id="southwind")
    twice = copy.deepcopy(shared)  # the same customer and order again, right after
    twice.update(request_id="again", amount="1.00")
    return [*out, other, twice]


def second_url(url: str) -> str:
    return url + "b"  # a file beside it, or a schema beside it


@pytest.fixture
def urls(store_url: str) -> Iterator[tuple[str, str]]:
    yield store_url, second_url(store_url)
    if store_url.startswith("postgresql://"):
        drop_pg_schema(os.environ[PG_ENV], store_url.rsplit("schema=", 1)[1] + "b")


def run_into(url: str, tmp: Path, parts: list[list[dict[str, Any]]], engine: Any, *,
             index: bool = False) -> RecordStore:
    store = open_store(url)
    plugins = plugins_with_history(store)
    for i, part in enumerate(parts):
        src = tmp / f"in-{i}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in part))
        recorder = StoreRecorder(store, engine, "batch", index=History(store) if index else None)
        summary = run(source="jsonl", input_path=src, out=tmp / f"out-{i}.jsonl", engine=engine,
                      record=recorder, plugins=plugins, id_key=store.salt)
        assert summary.decided == len(part)
    return store


def test_batched_lookups_give_the_facts_of_one_at_a_time(urls, tmp_path, engine,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    reqs = requests()
    # A history already in the store, then a run on top of it.
    parts = [reqs[:120], reqs[120:]]
    sizes: list[int] = []
    facts_many = History.facts_many

    def counted(self: History, group: Any, **kwargs: Any) -> Any:
        answers = facts_many(self, group, **kwargs)
        sizes.append(len(answers))
        return answers

    monkeypatch.setattr(History, "facts_many", counted)
    (tmp_path / "a").mkdir()
    # The batched run indexes each group's cases as it records them (as `refundry run --db`
    # does); the one-at-a-time run leaves them to the lookups' sync.
    batched = run_into(urls[0], tmp_path / "a", parts, engine, index=True)
    monkeypatch.setattr(Enricher, "prefetch", None)  # one request at a time, as before
    (tmp_path / "b").mkdir()
    alone = run_into(urls[1], tmp_path / "b", parts, engine)
    try:
        got = {c.request_id: (c.request, c.decision) for c in batched.cases()}
        want = {c.request_id: (c.request, c.decision) for c in alone.cases()}
        assert got == want and len(got) == len(reqs)
        # Indexed with the records: nothing left for a sync to read, and the index is the
        # one the chain makes.
        assert History(batched).sync() == 0 and History(alone).sync() > 0
        assert batched.verify().ok
    finally:
        batched.close()
        alone.close()
    # Groups were looked up together, and cut where a request depends on an earlier one.
    assert max(sizes) > 5 and len(parts) < len(sizes) < len(reqs) / 3
    history = {rid: req["facts"]["history"] for rid, (req, _d) in got.items()}
    assert history["card-11"]["customers_by_card_30d"] == 12
    assert max(h["customers_by_address_30d"] for h in history.values()) >= 6
    assert history["other-client"]["other_clients_flag"] is True
    assert history["again"]["requests_for_transaction"] >= 1
    assert history["again"]["requests_by_customer_30d"] >= 2


def test_postgresql_looks_up_the_facts_sqlite_does(tmp_path, engine, monkeypatch) -> None:
    """PostgreSQL answers a group's lookups with statements of its own (the lookups as arrays,
    one statement text whatever the group): its facts must be SQLite's, request by request."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"set {PG_ENV} to run it")
    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    reqs = requests()
    parts = [reqs[:150], reqs[150:]]
    schema = f"refundry_test_{os.urandom(6).hex()}"
    (tmp_path / "pg").mkdir()
    (tmp_path / "lite").mkdir()
    on_pg = run_into(f"{base}{'&' if '?' in base else '?'}schema={schema}", tmp_path / "pg",
                     parts, engine)
    on_lite = run_into(str(tmp_path / "lite" / "records.db"), tmp_path / "lite", parts, engine)
    try:
        got = {c.request_id: c.request["facts"] for c in on_pg.cases()}
        want = {c.request_id: c.request["facts"] for c in on_lite.cases()}
        assert got == want and len(got) == len(reqs)
        # The history is one that shares keys: the comparison covers counts above one.
        assert max(f["history"]["customers_by_card_30d"] for f in got.values()) >= 12
        assert any(f["history"].get("other_clients_flag") for f in got.values())
        # A group of 8 or more goes as arrays, a lookup or a few as a short UNION (a worker's,
        # the API's per request): both must give the same facts, counts above one included.
        shared = [r for r in reqs if got[r["request_id"]]["history"]["customers_by_card_30d"] > 1]
        again = [{**r, "request_id": f"again-{i}"} for i, r in enumerate(shared[:40])]
        history = History(on_pg)
        one_by_one = [history.facts(r, sync=False) for r in again]
        assert len(again) >= 8 and history.facts_each(again) == one_by_one
        assert max(f["history"]["customers_by_card_30d"] for f in one_by_one) >= 2
    finally:
        on_pg.close()
        on_lite.close()
        drop_pg_schema(base, schema)


def test_a_lookup_ahead_stops_at_the_first_request_the_group_in_flight_could_change(
        store: RecordStore) -> None:
    """`facts_many(..., ahead=True)`: the requests the previous call answered may not be
    recorded yet (`run --workers N` looks the next group up while the workers decide one), so
    the prefix stops before the first request sharing a key with them, and may be empty."""
    from .conftest import make_request

    def req(rid: str, customer: str, order: str) -> dict[str, Any]:
        out = make_request(rid)
        out["customer"] = {**out["customer"], "id": customer, "email": f"{customer}@example.com"}
        out["transaction"] = {**out["transaction"], "id": order}
        return out

    history = History(store)
    in_flight = [req("a1", "ann", "o-1"), req("a2", "bob", "o-2")]
    assert len(history.facts_many(in_flight)) == 2
    nxt = [req("b1", "cem", "o-3"), req("b2", "dan", "o-4"), req("b3", "ann", "o-5"),
           req("b4", "eve", "o-6")]
    assert len(history.facts_many(nxt, ahead=True)) == 2  # b3 is ann's, like a1
    # Ahead of b1 and b2 (what the last call answered): a first request of dan's gets none.
    rest = [req("b5", "dan", "o-9"), *nxt[2:]]
    assert history.facts_many(rest, ahead=True) == []
    # Once those are recorded, a lookup that is not ahead answers up to the next shared key.
    assert len(history.facts_many(rest)) == 3
    # Without a shared key nothing stops a lookup ahead.
    assert len(history.facts_many([req("c1", "fay", "o-7"), req("c2", "gus", "o-8")],
                                  ahead=True)) == 2


def test_requests_keyed_elsewhere_get_the_facts_of_requests_keyed_here(
        store_url, tmp_path, engine, monkeypatch) -> None:
    """`run --workers N` has its workers parse and key each request for its lookup
    (``key_request``): the facts must be those the store's own keying gives, request by
    request; a request keyed under another salt is keyed again, and one that does not parse
    gets none."""
    from refundry.records.history import ParsedData, key_request
    from refundry.records.index import Pseudonyms

    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    reqs = requests()
    store = run_into(store_url, tmp_path, [reqs[:200]], engine)
    try:
        rest = [*reqs[200:], {**reqs[-1], "request_id": "broken", "amount": "lots"}]
        names = Pseudonyms()
        here = History(store)
        want = here.facts_each(rest)
        assert want[-1] is None and max(
            f["history"]["customers_by_card_30d"] for f in want if f is not None) >= 2
        keyed = [ParsedData(r, None, key_request(r, bytes(store.salt), names)) for r in rest]
        assert here.facts_each(keyed) == want
        elsewhere = [ParsedData(r, None, key_request(r, b"another store's salt", names))
                     for r in rest]
        assert History(store).facts_each(elsewhere) == want
        assert elsewhere[0].keyed is not None and elsewhere[0].keyed.lookup != keyed[0].keyed.lookup
    finally:
        store.close()
