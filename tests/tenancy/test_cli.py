"""``--as NAME``: the CLI against a shared store, as one identity of the token file."""

from __future__ import annotations

import json

import pytest

from refundry.app.service.identity import issue
from refundry.cli import main
from refundry.core.engine import Engine
from refundry.records.access import access_notes
from refundry.records.stores import open_store

from ..conftest import RULESETS, make_request


@pytest.fixture
def shared(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    engine = Engine.from_path(RULESETS)
    with open_store(tmp_path / "shared.db") as store:
        for rid, client in (("a-1", "acme"), ("a-2", "acme"), ("b-1", "beta")):
            request = make_request(rid, client_id=client, amount="600")
            store.record(request, engine.evaluate(request), engine=engine, actor="svc")
    issue(tmp_path / "tokens.json", "ann", ["reviewer", "auditor"], ["acme"])
    issue(tmp_path / "tokens.json", "root", ["auditor", "admin"])

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--db", str(tmp_path / "shared.db"),
                     "--tokens", str(tmp_path / "tokens.json")])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run, tmp_path


def test_list_show_export_and_report_see_only_the_identitys_clients(shared):
    run, tmp = shared
    code, out, _ = run("records", "list", "--json", "--as", "ann")
    assert code == 0 and {c["request_id"] for c in json.loads(out)} == {"a-1", "a-2"}
    code, _, err = run("records", "show", "b-1", "--as", "ann")
    assert code == 1 and err.strip() == "refundry: no case for request `b-1`"
    code, out, _ = run("records", "export", "--as", "ann")
    assert code == 0 and {json.loads(x)["request_id"] for x in out.splitlines()} == {"a-1", "a-2"}
    code, _, _ = run("report", "--as", "ann", "--format", "json", "--out", str(tmp / "r.json"))
    assert code == 0 and json.loads((tmp / "r.json").read_text())["summary"]["cases"] == 2
    code, out, _ = run("records", "list", "--json", "--as", "root")
    assert code == 0 and len(json.loads(out)) == 3


def test_a_reviewer_of_one_client_cannot_approve_anothers_and_it_is_recorded(shared):
    run, tmp = shared
    code, _, err = run("review", "approve", "b-1", "--by", "ann", "--as", "ann")
    assert code == 1 and "no case for request `b-1`" in err
    code, _, err = run("review", "approve", "a-1", "--by", "bob", "--as", "ann")
    assert code == 1 and "`--by bob` is not `--as ann`" in err
    code, out, _ = run("review", "list", "--json", "--as", "ann")
    assert code == 0 and {c["request_id"] for c in json.loads(out)} == {"a-1", "a-2"}
    with open_store(tmp / "shared.db") as store:
        assert [e.type for e in store.case("b-1").events] == ["evaluated"]  # untouched
        notes = access_notes(store.events())
    assert [(n["identity"], n["client"], n["action"], n["access"]) for n in notes] == [
        ("ann", "beta", "approve", "refused")]


def test_every_client_only_for_an_admin(shared):
    run, tmp = shared
    data = json.loads((tmp / "tokens.json").read_text())
    data["tokens"][0]["clients"] = ["*"]  # ann, a reviewer, edited to see everything
    (tmp / "tokens.json").write_text(json.dumps(data))
    code, _, err = run("records", "list", "--as", "ann")
    assert code == 1 and "`*` (every client) needs the `admin` role" in err


def test_an_analyst_validates_and_diffs_only_its_clients_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    issue(tmp_path / "tokens.json", "ana", ["analyst"], ["acme"])
    issue(tmp_path / "tokens.json", "boss", ["analyst", "admin"])
    acme, northwind = (RULESETS / "ecommerce" / f for f in ("acme-eu.yaml", "northwind-eu.yaml"))
    baseline = RULESETS / "ecommerce" / "eu-consumer.yaml"

    def run(*args: object) -> tuple[int, str]:
        code = main([*(str(a) for a in args), "--tokens", str(tmp_path / "tokens.json")])
        return code, capsys.readouterr().err

    assert run("validate", acme, "--as", "ana")[0] == 0
    code, err = run("validate", northwind, "--as", "ana")
    assert code == 1 and "may not change ruleset `northwind-eu` of client `northwind`" in err
    code, err = run("validate", baseline, "--as", "ana")
    assert code == 1 and "may not change baseline `eu-consumer`; only an admin may" in err
    assert run("validate", baseline, "--as", "boss")[0] == 0
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(make_request("d-1", client_id="acme")) + "\n")
    common = ["--requests", requests, "--with", RULESETS]
    assert run("diff", acme, acme, *common, "--as", "ana")[0] == 0
    code, err = run("diff", northwind, northwind, *common, "--as", "ana")
    assert code == 1 and "`northwind`" in err
