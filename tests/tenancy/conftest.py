"""A real server (API and console) with three client businesses and one identity per set of
clients, none of them an admin: what each may see is what tenancy decides."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from refundry.app.console.views import create_app_with_console
from refundry.app.service.api import Service
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request
from ..console.conftest import csrf_of
from ..service.conftest import start_server

CLIENTS = ("acme", "beta", "gamma")
ROLES = ["service", "reviewer", "auditor", "analyst"]


def identity_name(clients: tuple[str, ...]) -> str:
    return "of-" + "-".join(clients)


def add_overlays(rulesets: Path) -> None:
    """Acme's overlay (large refunds reviewed by two people) for beta and gamma too, so every
    client has cases waiting in review and a ruleset of its own."""
    acme = (rulesets / "ecommerce" / "acme-eu.yaml").read_text(encoding="utf-8")
    for client in CLIENTS[1:]:
        (rulesets / "ecommerce" / f"{client}-eu.yaml").write_text(
            acme.replace("ruleset: acme-eu", f"ruleset: {client}-eu")
                .replace("client: acme", f"client: {client}").replace("acme-", f"{client}-"),
            encoding="utf-8")


class Tenants:
    def __init__(self, url: str, tokens: dict[str, str], service: Service) -> None:
        self.url, self.tokens, self.service = url, tokens, service
        self.http = httpx.Client(base_url=url, timeout=30)
        self.client_of: dict[str, str] = {}  # request id -> client, of every case submitted
        self._consoles: dict[str, httpx.Client] = {}

    def call(self, method: str, path: str, who: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.http.request(method, path, headers=headers, **kw)

    def submit(self, rid: str, client: str, amount: str = "600") -> None:
        answer = self.call("POST", "/v1/decisions?record=true", "admin",
                           json=make_request(rid, client_id=client, amount=amount))
        assert answer.status_code == 200, answer.text
        self.client_of[rid] = client

    def console(self, who: str) -> httpx.Client:
        """A console session signed in as ``who`` (kept: signing in once per identity)."""
        if who not in self._consoles:
            http = httpx.Client(base_url=self.url, timeout=30)
            page = http.get("/console/login")
            login = http.post("/console/login", data={"csrf": csrf_of(page.text),
                                                      "token": self.tokens[who]})
            assert login.status_code == 303, login.text
            self._consoles[who] = http
        return self._consoles[who]


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a schema of its own in the test PostgreSQL, dropped afterwards (skipped,
    saying so, without ``REFUNDRY_TEST_POSTGRES_URL``)."""
    base = os.environ.get("REFUNDRY_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL tests are off: set REFUNDRY_TEST_POSTGRES_URL="
                    "postgresql://postgres@127.0.0.1:5432/test to run them")
    import psycopg

    schema = f"tenants_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tenants(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """The tenants' server on SQLite (the application filter alone), then on PostgreSQL
    (that filter and row-level security under it)."""
    tmp = tmp_path_factory.mktemp("tenancy")
    if request.param == "sqlite":
        yield from serve_tenants(tmp, str(tmp / "t.db"))
    else:
        with postgres_schema() as url:
            yield from serve_tenants(tmp, url)


def serve_tenants(tmp: Path, db: str) -> Iterator[Tenants]:
    shutil.copytree(RULESETS, tmp / "rulesets")
    add_overlays(tmp / "rulesets")
    path = tmp / "tokens.json"
    tokens = {"admin": issue(path, "admin", ["service", "auditor", "admin"])}
    for n in range(1, len(CLIENTS) + 1):
        for subset in itertools.combinations(CLIENTS, n):
            tokens[identity_name(subset)] = issue(path, identity_name(subset), ROLES, subset)
    service = Service(rulesets=Rulesets([tmp / "rulesets"]), store=open_store(db),
                      tokens=Tokens.load(path))
    server, thread, url = start_server(create_app_with_console(service))
    try:
        yield Tenants(url, tokens, service)
    finally:
        server.should_exit = True
        thread.join(20)
