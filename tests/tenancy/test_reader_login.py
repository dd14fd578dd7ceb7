"""The database login a deployment gives `refundry serve` (docs/deployment.md): not a
superuser, owner of its schema. Set up as the docs say (the reader role made and granted to it
by a superuser) it starts; without that, the start stops with one line that names the role,
never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from refundry.records.events import RecordError
from refundry.records.rowsecurity import READER_ROLE, install
from refundry.records.stores import open_store

from ..conftest import make_request
from ..service.test_serve_cli import EXE, start

PG_ENV = "REFUNDRY_TEST_POSTGRES_URL"


@pytest.fixture
def login() -> Iterator[tuple[str, str, str]]:
    """A fresh non-superuser login that may create schemas in the test database: the URL of a
    schema of its own as that login, the login's name, and the superuser URL."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"the reader-login tests need PostgreSQL: set {PG_ENV}="
                    "postgresql://postgres@127.0.0.1:5432/test to run them")
    import psycopg

    name, schema = f"rfd_login_{uuid.uuid4().hex[:8]}", f"login_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(base)
    database = parts.path.lstrip("/")
    as_login = urlunsplit(parts._replace(netloc=f"{name}@{parts.hostname}:{parts.port or 5432}"))
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{name}"')
        # The cluster-wide reader role the docs have a superuser create (other tests share it).
        conn.execute(f"DO $$ BEGIN CREATE ROLE {READER_ROLE} NOLOGIN; "
                     "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")
    try:
        yield f"{as_login}?schema={schema}", name, base
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


def test_a_login_not_granted_the_reader_role_stops_the_start_in_one_line(login, tmp_path):
    url, name, _ = login
    out = subprocess.run([EXE, "serve", "--db", url, "--port", "9", "--tokens", "t.json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("refundry: cannot read") and f"`{READER_ROLE}`" in lines[-1]
    assert "permission denied to set role" in lines[-1]
    assert "Traceback" not in out.stderr


def test_a_login_set_up_as_the_docs_say_starts_and_reads_through_the_reader_role(login,
                                                                                 tmp_path):
    url, name, superuser = login
    import psycopg

    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(f'GRANT {READER_ROLE} TO "{name}"')  # the docs' one GRANT, no CREATEROLE
    service, auditor = (_issue(tmp_path, who, role) for who, role in
                        (("svc", "service"), ("aud", "auditor")))
    proc, http = start(tmp_path, "--db", url, "--tokens", "t.json")
    try:
        made = httpx.post(http + "/v1/decisions?record=true", json=make_request("login-1"),
                          headers={"Authorization": f"Bearer {service}"})
        assert made.status_code == 200, made.text
        # A client-scoped identity's read: the server switches to the reader role for it.
        seen = httpx.get(http + "/v1/cases/login-1",
                         headers={"Authorization": f"Bearer {auditor}"})
        assert seen.status_code == 200, seen.text
        assert seen.json()["request_id"] == "login-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_login_that_may_not_create_the_reader_role_is_told_so_in_one_line(login):
    url, _, _ = login
    missing = f"rfd_missing_{uuid.uuid4().hex[:8]}"
    with open_store(url) as store, pytest.raises(RecordError) as refused:
        install(store, missing)
    message = str(refused.value)
    assert "\n" not in message and f"`{missing}`" in message
    assert "permission denied to create role" in message


def _issue(folder: Path, who: str, role: str) -> str:
    """A token for ``who`` acting for the example's client only (printed once, on stdout)."""
    out = subprocess.run([EXE, "serve", "--tokens", "t.json", "--issue", who, "--role", role,
                          "--client", "any-shop"], cwd=folder, check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()

