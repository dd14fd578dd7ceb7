"""Row-level security in PostgreSQL, the second layer: for random identities, a reader
connection with the policies on returns no event, case, customer (history row) or export line
of a client outside the identity's, even when the application filter above it is wrong."""

from __future__ import annotations

import io
import itertools
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refundry.core.engine import Engine
from refundry.records.access import ScopedStore
from refundry.records.events import RecordError
from refundry.records.history import History
from refundry.records.rowsecurity import ReaderStore, install
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request
from .conftest import CLIENTS

PG_ENV = "REFUNDRY_TEST_POSTGRES_URL"
SUBSETS = [s for n in range(1, len(CLIENTS) + 1) for s in itertools.combinations(CLIENTS, n)]


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[str, str, dict[str, str]]]:
    """A PostgreSQL store with cases of every client and the policies installed: its URL, the
    reader role, and request id -> client."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"row-level security needs PostgreSQL: set {PG_ENV}="
                    "postgresql://postgres@127.0.0.1:5432/test to run it")
    import psycopg

    schema = f"tenancy_{uuid.uuid4().hex[:10]}"
    role = f"refundry_reader_{schema}"
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    engine, client_of = Engine.from_path(RULESETS), {}
    with open_store(url) as store:
        for i, client in enumerate(CLIENTS * 3):
            request = make_request(f"pg-{i}", client_id=client,
                                   customer={"id": f"c-{i}", "email": f"c{i}@example.com"})
            store.record(request, engine.evaluate(request), engine=engine, actor="svc")
            client_of[f"pg-{i}"] = client
        ScopedStore(store, "intruder", ["acme"]).refuse("approve", "beta", "pg-1")
        History(store).sync()
        install(store, role)
    try:
        yield url, role, client_of
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(subset=st.sampled_from(SUBSETS), bug=st.booleans())
def test_the_database_hides_other_clients_even_from_a_wrong_application_filter(secured, subset,
                                                                                bug):
    url, role, client_of = secured
    mine = {r for r, c in client_of.items() if c in subset}
    with ReaderStore(url, subset, role) as reader, open_store(url, create=False) as owner:
        # ``bug``: the application layer lets everything through; the database must not.
        # Reads go through the reader; refusals are recorded by the owner, who may append.
        view = ScopedStore(reader, "someone", ["*"] if bug else subset, recorder=owner)
        assert {c.request_id for c in view.cases()} == mine
        rows = reader.query("SELECT client_id FROM events")
        assert {c for (c,) in rows} <= {*subset, None}
        history = reader.query("SELECT client_id FROM history_index")
        assert {c for (c,) in history} == set(subset)
        out = io.StringIO()
        view.export(out)
        exported = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {e["request_id"] for e in exported if e["request_id"]} == mine
        for rid in set(client_of) - mine:
            with pytest.raises(RecordError, match=f"^no case for request `{rid}`$"):
                view.case(rid)


def test_without_a_client_setting_nothing_of_any_client_is_read(secured):
    url, role, _ = secured
    with ReaderStore(url, [], role) as reader:
        assert reader.cases() == []
        assert reader.query("SELECT count(*) FROM history_index") == [(0,)]


def test_the_reader_role_cannot_append(secured):
    url, role, _ = secured
    with ReaderStore(url, ["acme"], role) as reader, pytest.raises(Exception, match="denied"):
        reader.note("pg-0", "let me in", actor="someone")


def test_a_reader_view_changes_its_clients_cases_through_the_owner_and_no_other(secured):
    url, role, client_of = secured
    mine = next(r for r, c in client_of.items() if c == "acme")
    theirs = next(r for r, c in client_of.items() if c == "beta")
    with ReaderStore(url, ["acme"], role) as reader, open_store(url, create=False) as owner:
        view = ScopedStore(reader, "someone", ["acme"], recorder=owner)
        assert view.note(mine, "called the customer", actor="someone").events[-1].type == "note"
        with pytest.raises(RecordError, match=f"^no case for request `{theirs}`$"):
            view.note(theirs, "let me in", actor="someone")
        assert [e.type for e in owner.case(theirs).events][-1] != "note"
        refused = [e.details for e in owner.events() if e.details.get("request_id") == theirs]
        assert refused[-1]["client"] == "beta"
