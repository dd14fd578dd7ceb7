"""The console over real HTTP: sign-in, CSRF on every state change, security headers, roles,
and a review queue that pages by keyset through many cases."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from refundry.app.console.demo import request as demo_request

from .conftest import csrf_of

PAGES = ("/console/queue", "/console/cases/demo-1001", "/console/rulesets", "/console/report")


def test_pages_need_a_session_and_a_bad_token_is_refused(console):
    http = console.client()
    for path in PAGES:
        r = http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    page = http.get("/console/login")
    r = http.post("/console/login", data={"csrf": csrf_of(page.text), "token": "rf_nope"})
    assert r.status_code == 401 and "not valid" in r.text
    assert "refundry_console" not in http.cookies or http.get("/console/queue").status_code == 303


def test_security_headers_and_no_inline_script_or_style(console):
    http = console.client("aud")
    for path in (*PAGES, "/console/login"):
        r = http.get(path)
        assert r.status_code == 200, (path, r.status_code)
        csp = r.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        # What the CSP would block must not be in the page: inline scripts, style attributes.
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path
        assert not re.search(r"\sstyle=", r.text) and "<style" not in r.text, path
        assert not re.search(r"(src|href)=\"(https?:)?//", r.text), path  # nothing off-host


def test_every_page_has_one_plain_text_title_and_one_of_each_id(console):
    # a block left open in a template once put a whole form into the rulesets page's <title>,
    # and twice into the page, with duplicate ids that screen readers and labels trip over
    http = console.client("aud")
    for path in (*PAGES, "/console/login"):
        text = http.get(path).text
        titles = re.findall(r"<title>(.*?)</title>", text, re.S)
        assert len(titles) == 1 and "<" not in titles[0] and "\n" not in titles[0], (path, titles)
        ids = re.findall(r"\sid=\"([^\"]+)\"", text)
        assert len(ids) == len(set(ids)), (path, sorted(i for i in ids if ids.count(i) > 1))


def test_the_session_cookie_is_strict_and_http_only(console):
    http = console.client()
    page = http.get("/console/login")
    r = http.post("/console/login", data={"csrf": csrf_of(page.text),
                                          "token": console.tokens["rev1"]})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert console.tokens["rev1"].lower() not in cookie  # only the token's digest, signed
    # over plain HTTP a Secure cookie would never come back, so it is not set here
    assert "secure" not in cookie and "strict-transport-security" not in r.headers


def test_over_https_the_session_cookie_is_secure_and_hsts_is_sent(console):
    # TLS ends at a proxy in front of the service; uvicorn trusts its X-Forwarded-Proto
    http = console.client()
    http.headers["x-forwarded-proto"] = "https"
    page = http.get("/console/login")  # the sign-in form's CSRF token opens the session
    assert page.headers["strict-transport-security"] == "max-age=31536000"
    cookies = page.headers.get_list("set-cookie")
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    assert all("refundry_console=" in c and "httponly" in c.lower() for c in cookies), cookies


@pytest.mark.parametrize("csrf", [None, "", "forged"])
def test_a_state_change_without_the_session_csrf_token_is_refused(console, csrf):
    http = console.client("rev1")
    data = {"verdict": "approve", "justification": "ok"}
    if csrf is not None:
        data["csrf"] = csrf
    r = http.post("/console/cases/demo-1001/review", data=data)
    assert r.status_code == 403 and "form is out of date" in r.text
    assert console.service.store.case("demo-1001").approvals == ()  # nothing recorded
    r = http.post("/console/cases/demo-1001/review",
                  data={**data, "csrf": csrf_of(http.get("/console/queue").text)})
    assert r.status_code == 303
    assert console.service.store.case("demo-1001").approvals == ("rev1",)


def test_sign_out_ends_the_session(console):
    http = console.client("rev1")
    page = http.get("/console/queue")
    assert http.post("/console/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    assert http.get("/console/queue").status_code == 303


def test_roles_decide_the_pages(console):
    analyst, reviewer = console.client("ana"), console.client("rev1")
    assert analyst.get("/console/queue").status_code == 403
    assert analyst.get("/console/cases/demo-1001").status_code == 403
    assert reviewer.get("/console/rulesets").status_code == 403
    assert reviewer.get("/console/report").status_code == 403
    assert reviewer.get("/console/cases/no-such-case").status_code == 404


def test_a_dispute_is_opened_and_resolved_from_the_case_page(console):
    http = console.client("rev1")
    csrf = csrf_of(http.get("/console/cases/demo-1005").text)  # approved at once
    r = http.post("/console/cases/demo-1005/dispute", data={"csrf": csrf, "reason": ""})
    assert "refused" in http.get(r.headers["location"]).text
    http.post("/console/cases/demo-1005/dispute", data={"csrf": csrf, "reason": "wrong size"})
    assert console.service.store.case("demo-1005").status == "disputed"
    page = http.get("/console/cases/demo-1005").text
    assert "Resolve dispute" in page and "wrong size" in page
    http.post("/console/cases/demo-1005/resolve",
              data={"csrf": csrf, "resolution": "upheld", "explanation": "policy applied"})
    case = console.service.store.case("demo-1005")
    assert case.status == "approved" and case.dispute["resolved_by"] == "rev1"


def _waiting_ids(html: str) -> list[str]:
    return re.findall(r'href="/console/cases/([^"]+)"', html)


def test_the_queue_pages_by_keyset_through_every_waiting_case(console):
    store, engine = console.service.store, console.service.rulesets.engine
    now = dt.datetime.now(dt.UTC)
    ids = [f"bulk-{i:04d}" for i in range(120)]
    with store.batch():
        for i, rid in enumerate(ids):
            req = demo_request(rid, "acme", f"{600 + i}.00", 5, now)
            store.record(req, engine.evaluate(req), engine=engine, actor="demo-shop")
    waiting = ["demo-1001", "demo-1002", "demo-1003", "demo-1004", *ids]
    http = console.client("rev1")
    seen, url = [], "/console/queue"
    while url:
        html = http.get(url).text
        assert f"({len(waiting)} waiting)" in html
        seen += _waiting_ids(html)
        more = re.search(r'rel="next" href="([^"]+)"', html)
        url = more.group(1).replace("&amp;", "&") if more else ""
    assert seen == waiting  # each exactly once, oldest first
    back = re.search(r'rel="prev" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert _waiting_ids(http.get(back).text) == waiting[50:100]
    assert _waiting_ids(http.get("/console/queue?client=acme").text) == waiting[:50]
    assert _waiting_ids(http.get("/console/queue?client=any-shop").text) == []  # decided
    assert _waiting_ids(http.get("/console/queue?industry=finance").text) == []
    assert _waiting_ids(http.get("/console/queue?id=bulk-0007").text) == ["bulk-0007"]


def test_the_case_page_shows_every_rule_and_the_values_it_saw(console):
    page = console.client("aud").get("/console/cases/demo-1001").text
    assert "What each rule saw" in page
    assert "crd-withdrawal-in-period" in page and "matched" in page
    assert "reason eq &#39;changed_mind&#39;: saw &#39;changed_mind&#39;" in page
    assert "amount gt 500: saw" in page  # acme-eu's review rule, with the amount it saw
    assert "floor_held_for_review" in page and "large_refund_review" in page


def new_acme_version(console, tmp_rulesets):
    """Publish acme-eu 2.0.0 (review above 400, not 500) and record a case under it."""
    path = tmp_rulesets / "ecommerce" / "acme-eu.yaml"
    text = path.read_text()
    version = re.search(r"^version: *(\S+)", text, re.M).group(1)
    path.write_text(text.replace(f"version: {version}", "version: 2.0.0", 1)
                    .replace("gt: 500", "gt: 400"))
    assert console.service.reload().ok
    engine = console.service.rulesets.engine
    req = demo_request("after-change", "acme", "450.00", 3, dt.datetime.now(dt.UTC))
    console.service.store.record(req, engine.evaluate(req), engine=engine, actor="demo-shop")
    kept = [v for v in console.service.store.ruleset_versions() if v[0] == "acme-eu"]
    assert [v[1] for v in kept] == [version, "2.0.0"]
    return kept


def test_two_kept_ruleset_versions_side_by_side_with_their_impact(console):
    engine = console.service.rulesets.engine
    req = demo_request("at-450", "acme", "450.00", 3, dt.datetime.now(dt.UTC))
    console.service.store.record(req, engine.evaluate(req), engine=engine, actor="demo-shop")
    old, new = new_acme_version(console, console.rulesets)
    http = console.client("ana")
    page = http.get("/console/rulesets").text
    assert "2.0.0" in page and old[2] in page
    diff = http.get(f"/console/rulesets/diff?old={old[2]}&new={new[2]}")
    assert diff.status_code == 200
    assert re.search(r'<tr class="replace">.*gt: 500.*gt: 400', diff.text)
    assert "2 lines differ" in diff.text  # the version and the threshold
    # Impact: the acme cases decided under the old version (five examples and at-450), decided
    # again under the new one: only the 450 refund crosses the new review threshold.
    assert "6 recorded requests decided with the old version: 1 would be decided differently" \
        in diff.text
    row = re.search(r"<tr><td>outcome: approve -&gt; manual_review</td>.*?</tr>", diff.text, re.S)
    assert row and '>1<' in row.group(0) and 'href="/console/cases/at-450"' in row.group(0)
    assert http.get("/console/rulesets/diff?old=sha256:nope&new=x").status_code == 404
    assert console.client("rev1").get(f"/console/rulesets/diff?old={old[2]}&new={new[2]}") \
        .status_code == 403


def test_a_deadline_three_days_away_is_marked_in_the_queue(console):
    engine, now = console.service.rulesets.engine, dt.datetime.now(dt.UTC)
    req = demo_request("urgent", "acme", "800.00", 15, now)
    req["requested_at"] = (now - dt.timedelta(days=12)).isoformat(timespec="seconds")
    console.service.store.record(req, engine.evaluate(req), engine=engine, actor="demo-shop")
    html = console.client("rev1").get("/console/queue").text
    rows = {m.group(1): m.group(0) for m in
            re.finditer(r'<a href="/console/cases/([^"]+)">.*?</tr>', html, re.S)}
    assert 'class="warn"' in rows["urgent"] and "due soon" in rows["urgent"]
    assert "due soon" not in rows["demo-1001"]  # due in about two weeks
