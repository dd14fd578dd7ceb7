"""A bounded schemathesis run against the OpenAPI document, over real HTTP: for generated
inputs (valid and invalid), no route answers 500, and every status code, content type and
response body is the one the document promises.

The token used holds every role, so every route is reached past authentication; maker-checker
then answers 409 where it applies, which the document lists. ``REFUNDRY_FUZZ_EXAMPLES`` raises
the number of examples per operation for a longer run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from refundry.app.service.api import Service, create_app
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.openapi import document
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

from ..conftest import RULESETS
from .conftest import make_request, start_server

EXAMPLES = int(os.environ.get("REFUNDRY_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(RULESETS, tmp / "rulesets")
    token = issue(tmp / "tokens.json", "root", ["service", "reviewer", "analyst", "auditor", "admin"])
    service = Service(rulesets=Rulesets([tmp / "rulesets"]), store=open_store(tmp / "f.db"),
                      tokens=Tokens.load(tmp / "tokens.json"))
    server, thread, url = start_server(create_app(service))
    # A few real cases, so the case routes meet existing ids as well as unknown ones.
    import httpx
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for rid, amount in (("fuzz-1", "50.00"), ("fuzz-2", "600")):
            http.post("/v1/decisions", params={"record": "true"},
                      json=make_request(rid, client_id="acme", amount=amount))
    yield url, token
    server.should_exit = True
    thread.join(30)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_api_keeps_its_openapi_promises(case: schemathesis.Case,
                                            served: tuple[str, str]) -> None:
    url, token = served
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"},
                           checks=CHECKS, timeout=30)
