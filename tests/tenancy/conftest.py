"""A real server (API and console) with three client businesses and one identity per set of
clients, none of them an admin: what each may see is what tenancy decides."""

from __future__ import annotations

import itertools
import shutil
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


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    tmp = tmp_path_factory.mktemp("tenancy")
    shutil.copytree(RULESETS, tmp / "rulesets")
    add_overlays(tmp / "rulesets")
    path = tmp / "tokens.json"
    tokens = {"admin": issue(path, "admin", ["service", "auditor", "admin"])}
    for n in range(1, len(CLIENTS) + 1):
        for subset in itertools.combinations(CLIENTS, n):
            tokens[identity_name(subset)] = issue(path, identity_name(subset), ROLES, subset)
    service = Service(rulesets=Rulesets([tmp / "rulesets"]), store=open_store(tmp / "t.db"),
                      tokens=Tokens.load(path))
    server, thread, url = start_server(create_app_with_console(service))
    try:
        yield Tenants(url, tokens, service)
    finally:
        server.should_exit = True
        thread.join(20)
