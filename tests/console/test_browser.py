"""A reviewer works the queue end to end in a real Chromium: sign in, open a case, approve as
one reviewer, see the second approval required, approve as another, see the case move on; a
deny without justification is refused; an auditor cannot approve. Every page is screenshotted,
checked for console errors, for requests that leave the host, and with axe-core for serious
accessibility violations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

AXE = (Path(__file__).parent / "axe" / "axe.min.js").read_text(encoding="utf-8")
CASE = "demo-1001"  # 1200.00 at acme: in review, two reviewers required


class Pages:
    def __init__(self, browser: Any, url: str, tokens: dict[str, str], shots: Path) -> None:
        self.browser, self.url, self.tokens, self.shots = browser, url, tokens, shots
        self.host = urlsplit(url).netloc
        self.seen: list[str] = []

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)

    def text(self, css: str) -> str:
        return str(self.browser.find_element(By.CSS_SELECTOR, css).text)

    def submit(self, button: Any) -> None:
        """Press ``button`` and wait for the page it leads to, loaded. Not ``staleness_of`` the
        old page's element: asked about a node while its document is torn down, chromedriver
        now and then answers "Node with given id does not belong to the document" rather than
        "stale", and the wait fails (SeleniumHQ/selenium#15401). A mark on the old page's
        window instead: a new document comes with a window without it. A script may meet the
        same passing errors while the page is replaced: the wait asks again."""
        self.browser.execute_script("window.refundryLeft = true")
        button.click()
        WebDriverWait(self.browser, 20, ignored_exceptions=(WebDriverException,)).until(
            lambda b: b.execute_script(
            "return !window.refundryLeft && document.readyState === 'complete'"))

    def sign_in(self, who: str) -> None:
        self.browser.delete_all_cookies()
        self.open("/console/login")
        self.browser.find_element(By.ID, "token").send_keys(self.tokens[who])
        self.submit(self.browser.find_element(By.CSS_SELECTOR, "form button[type=submit]"))
        assert who in self.text("#who")

    def check(self, name: str) -> None:
        """Screenshot the page; no console error, no request off the host, no serious
        accessibility violation."""
        shot = self.shots / f"{len(self.seen):02d}-{name}.png"
        self.browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
        errors = [e for e in self.browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], f"{name}: console errors {errors}"
        for entry in self.browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                assert urlsplit(url).netloc == self.host or url.startswith("data:"), \
                    f"{name}: a request left the host: {url}"
        self.browser.execute_script(AXE)
        result = self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations))"
            ".catch(e => done([{id: 'axe failed: ' + e, impact: 'critical', nodes: []}]));")
        serious = [(v["id"], [n.get("target") for n in v["nodes"]][:3]) for v in result
                   if v["impact"] in ("serious", "critical")]
        assert serious == [], f"{name}: serious accessibility violations {serious}"
        self.seen.append(name)

    def review(self, verdict: str, justification: str = "") -> None:
        box = self.browser.find_element(By.ID, "justification")
        box.clear()
        if justification:
            box.send_keys(justification)
        self.submit(self.browser.find_element(By.ID, verdict))


def test_reviewers_work_the_queue_end_to_end(console, chrome, tmp_path):
    pages = Pages(chrome, console.url, console.tokens, tmp_path)
    chrome.get_log("performance")  # what an earlier test left behind
    pages.open("/console/queue")
    assert "/console/login" in chrome.current_url  # signed out: sent to sign in
    pages.check("login")

    pages.sign_in("rev1")
    assert "/console/queue" in chrome.current_url
    assert "4 waiting" in pages.text("h1")
    assert CASE in pages.text("#queue")
    pages.check("queue")

    pages.submit(chrome.find_element(By.LINK_TEXT, CASE))
    assert pages.text("#status") == "manual_review"
    assert "2 more approvals needed" in pages.text("#approvals")
    pages.check("case")

    pages.review("approve", "receipt checked")
    assert "review: done" in pages.text("#flash")
    assert "approved first by rev1" in pages.text("#approvals")
    assert "1 more approval needed" in pages.text("#approvals")
    pages.check("case-first-approval")

    pages.review("deny")  # no justification: the server refuses and records nothing
    assert "refused" in pages.text("#flash") and "justification" in pages.text("#flash")
    assert pages.text("#status") == "manual_review"
    pages.check("case-deny-refused")

    pages.review("approve", "same person again")  # maker-checker: not twice by one reviewer
    assert "already approved" in pages.text("#flash")

    pages.sign_in("rev2")
    pages.open(f"/console/cases/{CASE}")
    pages.review("approve", "second pair of eyes")
    assert pages.text("#status") == "approved"
    assert "rev1, rev2" in pages.text("#approvals")
    history = pages.text("#history")
    assert "rev1 reviewed" in history and "rev2 approved" in history
    pages.open("/console/queue")
    assert "3 waiting" in pages.text("h1") and CASE not in pages.text("#queue")
    case = console.service.store.case(CASE)
    assert case.status == "approved" and case.approvals == ("rev1", "rev2")


def test_an_auditor_sees_cases_but_cannot_approve(console, chrome, tmp_path):
    pages = Pages(chrome, console.url, console.tokens, tmp_path)
    chrome.get_log("performance")
    pages.sign_in("aud")
    pages.open("/console/cases/demo-1002")
    assert pages.text("#status") == "manual_review"
    assert chrome.find_elements(By.ID, "approve") == []  # no button to press
    pages.check("case-auditor")
    # Nor can the auditor approve by posting the form itself: the server refuses.
    chrome.execute_script(
        "const f = document.createElement('form'); f.method = 'post';"
        "f.action = '/console/cases/demo-1002/review';"
        "for (const [k, v] of [['csrf', document.querySelector('[name=csrf]').value],"
        " ['verdict', 'approve']]) { const i = document.createElement('input');"
        " i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
        "document.body.appendChild(f); f.submit();")
    WebDriverWait(chrome, 20).until(lambda b: b.find_elements(By.ID, "error"))
    assert "may not do this" in pages.text("#error")
    assert console.service.store.case("demo-1002").approvals == ()
    logged = [e["message"] for e in chrome.get_log("browser")]  # the 403, and only it
    assert all("/console/cases/demo-1002/review" in m and "403" in m for m in logged), logged
    pages.open("/console/report")
    pages.check("report")


def test_an_analyst_sees_rulesets_and_report_not_cases(console, chrome, tmp_path):
    pages = Pages(chrome, console.url, console.tokens, tmp_path)
    chrome.get_log("performance")
    pages.sign_in("ana")
    assert "/console/rulesets" in chrome.current_url
    assert "acme-eu" in pages.text("#rulesets")
    pages.check("rulesets")
    pages.submit(chrome.find_element(By.XPATH, "//button[text()='Compare side by side']"))
    assert "differ" in pages.text("#diff-summary")
    pages.check("ruleset-diff")
    pages.open("/console/queue")
    assert "may not do this" in pages.text("#error")
