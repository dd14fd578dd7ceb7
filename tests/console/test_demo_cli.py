"""The README's one command: ``refundry serve --demo`` starts the service with the console on
the embedded SQLite store, example cases recorded and tokens shown once."""

from __future__ import annotations

import re
import signal

import httpx

from ..service.test_serve_cli import start
from .conftest import csrf_of


def test_serve_demo_has_cases_waiting_and_prints_tokens_to_sign_in(tmp_path):
    proc, url = start(tmp_path, "--demo")
    try:
        proc.send_signal(signal.SIGTERM)  # the demo data is in place once it answers
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    tokens = dict(re.findall(r"^\s+(\S+)\s+(rf_\S+)$", err, re.M))
    assert set(tokens) == {"reviewer-1", "reviewer-2", "auditor-1", "analyst-1", "service-1"}
    assert "6 example cases recorded" in err
    assert (tmp_path / "refundry-demo.db").exists()
    assert "rf_" not in (tmp_path / "refundry-demo-tokens.json").read_text()

    proc, url = start(tmp_path, "--demo")  # a second start keeps the store and the tokens
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            csrf = csrf_of(http.get("/console/login").text)
            http.post("/console/login", data={"csrf": csrf, "token": tokens["reviewer-1"]})
            page = http.get("/console/queue").text
            assert "(4 waiting)" in page and "demo-1001" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
