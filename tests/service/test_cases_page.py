"""``GET /v1/cases``: pages by keyset, filtered by status in SQL, on both stores."""

from __future__ import annotations

from .conftest import make_request

EXPECTED = {"a-1": "approved", "m-1": "manual_review", "m-2": "denied", "d-1": "disputed",
            "u-1": "approved", "o-1": "approved"}


def _cases(api, **params):
    r = api.call("GET", "/v1/cases", "aud", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _own(rid: str, **changes: object) -> dict:
    """A request of a customer and an order of its own, so history facts send none to review."""
    req = make_request(rid, **changes)
    req["customer"] = {"id": "c-" + rid}
    req["transaction"]["id"] = "t-" + rid
    return req


def _make_every_status(api) -> None:
    def post(path, who, body):
        r = api.call("POST", path, who, json=body)
        assert r.status_code == 200, r.text

    for rid in ("a-1", "d-1", "u-1"):
        post("/v1/decisions?record=true", "svc", _own(rid))
    for rid in ("m-1", "m-2", "o-1"):
        post("/v1/decisions?record=true", "svc", _own(rid, client_id="acme", amount="600"))
    deny = {"verdict": "deny", "justification": "receipt forged"}
    post("/v1/cases/m-2/review", "rev1", deny)
    post("/v1/cases/o-1/review", "rev1", deny)
    for rid in ("d-1", "u-1", "o-1"):
        post(f"/v1/cases/{rid}/dispute", "rev1", {"reason": "please look again"})
    post("/v1/cases/u-1/dispute/resolution", "rev2",
         {"resolution": "upheld", "explanation": "the decision stands"})
    post("/v1/cases/o-1/dispute/resolution", "rev2",
         {"resolution": "overturned", "explanation": "you are right", "amount": "600.00"})


def test_cases_are_paged_by_keyset_and_filtered_by_status(any_store_api):
    api = any_store_api
    _make_every_status(api)
    seen, after = [], 0
    while True:
        page = _cases(api, limit=4, after=after)
        assert len(page["cases"]) <= 4
        seen += [c["request_id"] for c in page["cases"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == ["a-1", "d-1", "u-1", "m-1", "m-2", "o-1"]  # oldest first, each once
    for status in ("approved", "manual_review", "denied", "disputed", "processed", "refunded"):
        got = {c["request_id"]: c["status"] for c in _cases(api, status=status)["cases"]}
        assert got == {rid: s for rid, s in EXPECTED.items() if s == status}, status
    # The filter agrees with the case as folded from its events.
    for rid, status in EXPECTED.items():
        assert api.call("GET", f"/v1/cases/{rid}", "aud").json()["status"] == status
    last = _cases(api, status="approved", limit=2)
    assert [c["request_id"] for c in last["cases"]] == ["a-1", "u-1"] and last["next"]
    rest = _cases(api, status="approved", limit=2, after=last["next"])
    assert [c["request_id"] for c in rest["cases"]] == ["o-1"] and rest["next"] is None


def test_a_bad_cursor_or_status_is_a_400(api):
    for params in ({"after": "-1"}, {"after": "x"}, {"status": "lost"}, {"limit": "0"}):
        r = api.call("GET", "/v1/cases", "aud", params=params)
        assert r.status_code == 400 and "`" in r.json()["error"]
