"""Running the API: configuration, JSON logs, uvicorn with a graceful shutdown.

Uvicorn is the ASGI server (the reference one, with ``--workers`` processes sharing a socket);
on SIGTERM it stops accepting, lets the requests in flight finish (up to ``GRACE_S``) and then
runs the application's shutdown, which closes the store.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import attrs

from refundry.app.logs import json_log_config
from refundry.app.service.api import Service, create_app
from refundry.app.service.identity import ROLES, Tokens, issue
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
    return Service(rulesets=rulesets, store=open_store(config.db, create=True), tokens=tokens,
                   tokens_path=config.tokens)


def app_from_env() -> Any:
    """The factory each uvicorn worker process calls (``--workers N``)."""
    return create_app(build_service(ServiceConfig.from_env()))


def first_tokens(path: str | Path) -> dict[str, str] | None:
    """A new token file with one identity per role (``<role>-1``), for a first start; the
    tokens are returned to be shown once. None when the file exists."""
    if Path(path).exists():
        return None
    return {role: issue(path, f"{role}-1", [role]) for role in ROLES}


def serve(config: ServiceConfig, *, host: str, port: int, workers: int = 1,
          log_level: str = "info") -> None:
    import uvicorn

    build_service(config).close()  # fail now, with one line, on bad rulesets or tokens
    os.environ[CONFIG_ENV] = config.to_env()
    print(json.dumps({"level": "info", "logger": "refundry.service", "message": "serving",
                      "url": f"http://{host}:{port}/v1/", "workers": workers,
                      "openapi": f"http://{host}:{port}/v1/openapi.json"}),
          file=sys.stderr, flush=True)
    uvicorn.run("refundry.app.service.server:app_from_env", factory=True, host=host, port=port,
                workers=workers if workers > 1 else None, log_config=json_log_config(log_level),
                timeout_graceful_shutdown=GRACE_S, server_header=False, access_log=False)
