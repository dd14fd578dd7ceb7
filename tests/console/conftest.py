"""A real ``refundry serve`` application with the console, on 127.0.0.1, with the example
cases of ``refundry serve --demo`` recorded and a token per identity.

Identities: two reviewers (maker-checker needs two different people), an auditor and an
analyst. The browser fixture drives the Debian ``chromium`` through ``chromedriver`` and
skips, saying so, when either is missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from refundry.app.console.demo import seed
from refundry.app.console.views import create_app_with_console
from refundry.app.service.api import Service
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.rulesets import Rulesets
from refundry.records.stores import open_store

from ..conftest import RULESETS
from ..service.conftest import start_server

IDENTITIES = {"rev1": ["reviewer"], "rev2": ["reviewer"], "aud": ["auditor"],
              "ana": ["analyst"]}


class Console:
    def __init__(self, url: str, tokens: dict[str, str], service: Service,
                 rulesets: Path) -> None:
        self.url, self.tokens, self.service, self.rulesets = url, tokens, service, rulesets

    def client(self, who: str | None = None) -> httpx.Client:
        """An HTTP client signed in as ``who`` (its session cookie set by the login form)."""
        http = httpx.Client(base_url=self.url, timeout=30)
        if who is not None:
            page = http.get("/console/login")
            login = http.post("/console/login", data={"csrf": csrf_of(page.text),
                                                      "token": self.tokens[who]})
            assert login.status_code == 303, login.text
        return http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no csrf field"
    return found.group(1)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    rulesets = tmp_path / "rulesets"
    shutil.copytree(RULESETS, rulesets)
    tokens_path = tmp_path / "tokens.json"
    tokens = {name: issue(tokens_path, name, [*roles, "admin"]) for name, roles in IDENTITIES.items()}
    store = open_store(tmp_path / "refundry.db")
    loaded = Rulesets([rulesets])
    seed(store, loaded.engine)
    service = Service(rulesets=loaded, store=store, tokens=Tokens.load(tokens_path),
                      tokens_path=str(tokens_path))
    server, thread, url = start_server(create_app_with_console(service))
    try:
        yield Console(url, tokens, service, rulesets)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("browser tests need the Debian packages chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=DriverService(driver), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()
