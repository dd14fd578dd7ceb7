"""Running the API: configuration, JSON logs, uvicorn with a graceful shutdown.

Uvicorn is the ASGI server (the reference one, with ``--workers`` processes sharing a socket);
on SIGTERM it stops accepting, lets the requests in flight finish (up to ``GRACE_S``) and then
runs the application's shutdown, which closes the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from refundry.app.logs import json_log_config
from refundry.app.service.api import MULTIPROC_ENV, Service
from refundry.app.service.identity import ROLES, Tokens, issue
from refundry.app.service.lookups import Lookups
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

GRACE_S = 30
CONFIG_ENV = "REFUNDRY_SERVE_CONFIG"


@attrs.frozen
class ServiceConfig:
    rulesets: tuple[str, ...]
    db: str
    tokens: str
    backend: str = "compiled"

    def to_env(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_env(cls) -> ServiceConfig:
        data = json.loads(os.environ[CONFIG_ENV])
        return cls(tuple(data["rulesets"]), data["db"], data["tokens"], data["backend"])


def build_service(config: ServiceConfig) -> Service:
    rulesets = Rulesets(config.rulesets, backend=config.backend)  # invalid rulesets stop here
    tokens = Tokens.load(config.tokens)
    store = open_store(config.db, create=True)
    return Service(rulesets=rulesets, store=store, tokens=tokens,
                   lookups=Lookups(lambda: open_store(config.db, create=False)),
                   tokens_path=config.tokens,
                   session_secret=session_secret(config.tokens))


def session_secret(tokens_path: str | Path) -> str:
    """The key that signs console sessions, kept beside the token file (0600) so that every
    worker process and a restart accept the same sessions; made on first use."""
    path = Path(str(tokens_path) + ".session-key")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


def app_from_env() -> Any:
    """The factory each uvicorn worker process calls (``--workers N``): the API and the
    console."""
    from refundry.app.console.views import create_app_with_console

    return create_app_with_console(build_service(ServiceConfig.from_env()))


def first_tokens(path: str | Path) -> dict[str, str] | None:
    """A new token file with one identity per role (``<role>-1``), for a first start; the
    tokens are returned to be shown once. None when the file exists. They act for every
    client (``admin``): issue client-scoped tokens with ``--issue NAME --client ID``."""
    if Path(path).exists():
        return None
    return {role: issue(path, f"{role}-1", sorted({role, "admin"})) for role in ROLES}


def serve(config: ServiceConfig, *, host: str, port: int, workers: int = 1,
          log_level: str = "info") -> None:
    build_service(config).close()  # fail now, with one line, on bad rulesets or tokens
    os.environ[CONFIG_ENV] = config.to_env()
    with _shared_metrics(workers):
        _run(config, host=host, port=port, workers=workers, log_level=log_level)


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several processes, a fresh directory for their metric files (api.Metrics), named
    to them by the environment they start with; removed at the end. One the operator named in
    ``PROMETHEUS_MULTIPROC_DIR`` is used as it is and kept."""
    if workers < 2 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="refundry-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _run(config: ServiceConfig, *, host: str, port: int, workers: int, log_level: str) -> None:
    import uvicorn

    print(json.dumps({"level": "info", "logger": "refundry.service", "message": "serving",
                      "url": f"http://{host}:{port}/v1/", "workers": workers,
                      "openapi": f"http://{host}:{port}/v1/openapi.json"}),
          file=sys.stderr, flush=True)
    uvicorn.run("refundry.app.service.server:app_from_env", factory=True, host=host, port=port,
                workers=workers if workers > 1 else None, log_config=json_log_config(log_level),
                timeout_graceful_shutdown=GRACE_S, server_header=False, access_log=False)
