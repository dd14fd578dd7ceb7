"""Issue 12, defect 1 (records half): with a records store, prior refunds and history facts come
from what the store paid and saw, not from what the caller claims; a disagreement is reviewed."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import BASE_REQUEST, RULESETS, refundry_cli


def _request(request_id: str, **changes: object) -> dict:
    return {**json.loads(json.dumps(BASE_REQUEST)), "request_id": request_id, **changes}


def _evaluate(cli, tmp_path: Path, db: Path, request: dict) -> dict:
    path = tmp_path / f"{request['request_id']}.json"
    path.write_text(json.dumps(request))
    done = cli("evaluate", path, "--rulesets", RULESETS, "--record", "--db", db)
    assert done.code == 0, done.err
    return done.json()


@pytest.fixture
def paid(cli, tmp_path: Path) -> Path:
    """A store that approved 119.99 of order o-1 (129.99: goods 109.99 and standard delivery 10.00)."""
    db = tmp_path / "records.db"
    first = _evaluate(cli, tmp_path, db, _request("first"))
    assert (first["outcome"], first["amount"]) == ("approve", "119.99")
    return db


def test_a_request_that_leaves_out_a_paid_refund_is_reviewed_and_capped(cli, tmp_path, paid):
    # Before: the caller's empty prior_refunds left 129.99 refundable and 119.99 was approved twice.
    again = _evaluate(cli, tmp_path, paid, _request("second"))
    assert again["outcome"] == "manual_review"
    assert "refundry.prior-refunds-disagree" in [r["rule_id"] for r in again["reasons"]]
    assert Decimal(again["amount"]) <= Decimal("129.99") - Decimal("119.99")


def test_a_request_that_states_the_paid_refund_is_decided_as_usual(cli, tmp_path, paid):
    request = _request("second", amount="10.00", prior_refunds=[{"amount": "119.99"}])
    request["items"][0]["unit_price"] = "10.00"
    decision = _evaluate(cli, tmp_path, paid, request)
    assert "refundry.prior-refunds-disagree" not in [r["rule_id"] for r in decision["reasons"]]
    assert decision["outcome"] == "approve"


def test_a_caller_cannot_bring_its_own_history_facts(cli, tmp_path, paid):
    forged = _request("forged", facts={"history": {"refunded_for_transaction": "0",
                                                   "prior_refunds_disagree": False}})
    decision = _evaluate(cli, tmp_path, paid, forged)
    assert decision["outcome"] == "manual_review"
    assert "refundry.prior-refunds-disagree" in [r["rule_id"] for r in decision["reasons"]]


def test_run_with_a_store_takes_prior_refunds_from_it(tmp_path, paid):
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(_request("in-batch", facts={"history": {"prior_refunds_disagree": False}}))
                     + "\n")
    out = tmp_path / "out.jsonl"
    done = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                        "--rulesets", RULESETS, "--db", paid)
    assert done.returncode == 0, done.stderr
    decision = json.loads(out.read_text())
    assert decision["outcome"] == "manual_review"
    assert "refundry.prior-refunds-disagree" in [r["rule_id"] for r in decision["reasons"]]
    assert Decimal(decision["amount"]) <= Decimal("10.00")
