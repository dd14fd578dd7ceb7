"""Fixtures for the records tests: one store per test, SQLite and PostgreSQL alike.

PostgreSQL tests read ``REFUNDRY_TEST_POSTGRES_URL`` and each runs in a schema of its own,
dropped afterwards; without the variable they are skipped, saying how to enable them.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

import refundry
from refundry.records.events import RecordStore
from refundry.records.stores import open_store

# The engine tests' request and paths; the slow-test switch in ../conftest.py covers these too.
# make_request is re-exported: the tests in this folder import it from here.
from ..conftest import RULESETS, make_request  # noqa: F401

PG_ENV = "REFUNDRY_TEST_POSTGRES_URL"
PG_SKIP = (f"PostgreSQL tests are off: set {PG_ENV}=postgresql://postgres@127.0.0.1:5432/test "
           "to run them")




class StepClock:
    """A deterministic clock: each call is one second after the last."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            self.now += dt.timedelta(seconds=1)
            return self.now


@pytest.fixture(scope="session")
def engine() -> refundry.Engine:
    return refundry.Engine.from_path(RULESETS)


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema={schema}"


def drop_pg_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> Iterator[str]:
    """The URL of a fresh, empty store of each kind."""
    if request.param == "sqlite":
        yield str(tmp_path / "records.db")
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: "
                        "pip install -e '.[postgres]'")
    schema = f"refundry_test_{uuid.uuid4().hex[:12]}"
    try:
        yield _pg_schema_url(base, schema)
    finally:
        drop_pg_schema(base, schema)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def store(store_url, clock) -> Iterator[RecordStore]:
    s = open_store(store_url, clock=clock)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def record(store, engine) -> Callable[..., object]:
    """Evaluate and record a request; returns the case."""
    def run(request: dict, actor: str = "alice"):
        decision = engine.evaluate(request)
        case, _created = store.record(request, decision, engine=engine, actor=actor)
        return case
    return run


def the_lifecycle(store: RecordStore, engine: refundry.Engine) -> None:
    """Six cases recorded (the odd ones above the four-eyes threshold), ``r-1`` approved by
    two reviewers, then ``after_the_reviews``: every event type the chain holds."""
    for i in range(6):
        req = make_request(f"r-{i}", **({"client_id": "acme", "amount": "600"} if i % 2 else {}))
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.review("r-1", actor="bob", approve=True, reason="ok")
    store.review("r-1", actor="carol", approve=True, reason="ok too")
    after_the_reviews(store, engine)


def after_the_reviews(store: RecordStore, engine: refundry.Engine) -> None:
    """The rest of the lifecycle the chain tests work through once ``r-0`` .. ``r-3`` are
    recorded and reviewed: a denial, processing and refund, a note, a dispute opened and
    overturned; every event type the chain holds is then there to tamper with."""
    store.review("r-3", actor="bob", approve=False, reason="used")
    store.mark("r-0", "processed", actor="ops")
    store.mark("r-0", "refunded", actor="ops")
    store.note("r-2", "called the customer", actor="dave")
    store.open_dispute("r-3", actor="cs", reason="unopened", engine=engine)
    store.resolve_dispute("r-3", actor="lead", resolution="overturned", explanation="sorry")
