from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

import refundry
from refundry.cli import main

ROOT = Path(__file__).resolve().parents[1]
RULESETS = ROOT / "rulesets"
DATA = Path(__file__).resolve().parent / "data"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REFUNDRY_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long run: set REFUNDRY_LONG=1 to include it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine() -> refundry.Engine:
    return refundry.Engine.from_path(RULESETS)


BASE_REQUEST = {
    "request_id": "t-1",
    "client_id": "any-shop",
    "industry": "ecommerce",
    "jurisdiction": "DE",
    "requested_at": "2024-03-15T18:00:00+01:00",
    "amount": "119.99",
    "currency": "EUR",
    "reason": "changed_mind",
    "customer": {"id": "c-1"},
    "transaction": {"id": "o-1", "amount": "129.99", "delivered_at": "2024-03-01T12:00:00+01:00",
                    "express_shipping_amount": "10.00"},
    "items": [{"sku": "A", "quantity": 1, "unit_price": "119.99", "condition": "unopened"}],
    "disclosures": {"withdrawal_info_given": True},
    "evidence": {"goods_received_back": True},
}


def make_request(request_id: str, **changes: object) -> dict:
    """A valid EU withdrawal request; ``client_id="acme", amount="600"`` makes it a manual
    review needing two approvers under acme-eu (refunds above 500)."""
    from decimal import Decimal

    req = copy.deepcopy(BASE_REQUEST)
    req["request_id"] = request_id
    req.update(changes)
    if "amount" in changes:
        req["transaction"]["amount"] = str(Decimal(str(changes["amount"])) + 10)
        req["items"][0]["unit_price"] = changes["amount"]
    return req


@pytest.fixture
def request_json() -> dict:
    return copy.deepcopy(BASE_REQUEST)


class CLIResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the CLI in-process from the repository root, as a user would."""
    def run(*args: str) -> CLIResult:
        monkeypatch.chdir(ROOT)
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CLIResult(code, captured.out, captured.err)
    return run


def refundry_cli(*args: str, cwd: Path | None = None):
    """Run the installed `refundry` command in a subprocess, the way a user does."""
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "refundry"
    command = [str(exe)] if exe.exists() else [shutil.which("refundry") or "refundry"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=600)
