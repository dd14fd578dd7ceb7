"""Property: for random identities, clients and cases, no API route, console page, report or
export shows a case, customer or ruleset outside the identity's clients, over real HTTP; a
case of another client answers exactly like a missing one, and every attempt on one is
recorded in the chain."""

from __future__ import annotations

import io
import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from refundry.records.access import ScopedStore, access_notes

from .conftest import CLIENTS, Tenants, identity_name

SUBSETS = [s for n in range(1, len(CLIENTS) + 1) for s in itertools.combinations(CLIENTS, n)]
NEW_CASES = st.lists(st.tuples(st.sampled_from(CLIENTS), st.sampled_from(["50", "600"])),
                     max_size=3)
_ids = itertools.count(1)


def _missing_like(tenants: Tenants, who: str, rid: str, path: str) -> None:
    """``rid`` (another client's) answers 404 with the very words a missing id gets."""
    answer = tenants.call("GET", path.format(rid), who)
    ghost = f"ghost-{next(_ids)}"
    missing = tenants.call("GET", path.format(ghost), who)
    assert answer.status_code == missing.status_code == 404
    assert answer.json()["error"] == missing.json()["error"].replace(ghost, rid)


def _listed(tenants: Tenants, who: str) -> list[str]:
    """Every case ``/v1/cases`` shows ``who``, page by page (small pages: the keyset and the
    client filter must agree on every page)."""
    ids, after = [], 0
    while after is not None:
        page = tenants.call("GET", f"/v1/cases?limit=3&after={after}", who).json()
        assert len(page["cases"]) <= 3
        ids += [c["request_id"] for c in page["cases"]]
        after = page["next"]
    return ids


def _check_api(tenants: Tenants, who: str, mine: set[str], theirs: set[str]) -> None:
    listed = _listed(tenants, who)
    assert set(listed) == mine and len(listed) == len(mine)
    for rid in sorted(mine)[:2]:
        assert tenants.call("GET", f"/v1/cases/{rid}", who).status_code == 200
    for rid in sorted(theirs)[:2]:
        _missing_like(tenants, who, rid, "/v1/cases/{}")
        _missing_like(tenants, who, rid, "/v1/cases/{}/status")
        for path, body in (("review", {"verdict": "approve"}),
                           ("review", {"verdict": "deny", "justification": "x"}),
                           ("dispute", {"reason": "x"})):
            assert tenants.call("POST", f"/v1/cases/{rid}/{path}", who,
                                json=body).status_code == 404
    report = tenants.call("GET", "/v1/report", who).json()
    assert report["summary"]["cases"] == len(mine)
    shown = {p["key"] for p in report["figures"]["approval_rate_by_client"]}
    assert shown <= set(tenants.client_of[r] for r in mine)
    loaded = tenants.call("GET", "/v1/rulesets", who).json()["rulesets"]
    assert any(r["client"] is None for r in loaded)  # baselines are law: everyone's
    assert all(r["client"] is None or r["client"] in who_clients(who) for r in loaded)


def who_clients(who: str) -> tuple[str, ...]:
    return tuple(who.removeprefix("of-").split("-"))


def _check_console(tenants: Tenants, who: str, mine: set[str], theirs: set[str]) -> None:
    http = tenants.console(who)
    queue = http.get("/console/queue").text
    assert not any(f">{rid}<" in queue or f"/cases/{rid}\"" in queue for rid in theirs)
    for rid in sorted(theirs)[:2]:
        assert http.get(f"/console/cases/{rid}").status_code == 404
    report = http.get("/console/report").text
    for client in set(CLIENTS) - set(who_clients(who)):
        assert f">{client}" not in report and f"{client} EUR" not in report
        assert f"{client}-eu" not in http.get("/console/rulesets").text
        counted = http.get(f"/console/queue?client={client}").text
        assert not any(rid in counted for rid in theirs)


def _check_export(tenants: Tenants, who: str, mine: set[str]) -> None:
    out = io.StringIO()
    ScopedStore(tenants.service.store, who, who_clients(who)).export(out)
    ids = set()
    for line in out.getvalue().splitlines():
        event = json.loads(line)
        if event["request_id"]:
            ids.add(event["request_id"])
        else:  # store-level notes: settings, and attempts on this identity's clients only
            client = (event["details"] or {}).get("client")
            assert client is None or client in who_clients(who)
    assert ids == mine


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(subset=st.sampled_from(SUBSETS), new=NEW_CASES)
def test_no_route_page_report_or_export_shows_another_clients_data(tenants, subset, new):
    for client, amount in new:
        tenants.submit(f"t-{next(_ids)}", client, amount)
    who = identity_name(subset)
    mine = {r for r, c in tenants.client_of.items() if c in subset}
    theirs = set(tenants.client_of) - mine
    _check_api(tenants, who, mine, theirs)
    _check_console(tenants, who, mine, theirs)
    _check_export(tenants, who, mine)


def test_a_reviewer_of_one_client_cannot_act_on_or_count_anothers_and_is_recorded(tenants):
    tenants.submit("b-1", "beta")
    before = tenants.call("GET", "/v1/cases/b-1", "of-beta").json()
    for path, body in (("review", {"verdict": "approve"}),
                       ("review", {"verdict": "deny", "justification": "no"}),
                       ("dispute", {"reason": "no"}),
                       ("dispute/resolution", {"resolution": "upheld", "explanation": "x"})):
        answer = tenants.call("POST", f"/v1/cases/b-1/{path}", "of-acme", json=body)
        assert answer.status_code == 404, answer.text
    queue = tenants.console("of-acme").get("/console/queue?client=beta").text
    assert "b-1" not in queue
    report = tenants.call("GET", "/v1/report?client=beta", "of-acme").json()
    assert report["summary"]["cases"] == 0
    after = tenants.call("GET", "/v1/cases/b-1", "of-beta").json()
    assert after["events"] == before["events"]  # nothing happened to the case
    notes = [n for n in access_notes(tenants.service.store.events())
             if n["identity"] == "of-acme" and n["client"] == "beta"]
    assert {n["action"] for n in notes} >= {"approve", "deny", "dispute", "resolve", "count",
                                            "report"}
    assert all(n["access"] == "refused" for n in notes)
    assert tenants.service.store.verify().ok  # the notes are part of a chain that verifies


def test_a_service_cannot_submit_for_another_client(tenants):
    from ..conftest import make_request

    answer = tenants.call("POST", "/v1/decisions?record=true", "of-acme",
                          json=make_request("s-1", client_id="beta"))
    assert answer.status_code == 403 and "beta" in answer.json()["error"]
    assert tenants.call("GET", "/v1/cases/s-1", "admin").status_code == 404
