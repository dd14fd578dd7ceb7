"""The one signal that crosses clients: the same card or address at another client is a flag,
computed from pseudonyms, and nothing else of the other client's case reaches the facts."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from refundry.core.engine import Engine
from refundry.records.history import History
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request

CARD = {"type": "card", "last4": "4242"}


def _request(rid: str, client: str, customer: str, last4: str, address: str) -> dict:
    request = make_request(rid, client_id=client,
                           customer={"id": customer, "address": address,
                                     "email": f"{customer}@example.com"})
    request["transaction"]["payment_method"] = {**CARD, "last4": last4}
    return request


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "x.db")
        return
    base = os.environ.get("REFUNDRY_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set REFUNDRY_TEST_POSTGRES_URL to run this against PostgreSQL too")
    import psycopg

    schema = f"cross_{uuid.uuid4().hex[:10]}"
    yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_same_card_or_address_at_another_client_is_only_a_flag(store_url):
    engine = Engine.from_path(RULESETS)
    with open_store(store_url) as store:
        first = _request("a-1", "acme", "alice", "4242", "1 Main St, Springfield")
        store.record(first, engine.evaluate(first), engine=engine, actor="svc")
        history = History(store)
        same_card = history.facts(_request("b-1", "beta", "bob", "4242", "9 Elm Rd"))
        same_address = history.facts(_request("b-2", "beta", "bob", "1111",
                                              "1  MAIN st, springfield"))
        unrelated = history.facts(_request("b-3", "beta", "bob", "1111", "9 Elm Rd"))
        own_client = history.facts(_request("a-2", "acme", "carol", "4242", "9 Elm Rd"))
    assert same_card and same_address and unrelated and own_client
    assert same_card["history"]["other_clients_flag"] is True
    assert same_address["history"]["other_clients_flag"] is True
    assert unrelated["history"]["other_clients_flag"] is False
    assert own_client["history"]["other_clients_flag"] is False  # acme's own history counts it
    assert own_client["history"]["customers_by_card_30d"] == 2
    # Counts stay within the client: beta sees one request with the card (its own), and no
    # trace of acme's customer, email, address or request id.
    assert same_card["history"]["requests_by_card_30d"] == 1
    text = json.dumps(same_card)
    assert not any(s in text for s in ("alice", "a-1", "acme", "Main"))
