"""The running service over PostgreSQL reads through row-level security: with the application
filter deliberately broken in the server (it lets every client through), a reviewer of one
client still gets a 404 for another client's case, and none of its cases in the list, the
console queue, the status route or the report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from refundry.records.access import ScopedStore

from .conftest import CLIENTS, Tenants, identity_name, postgres_schema, serve_tenants

ACME, BETA = identity_name(("acme",)), identity_name(("beta",))


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    tmp: Path = tmp_path_factory.mktemp("rls")
    with postgres_schema() as url:
        for tenants in serve_tenants(tmp, url):
            for i, client in enumerate(CLIENTS * 2):
                tenants.submit(f"rls-{i}", client)
            yield tenants


@pytest.fixture
def no_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The application layer's bug: every client allowed, no client filter in its queries
    (the server runs in this process, so the patch reaches its threads)."""
    monkeypatch.setattr(ScopedStore, "allows", lambda self, client_id: True)
    monkeypatch.setattr(ScopedStore, "all", property(lambda self: True))


def _listed(tenants: Tenants, who: str) -> set[str]:
    page = tenants.call("GET", "/v1/cases?limit=1000", who)
    assert page.status_code == 200, page.text
    return {c["request_id"] for c in page.json()["cases"]}


def test_the_database_alone_hides_another_clients_cases(on_postgres: Tenants, no_filter: None):
    mine = {r for r, c in on_postgres.client_of.items() if c == "acme"}
    theirs = set(on_postgres.client_of) - mine
    assert _listed(on_postgres, ACME) == mine
    for rid in theirs:
        assert on_postgres.call("GET", f"/v1/cases/{rid}", ACME).status_code == 404
        assert on_postgres.call("GET", f"/v1/cases/{rid}/status", ACME).status_code == 404
        refused = on_postgres.call("POST", f"/v1/cases/{rid}/review", ACME,
                                   json={"verdict": "approve"})
        assert refused.status_code == 404, refused.text
    queue = on_postgres.console(ACME).get("/console/queue")
    assert queue.status_code == 200
    shown = set(re.findall(r"rls-\d+", queue.text))
    assert shown and shown <= mine
    report = on_postgres.call("GET", "/v1/report", ACME).json()
    assert "beta" not in str(report) and "gamma" not in str(report)


def test_without_the_bug_both_layers_agree(on_postgres: Tenants):
    for who, client in ((ACME, "acme"), (BETA, "beta")):
        assert _listed(on_postgres, who) == {r for r, c in on_postgres.client_of.items()
                                             if c == client}
    assert _listed(on_postgres, "admin") == set(on_postgres.client_of)


def test_a_reviewer_still_changes_its_own_clients_cases(on_postgres: Tenants, no_filter: None):
    rid = next(r for r, c in on_postgres.client_of.items() if c == "beta")
    status = on_postgres.call("GET", f"/v1/cases/{rid}/status", BETA)
    assert status.status_code == 200, status.text
    noted = on_postgres.call("POST", f"/v1/cases/{rid}/status", BETA, json={"channel": "email"})
    assert noted.status_code == 200, noted.text
    assert on_postgres.call("GET", f"/v1/cases/{rid}", BETA).json()["events"][-1]["type"] \
        == "note"
