"""A real ``refundry serve`` application on 127.0.0.1, one per test, on a free port.

The server runs in a thread of the test process (uvicorn on a socket bound to port 0), with
its own SQLite store, a copy of the shipped rulesets (so reload tests can edit them) and a
token file with one identity per role plus a second reviewer and a submitter that also
reviews (to prove maker-checker against authenticated identities).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from refundry.app.service.api import Service, create_app
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

# make_request is re-exported: the tests in this folder import it from here.
from ..conftest import RULESETS, make_request  # noqa: F401

IDENTITIES = {
    "svc": ["service"], "rev1": ["reviewer"], "rev2": ["reviewer"], "ana": ["analyst"],
    "aud": ["auditor"], "both": ["service", "reviewer"],
}




class Running:
    def __init__(self, url: str, tokens: dict[str, str], service: Service, rulesets: Path,
                 db: Path) -> None:
        self.url, self.tokens, self.service = url, tokens, service
        self.rulesets, self.db = rulesets, db
        self.http = httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, path: str, who: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return self.http.request(method, path, headers=headers, **kw)


def start_server(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def make_tokens(path: Path) -> dict[str, str]:
    return {name: issue(path, name, [*roles, "admin"]) for name, roles in IDENTITIES.items()}


def running(tmp_path: Path, db: str | Path) -> Iterator[Running]:
    """A server over the store at ``db`` (a path or a postgresql:// URL)."""
    rulesets = tmp_path / "rulesets"
    shutil.copytree(RULESETS, rulesets)
    tokens = make_tokens(tmp_path / "tokens.json")
    service = Service(rulesets=Rulesets([rulesets]), store=open_store(db),
                      tokens=Tokens.load(tmp_path / "tokens.json"),
                      tokens_path=str(tmp_path / "tokens.json"))
    server, thread, url = start_server(create_app(service))
    running = Running(url, tokens, service, rulesets, Path(str(db)))
    try:
        yield running
    finally:
        running.http.close()
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Running]:
    yield from running(tmp_path, tmp_path / "refundry.db")


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """The server on SQLite, then on PostgreSQL in a schema of its own (skipped, saying so,
    without ``REFUNDRY_TEST_POSTGRES_URL``)."""
    if request.param == "sqlite":
        yield from running(tmp_path, tmp_path / "refundry.db")
        return
    url = os.environ.get("REFUNDRY_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL tests are off: set REFUNDRY_TEST_POSTGRES_URL to run them")
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    try:
        yield from running(tmp_path, f"{url}?schema={schema}")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
