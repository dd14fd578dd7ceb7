"""``POST /v1/rulesets/diff``: an analyst previews a ruleset change on requests over HTTP."""

from __future__ import annotations

from ..conftest import RULESETS
from .conftest import make_request

ACME = (RULESETS / "ecommerce" / "acme-eu.yaml").read_text(encoding="utf-8")


def _own(rid: str, amount: str) -> dict:
    req = make_request(rid, client_id="acme", amount=amount)
    req["customer"] = {"id": "c-" + rid}
    return req


def test_a_proposal_is_compared_with_the_rulesets_in_force(api):
    proposal = ACME.replace("gt: 500", "gt: 100").replace("version: 1.0.0", "version: 1.1.0")
    body = {"rulesets": {"acme-eu.yaml": proposal},
            "requests": [_own("p-1", "200.00"), _own("p-2", "50.00")]}
    r = api.call("POST", "/v1/rulesets/diff", "ana", json=body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["requests"], report["changed"], report["unchanged"]) == (2, 1, 1)
    change = report["decisions"][0]
    assert change["request_id"] == "p-1"
    assert change["old"]["outcome"] == "approve" and change["new"]["outcome"] == "manual_review"
    assert "acme-large-refund-review" in change["new"]["rules"]
    assert {"1.1.0"} == {s["version"] for s in report["new"]["rulesets"] if s["id"] == "acme-eu"}
    # Nothing was loaded or recorded: the version in force still decides.
    assert api.call("GET", "/v1/rulesets", "ana").json()["generation"] == 1
    assert api.call("POST", "/v1/decisions", "svc",
                    json=_own("p-1", "200.00")).json()["outcome"] == "approve"
    assert api.call("GET", "/v1/cases", "aud").json()["cases"] == []


def test_a_proposal_that_does_not_validate_or_is_malformed_is_refused(api):
    broken = ACME.replace("gt: 500", "gt: [")
    r = api.call("POST", "/v1/rulesets/diff", "ana",
                 json={"rulesets": {"acme-eu.yaml": broken}, "requests": [_own("p-3", "9")]})
    assert r.status_code == 422, r.text
    assert any(e.startswith("acme-eu.yaml:") for e in r.json()["errors"])
    assert "refundry-proposal" not in r.text  # the analyst's names, not a temporary path
    for body in ({"rulesets": {"../acme.yaml": ACME}, "requests": [_own("p-4", "9")]},
                 {"rulesets": {"acme-eu.yaml": ACME}, "requests": []},
                 {"rulesets": {"acme-eu.yaml": ACME}, "requests": [1]},
                 {"rulesets": {"acme-eu.yaml": ACME}, "requests": [_own("p-5", "9")],
                  "as_of": "yesterday"},
                 {"rulesets": [], "requests": []}):
        r = api.call("POST", "/v1/rulesets/diff", "ana", json=body)
        assert r.status_code == 400 and "`" in r.json()["error"], (body, r.text)
    r = api.call("POST", "/v1/rulesets/diff", "svc",
                 json={"rulesets": {"acme-eu.yaml": ACME}, "requests": [_own("p-6", "9")]})
    assert r.status_code == 403
