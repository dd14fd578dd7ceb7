"""The HTTP API through real requests on 127.0.0.1: decisions, idempotency, roles, maker-checker
against authenticated identities, disputes, the customer's status, ruleset reload, health and
metrics."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from refundry.app.service.api import ROUTES, Service, create_app
from refundry.app.service.identity import Tokens
from refundry.app.service.rulesets import Rulesets
from refundry.core.resources import schema
from refundry.records.stores import open_store

from .conftest import RULESETS, make_request

DECISION = schema("decision.schema.json")
EVENT = schema("record-event.schema.json")


def decide(api, request, who="svc", record=True):
    return api.call("POST", "/v1/decisions", who, params={"record": str(record).lower()},
                    json=request)


def test_a_decision_without_record_is_evaluated_and_not_stored(api):
    r = decide(api, make_request("plain-1"), record=False)
    assert r.status_code == 200, r.text
    jsonschema.validate(r.json(), DECISION)
    assert r.json()["outcome"] == "approve" and r.json()["amount"] == "119.99"
    assert r.headers["x-refundry-recorded"] == "none"
    assert api.call("GET", "/v1/cases", "aud").json()["cases"] == []


def test_recording_is_idempotent_by_request_id(api):
    first = decide(api, make_request("idem-1"))
    again = decide(api, make_request("idem-1"))
    assert first.status_code == again.status_code == 200
    assert first.headers["x-refundry-recorded"] == "created"
    assert again.headers["x-refundry-recorded"] == "existing"
    assert again.content == first.content  # the first decision, as recorded, byte for byte
    cases = api.call("GET", "/v1/cases", "aud").json()
    assert len(cases["cases"]) == 1 and cases["cases"][0]["submitted_by"] == "svc"
    other = decide(api, make_request("idem-1", amount="50.00"))
    assert other.status_code == 409 and "different content" in other.json()["error"]


def test_an_invalid_request_is_refused_with_every_problem_and_not_recorded(api):
    bad = make_request("bad-1")
    del bad["currency"]
    bad["jurisdiction"] = "Germany"
    r = decide(api, bad)
    assert r.status_code == 422
    assert any("currency" in e for e in r.json()["errors"])
    r = api.call("POST", "/v1/decisions", "svc", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not json")
    assert decide(api, ["a list"]).status_code == 400
    assert api.call("GET", "/v1/cases", "aud").json()["cases"] == []


def test_tokens_and_roles(api):
    assert api.call("POST", "/v1/decisions", json=make_request("x")).status_code == 401
    r = api.call("POST", "/v1/decisions", json=make_request("x"),
                 headers={"Authorization": "Bearer rf_not-a-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert decide(api, make_request("x"), who="aud").status_code == 403
    assert decide(api, make_request("x"), who="rev1").status_code == 403
    assert api.call("GET", "/v1/cases", "svc").status_code == 403
    assert api.call("GET", "/v1/verify", "rev1").status_code == 403
    assert api.call("POST", "/v1/rulesets/reload", "aud").status_code == 403
    token_file = (api.db.parent / "tokens.json").read_text()
    assert not any(t in token_file for t in api.tokens.values())  # digests only


def test_maker_checker_is_enforced_against_authenticated_identities(api):
    assert decide(api, make_request("big-1", client_id="acme", amount="600"),
                  who="both").json()["outcome"] == "manual_review"
    path = "/v1/cases/big-1/review"
    approve = {"verdict": "approve", "justification": "checked the receipt"}
    own = api.call("POST", path, "both", json=approve)
    assert own.status_code == 409 and "submitted request" in own.json()["error"]
    assert api.call("POST", path, "aud", json=approve).status_code == 403
    first = api.call("POST", path, "rev1", json=approve)
    assert first.status_code == 200 and first.json()["status"] == "manual_review"
    assert first.json()["approvals"] == ["rev1"] and first.json()["required_approvals"] == 2
    twice = api.call("POST", path, "rev1", json=approve)
    assert twice.status_code == 409 and "second, different reviewer" in twice.json()["error"]
    done = api.call("POST", path, "rev2", json=approve)
    assert done.status_code == 200 and done.json()["status"] == "approved"
    case = api.call("GET", "/v1/cases/big-1", "aud").json()
    assert [(e["type"], e["actor"]) for e in case["events"]] == [
        ("evaluated", "both"), ("reviewed", "rev1"), ("approved", "rev2")]
    for event in case["events"]:
        jsonschema.validate(event, EVENT)
    verify = api.call("GET", "/v1/verify", "aud").json()
    assert verify["ok"] is True and verify["count"] == 3


def test_a_deny_needs_a_justification_and_unknown_cases_are_404(api):
    decide(api, make_request("big-2", client_id="acme", amount="600"))
    r = api.call("POST", "/v1/cases/big-2/review", "rev1", json={"verdict": "deny"})
    assert r.status_code == 422 and "justification" in r.json()["error"]
    r = api.call("POST", "/v1/cases/big-2/review", "rev1", json={"verdict": "maybe"})
    assert r.status_code == 400
    r = api.call("POST", "/v1/cases/nope/review", "rev1", json={"verdict": "deny",
                                                                 "justification": "x"})
    assert r.status_code == 404
    assert api.call("GET", "/v1/cases/nope", "aud").status_code == 404
    r = api.call("POST", "/v1/cases/big-2/review", "rev1",
                 json={"verdict": "deny", "justification": "receipt forged"})
    assert r.status_code == 200 and r.json()["status"] == "denied"


def test_a_dispute_is_opened_and_resolved_by_reviewers(api):
    decide(api, make_request("d-1"))
    r = api.call("POST", "/v1/cases/d-1/dispute", "rev1", json={"reason": "i was charged twice"})
    assert r.status_code == 200 and r.json()["status"] == "disputed"
    early = api.call("POST", "/v1/cases/d-1/dispute", "rev1", json={"reason": "again"})
    assert early.status_code == 409
    r = api.call("POST", "/v1/cases/d-1/dispute/resolution", "rev2",
                 json={"resolution": "overturned", "explanation": "you are right",
                       "amount": "109.99"})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert r.json()["dispute"]["resolved_by"] == "rev2"


def test_the_customer_status_is_localised_and_giving_it_is_recorded(api):
    decide(api, make_request("s-1"))
    en = api.call("GET", "/v1/cases/s-1/status", "svc")
    de = api.call("GET", "/v1/cases/s-1/status", "svc", params={"lang": "de"})
    by_header = api.call("GET", "/v1/cases/s-1/status", "svc",
                         headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert en.status_code == de.status_code == 200
    assert en.json()["language"] == "en" and de.json()["language"] == "de"
    assert de.json()["message"] != en.json()["message"] and by_header.json() == de.json()
    assert "119,99" in json.dumps(de.json()) or de.json()["amount"] == "119.99"
    assert len(api.call("GET", "/v1/cases/s-1", "aud").json()["events"]) == 1  # GET is safe
    given = api.call("POST", "/v1/cases/s-1/status", "svc", json={"channel": "portal"})
    assert given.status_code == 200
    last = api.call("GET", "/v1/cases/s-1", "aud").json()["events"][-1]
    assert last["type"] == "note" and last["actor"] == "svc"
    assert last["details"]["communicated"]["channel"] == "portal"


NEW_ACME = """\
ruleset: acme-eu
version: 1.1.0
effective_from: 2024-01-02
client: acme
extends: eu-consumer
windows:
  withdrawal:
    period: 30 days
rules:
  - id: acme-large-refund-review
    when: {field: amount, gt: 1000}
    effect: manual_review
    code: large_refund_review
    message: Refunds above 1000 are checked by a second person at Acme.
    customer_message: Your refund is being checked by our team.
"""


def test_rulesets_reload_without_restart_and_a_bad_version_is_refused(api):
    big = make_request("r-1", client_id="acme", amount="600")
    assert decide(api, big, record=False).json()["outcome"] == "manual_review"
    before = api.call("GET", "/v1/rulesets", "ana").json()
    assert before["generation"] == 1
    assert {"acme-eu"} <= {r["id"] for r in before["rulesets"]}

    broken = api.rulesets / "ecommerce" / "acme-eu-1.1.yaml"
    broken.write_text(NEW_ACME.replace("gt: 1000", "gt: [1000"), encoding="utf-8")
    refused = api.call("POST", "/v1/rulesets/reload", "ana")
    assert refused.status_code == 422 and refused.json()["ok"] is False
    assert any("acme-eu-1.1.yaml:" in e for e in refused.json()["errors"])
    assert api.call("GET", "/v1/rulesets", "ana").json()["generation"] == 1
    assert decide(api, big, record=False).json()["outcome"] == "manual_review"  # old one serves

    broken.write_text(NEW_ACME, encoding="utf-8")
    ok = api.call("POST", "/v1/rulesets/reload", "ana")
    # (The file watcher may have swapped it in a moment earlier; then this is one more.)
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["generation"] >= 2
    after = decide(api, big, record=False).json()
    assert after["outcome"] == "approve" and after["ruleset"]["version"] == "1.1.0"
    versions = {(r["id"], r["version"]) for r in api.call("GET", "/v1/rulesets", "aud")
                .json()["rulesets"]}
    assert {("acme-eu", "1.0.0"), ("acme-eu", "1.1.0")} <= versions


def test_health_readiness_metrics_and_the_openapi_document(api):
    assert api.call("GET", "/healthz").json() == {"status": "alive"}
    assert api.call("GET", "/readyz").json()["status"] == "ready"
    decide(api, make_request("m-1"))
    api.call("GET", "/v1/cases", "svc")  # a 403
    text = api.call("GET", "/metrics").text
    assert 'refundry_decisions_total{outcome="approve",recorded="true"} 1.0' in text
    assert 'refundry_http_requests_total{method="GET",route="/v1/cases",status="403"} 1.0' in text
    doc = api.call("GET", "/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    served = {(p, m.lower()) for p, m, _ in ROUTES} - {("/v1/openapi.json", "get")}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    # One source of truth: the request schema is the file's, re-rooted, not a copy that drifts.
    from_file = schema("refund-request.schema.json")
    in_doc = doc["components"]["schemas"]["RefundRequest"]
    assert in_doc["properties"] == from_file["properties"]
    assert api.call("GET", "/v1/nothing").status_code == 404
    assert api.call("DELETE", "/v1/cases").json()["error"] == "method not allowed for this route"


def test_concurrent_requests_are_each_recorded_once(api):
    """Many request threads share the committer: every answer is durable, a request sent by
    eight clients at once is one case, and they all get its first decision."""
    from concurrent.futures import ThreadPoolExecutor

    same = make_request("dup-1")
    jobs = [make_request(f"c-{i}") for i in range(60)] + [same] * 8
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda req: decide(api, req), jobs))
    assert {a.status_code for a in answers} == {200}
    dup = [a for a, req in zip(answers, jobs, strict=True) if req is same]
    assert len({a.text for a in dup}) == 1, [a.text for a in dup][:2]
    assert sorted(a.headers["x-refundry-recorded"] for a in dup) == ["created"] + ["existing"] * 7
    assert len(api.call("GET", "/v1/cases", "aud", params={"limit": 1000}).json()["cases"]) == 61
    assert api.call("GET", "/v1/verify", "aud").json() == {
        **api.call("GET", "/v1/verify", "aud").json(), "ok": True, "count": 61}


def test_every_process_picks_up_changed_ruleset_files_by_itself(api):
    """No reload call: the server sees the files change (as each process of a --workers N
    server does), refuses a broken version and takes the fixed one."""
    import time

    big = make_request("w-1", client_id="acme", amount="600")
    new = api.rulesets / "ecommerce" / "acme-eu-1.1.yaml"
    new.write_text(NEW_ACME.replace("gt: 1000", "gt: [1000"), encoding="utf-8")
    deadline = time.monotonic() + 20
    refused = 'refundry_ruleset_reloads_total{result="refused"} '
    while refused not in (text := api.call("GET", "/metrics").text) or refused + "0.0" in text:
        assert time.monotonic() < deadline, "the broken files were never looked at"
        time.sleep(0.2)
    assert api.call("GET", "/v1/rulesets", "ana").json()["generation"] == 1
    assert decide(api, big, record=False).json()["outcome"] == "manual_review"
    new.write_text(NEW_ACME, encoding="utf-8")
    deadline = time.monotonic() + 20
    while api.call("GET", "/v1/rulesets", "ana").json()["generation"] == 1:
        assert time.monotonic() < deadline, "the changed files were not loaded"
        time.sleep(0.2)
    assert decide(api, big, record=False).json()["outcome"] == "approve"
    text = api.call("GET", "/metrics").text
    # A file caught half-written is one more refusal; there is at least the broken version's.
    assert 'refundry_ruleset_reloads_total{result="refused"}' in text
    assert 'refundry_ruleset_reloads_total{result="refused"} 0.0' not in text
    assert 'refundry_ruleset_reloads_total{result="ok"} 1.0' in text


def test_analysts_and_auditors_read_the_report(api):
    decide(api, make_request("rep-1"))
    decide(api, make_request("rep-2", client_id="acme", amount="600"))
    r = api.call("GET", "/v1/report", "ana", params={"client": "acme"})
    assert r.status_code == 200 and r.json()["summary"]["cases"] == 1
    assert api.call("GET", "/v1/report", "aud").json()["summary"]["cases"] == 2
    assert api.call("GET", "/v1/report", "svc").status_code == 403
    assert api.call("GET", "/v1/report", "ana", params={"since": "May"}).status_code == 400


def test_a_token_issued_while_serving_works_without_a_restart(api):
    import time

    from refundry.app.service.identity import issue

    token = issue(api.db.parent / "tokens.json", "late", ["auditor", "admin"])
    deadline = time.monotonic() + 20
    while api.call("GET", "/v1/cases", headers={"Authorization": f"Bearer {token}"}) \
            .status_code == 401:
        assert time.monotonic() < deadline, "the new token was not picked up"
        time.sleep(0.2)
    r = api.call("GET", "/v1/cases", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_every_api_answer_is_neither_sniffed_nor_cached(api):
    """As the console's pages: a JSON answer is never rendered as something else, and no
    proxy or browser cache keeps a decision, a case or a refusal for the next caller."""
    answers = [decide(api, make_request("hdr-1")), decide(api, make_request("hdr-2"), record=False),
               api.call("GET", "/v1/cases", "aud"), api.call("GET", "/v1/cases", "svc"),
               api.call("GET", "/v1/cases/none-such", "aud"), api.call("POST", "/v1/decisions"),
               api.call("GET", "/v1/report", "ana"), api.call("GET", "/v1/openapi.json"),
               api.call("GET", "/v1/nothing"), api.call("DELETE", "/v1/cases")]
    assert [r.status_code for r in answers] == [200, 200, 200, 403, 404, 401, 200, 200, 404, 405]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["cache-control"] == "no-store", r.url


def test_requests_decided_in_one_group_are_each_answered_on_their_own(api):
    """Recorded requests in flight together are decided as one group (decider.py): an invalid
    one, one whose id is recorded with other content and a second copy of one in the group are
    each answered as they would be alone, and the others are recorded."""
    from concurrent.futures import ThreadPoolExecutor

    assert decide(api, make_request("grp-taken")).status_code == 200
    bad = make_request("grp-bad")
    del bad["currency"]
    jobs = ([make_request(f"grp-{i}") for i in range(20)]
            + [bad, make_request("grp-taken", amount="50.00"), make_request("grp-0")])
    pool = ThreadPoolExecutor(len(jobs))
    assert api.service.lookups is not None
    # While the test holds the lookups' one connection, the decider waits at its first
    # group's lookup and the rest of the requests queue up into the next group.
    with api.service.lookups.history():
        futures = [pool.submit(decide, api, job) for job in jobs]
        while _in_flight(api) < len(jobs) + 1:  # and the /metrics call itself
            assert not any(f.done() for f in futures)
    answers = [f.result() for f in futures]
    pool.shutdown()
    assert [a.status_code for a in answers] == [200] * 20 + [422, 409, 200]
    assert any("currency" in e for e in answers[20].json()["errors"])
    assert "different content" in answers[21].json()["error"]
    assert {answers[0].headers["x-refundry-recorded"], answers[22].headers[
        "x-refundry-recorded"]} == {"created", "existing"}
    assert answers[0].content == answers[22].content
    assert api.call("GET", "/v1/verify", "aud").json()["count"] == 21


def test_a_store_that_cannot_be_read_for_history_answers_503_and_records_nothing(tmp_path):
    """The history lookups' connection fails (the database is gone): the group is refused as
    the store being unavailable, not as a conflict, and nothing is recorded."""
    from refundry.app.service.lookups import Lookups
    from refundry.records.events import RecordError

    from .conftest import Running, make_tokens, start_server

    tokens = make_tokens(tmp_path / "tokens.json")
    looked_up = open_store(tmp_path / "r.db")
    service = Service(rulesets=Rulesets([RULESETS]), store=open_store(tmp_path / "r.db"),
                      tokens=Tokens.load(tmp_path / "tokens.json"),
                      lookups=Lookups(lambda: looked_up, 1))

    def gone(*_args: Any) -> Any:
        raise RecordError(f"records store `{looked_up.url}`: connection refused")

    looked_up.query = gone  # type: ignore[method-assign]
    server, thread, url = start_server(create_app(service))
    api = Running(url, tokens, service, tmp_path, tmp_path / "r.db")
    try:
        r = decide(api, make_request("gone-1"))
        assert r.status_code == 503 and "did not answer" in r.json()["error"], r.text
        assert decide(api, make_request("gone-2"), record=False).status_code == 200
        assert api.call("GET", "/v1/cases", "aud").json()["cases"] == []
    finally:
        api.http.close()
        server.should_exit = True
        thread.join(30)


def _in_flight(api) -> float:
    for line in api.call("GET", "/metrics").text.splitlines():
        if line.startswith("refundry_http_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no refundry_http_in_flight in /metrics")


def test_a_customers_next_request_counts_the_one_answered_while_others_are_in_flight(
        any_store_api):
    """The lookups run a stage ahead of the decider and the committer (decider.py): while
    other customers' requests keep every stage busy, each request a customer sends after the
    answer to its previous one counts that one (looked up after its commit), and every
    request is one case."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    api = any_store_api
    stop = threading.Event()

    def others(k: int) -> int:
        n = 0
        while not stop.is_set():
            r = decide(api, make_request(f"busy-{k}-{n}", customer={"id": f"busy-{k}-{n}"}))
            assert r.status_code == 200, r.text
            n += 1
        return n

    with ThreadPoolExecutor(6) as pool:
        busy = [pool.submit(others, k) for k in range(6)]
        try:
            mine = [decide(api, make_request(f"mine-{i}", customer={"id": "cust-race"}))
                    for i in range(8)]
        finally:
            stop.set()
        sent = sum(f.result() for f in busy)
    assert [r.status_code for r in mine] == [200] * 8
    counts = []
    for i in range(8):
        event = api.call("GET", f"/v1/cases/mine-{i}", "aud").json()["events"][0]
        counts.append(event["request"]["facts"]["history"]["requests_by_customer_30d"])
    assert counts == list(range(1, 9))
    assert api.call("GET", "/v1/verify", "aud").json()["count"] == sent + 8
