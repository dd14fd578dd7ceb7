"""What the API takes in: the core's limits on hostile JSON, and history facts that the caller
cannot overrule."""

from __future__ import annotations

from refundry.app.service.api import MAX_BODY

from .conftest import make_request


def test_hostile_bodies_are_refused_in_one_line(api):
    deep = b"[" * 100_000 + b"]" * 100_000
    huge = b'{"note": "' + b"x" * (MAX_BODY + 10) + b'"}'
    for body, words in ((deep, "nests too deeply"), (huge, "larger than"),
                        (b'{"a": NaN}', "nan"), (b"\xff{}", "utf-8"),
                        (b'{"n": 1' + b"0" * 5000 + b"}", "digits")):
        r = api.call("POST", "/v1/decisions?record=true", "svc", content=body)
        assert r.status_code == 400, (words, r.text[:200])
        error = r.json()["error"]
        assert words in error.lower() and "\n" not in error
    assert api.call("GET", "/v1/cases", "aud").json()["cases"] == []


def test_history_facts_come_from_the_store_not_the_caller(api):
    first = make_request("h-1")
    assert api.call("POST", "/v1/decisions?record=true", "svc", json=first).status_code == 200
    second = make_request("h-2", facts={"history": {"requests_by_customer_30d": 0}, "vip": True})
    r = api.call("POST", "/v1/decisions?record=true", "svc", json=second)
    assert r.status_code == 200
    facts = api.call("GET", "/v1/cases/h-2", "aud").json()["events"][0]["request"]["facts"]
    assert facts["history"]["requests_by_customer_30d"] == 2  # h-1 and h-2 itself
    assert facts["vip"] is True
