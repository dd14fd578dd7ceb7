"""Publishing rulesets over the API: an analyst puts in force only its clients' overlays; a
baseline only an admin; loaded rulesets of other clients are not even listed."""

from __future__ import annotations

import shutil

import httpx

from refundry.app.service import api as api_module
from refundry.app.service.api import Service, create_app
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.rulesets import Rulesets
from refundry.records.access import access_notes
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request
from ..service.conftest import start_server
from .conftest import add_overlays


def test_reload_publishes_only_what_the_identity_may_change(tmp_path, monkeypatch):
    # The file watch would load the edits by itself; here only the route decides.
    monkeypatch.setattr(api_module, "RULESET_CHECK_S", 3600.0)
    rulesets = tmp_path / "rulesets"
    shutil.copytree(RULESETS, rulesets)
    add_overlays(rulesets)
    path = tmp_path / "tokens.json"
    tokens = {"ana": issue(path, "ana", ["analyst"], ["acme"]),
              "boss": issue(path, "boss", ["analyst", "admin"])}
    service = Service(rulesets=Rulesets([rulesets]), store=open_store(tmp_path / "p.db"),
                      tokens=Tokens.load(path))
    server, thread, url = start_server(create_app(service))
    http = httpx.Client(base_url=url, timeout=30)

    def reload(who: str) -> httpx.Response:
        return http.post("/v1/rulesets/reload", headers={"Authorization": f"Bearer {tokens[who]}"})

    def bump(name: str) -> None:
        file = rulesets / "ecommerce" / name
        file.write_text(file.read_text().replace("version: 1.0.0", "version: 1.0.1"))

    try:
        listed = http.get("/v1/rulesets", headers={"Authorization": f"Bearer {tokens['ana']}"})
        assert {r["client"] for r in listed.json()["rulesets"]} == {None, "acme"}
        bump("beta-eu.yaml")
        answer = reload("ana")
        assert answer.status_code == 403 and "`beta-eu` of client `beta`" in answer.text
        assert service.rulesets.current.generation == 1  # nothing was put in force
        bump("acme-eu.yaml")
        assert reload("ana").status_code == 403  # beta's change is still waiting in the files
        assert reload("boss").status_code == 200
        bump("eu-consumer.yaml")
        answer = reload("ana")
        assert answer.status_code == 403 and "baseline `eu-consumer`" in answer.text
        proposal = {"requests": [make_request("p-1", client_id="acme")]}
        for name, status in (("acme-eu.yaml", 200), ("beta-eu.yaml", 403),
                             ("eu-consumer.yaml", 403)):
            text = (rulesets / "ecommerce" / name).read_text()
            answer = http.post("/v1/rulesets/diff", json={**proposal, "rulesets": {name: text}},
                               headers={"Authorization": f"Bearer {tokens['ana']}"})
            assert answer.status_code == status, answer.text
        notes = access_notes(service.store.events())
        assert [n["action"] for n in notes] == ["publish"] * 3 + ["diff"] * 2
    finally:
        server.should_exit = True
        thread.join(20)
