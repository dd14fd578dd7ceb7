"""Round trips: payloads -> ``refundry run`` -> sink output -> read back as a source -> zero new
refunds. A refund the platform made, or an instruction refundry already wrote, is history: it
is never paid a second time, whatever the rulesets say (these approve everything)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from refundry.app.runner import run

pytest.importorskip("refundry_ecommerce", reason="install it: pip install -e plugins/refundry-ecommerce")

HERE = Path(__file__).resolve().parent
SHOPIFY = HERE / "payloads" / "shopify"
RULESETS = [HERE / "rulesets"]  # approve every request: only history can stop a payment
OPTS = {"client_id": "acme", "jurisdiction": "US", "requested_at": "2024-04-03T09:00:00-05:00",
        "currency": "USD"}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_shopify_payloads_to_instructions_and_back_pay_nothing_twice(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    shutil.copytree(SHOPIFY, inbox, ignore=shutil.ignore_patterns("SOURCE.txt"))
    out = tmp_path / "out" / "create.jsonl"
    first = run(source="shopify", input_path=inbox, sinks=["shopify-refund"], out=out,
                options=OPTS, rulesets=RULESETS)
    assert first.kinds == {"request": 3, "executed": 6, "context": 14, "broken": 0}
    # The three calculate responses are two cases (two files suggest the same 41.94); the six
    # executed refunds of order 450789469 are prior_refunds of both, and the engine caps each
    # at what remains of the transaction (41.94 - 209.00 - 41.94 - 5.00 - 209.00 < 0: nothing).
    written = lines(out)
    assert all(w["idempotency_key"] == f"refundry-{w['request_id']}" for w in written)
    assert first.duplicates == 1 and first.decided == 2

    # Read the instructions back as a source, next to the payloads: nothing new is created.
    shutil.copy(out, inbox / "zz-instructions.jsonl")
    again = tmp_path / "again" / "create.jsonl"
    second = run(source="shopify", input_path=inbox, sinks=["shopify-refund"], out=again,
                 options=OPTS, rulesets=RULESETS)
    assert second.kinds["executed"] == 6 + len(written)
    assert lines(again) == []


def test_an_approved_suggestion_is_written_once_and_read_back_as_executed(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(SHOPIFY / "shopify_api_js_2024-04_refund_test_6.json", inbox)
    out = tmp_path / "create.jsonl"
    run(source="shopify", input_path=inbox, sinks=["shopify-refund"], out=out, options=OPTS,
        rulesets=RULESETS)
    (instruction,) = lines(out)
    assert instruction["idempotency_key"] == f"refundry-{instruction['request_id']}"
    assert instruction["refund"]["transactions"][0]["amount"] == "41.94"
    # The same command again (a re-run after a kill): no second line.
    run(source="shopify", input_path=inbox, sinks=["shopify-refund"], out=out, options=OPTS,
        rulesets=RULESETS)
    assert len(lines(out)) == 1
    # The instruction read back is history of its case, and a fresh run with it (a new journal,
    # a new output) decides the suggestion again but writes no second refund.
    shutil.copy(out, inbox / "a-instructions.jsonl")
    fresh = tmp_path / "fresh.jsonl"
    summary = run(source="shopify", input_path=inbox, sinks=["shopify-refund"], out=fresh,
                  options=OPTS, rulesets=RULESETS)
    assert summary.kinds == {"request": 1, "executed": 1, "context": 0, "broken": 0}
    assert lines(fresh) == []
    # Its own refund is a prior refund of the order: nothing of the 41.94 remains to pay.
    assert summary.decided == 1


def test_stripe_charge_with_its_refund_pays_nothing(tmp_path: Path) -> None:
    from test_ecommerce_adapter import JPY_CHARGE  # type: ignore[import-not-found]

    f = tmp_path / "charges.json"
    f.write_text(json.dumps(JPY_CHARGE))
    out = tmp_path / "params.jsonl"
    summary = run(source="stripe", input_path=f, sinks=["stripe-refund"], out=out,
                  options={"client_id": "acme", "jurisdiction": "JP"}, rulesets=RULESETS)
    assert summary.kinds == {"request": 0, "executed": 1, "context": 1, "broken": 0}
    assert lines(out) == []  # re_jpy1 (1200 JPY) is never refunded a second time


def test_stripe_instructions_read_back_are_executed(tmp_path: Path) -> None:
    request = {"request_id": "case-jpy", "client_id": "acme", "industry": "ecommerce",
               "jurisdiction": "JP", "requested_at": "2024-04-03T09:00:00+09:00",
               "amount": "1200", "currency": "JPY", "reason": "defective",
               "customer": {"id": "cus_1"}, "transaction": {"id": "ch_jpy1", "amount": "5000"}}
    src = tmp_path / "requests.jsonl"
    src.write_text(json.dumps(request) + "\n")
    out = tmp_path / "params.jsonl"
    run(source="jsonl", input_path=src, sinks=["stripe-refund"], out=out, rulesets=RULESETS)
    (line,) = lines(out)
    assert line["idempotency_key"] == "refundry-case-jpy" and line["params"]["amount"] == 1200
    back = tmp_path / "back.jsonl"
    summary = run(source="stripe", input_path=out, sinks=["stripe-refund"], out=back,
                  options={"client_id": "acme", "jurisdiction": "JP"}, rulesets=RULESETS)
    assert summary.kinds == {"request": 0, "executed": 1, "context": 0, "broken": 0}
    assert lines(back) == []


def test_an_executed_refund_read_back_moves_its_case_to_refunded(tmp_path: Path) -> None:
    """--db: the refund Stripe made for an approved case (its metadata names the case) appends
    `processed` and `refunded` with Stripe's refund id; reading it again appends nothing."""
    import subprocess
    import sys

    from refundry import open_store

    db = tmp_path / "records.db"
    exe = [sys.executable, "-m", "refundry.cli", "run", "--rulesets", str(RULESETS[0]),
           "--db", str(db), "--by", "batch-bot"]
    request = {"request_id": "case-jpy", "client_id": "acme", "industry": "ecommerce",
               "jurisdiction": "JP", "requested_at": "2024-04-03T09:00:00+09:00",
               "amount": "1200", "currency": "JPY", "reason": "defective",
               "customer": {"id": "cus_1"}, "transaction": {"id": "ch_jpy1", "amount": "5000"}}
    (tmp_path / "requests.jsonl").write_text(json.dumps(request) + "\n")
    first = subprocess.run([*exe, "--source", "jsonl", "--input", str(tmp_path / "requests.jsonl"),
                            "--sink", "stripe-refund", "--out", str(tmp_path / "params.jsonl")],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    refund = {"object": "refund", "id": "re_jpy9", "amount": 1200, "currency": "jpy",
              "charge": "ch_jpy1", "created": 1712102400, "status": "succeeded",
              "metadata": {"refundry_request_id": "case-jpy"}}
    (tmp_path / "refunds.json").write_text(json.dumps(refund))
    for n in (1, 2):
        back = subprocess.run([*exe, "--source", "stripe", "--input", str(tmp_path / "refunds.json"),
                               "--sink", "stripe-refund", "--out", str(tmp_path / f"back{n}.jsonl"),
                               "--option", "client_id=acme", "--option", "jurisdiction=JP"],
                              capture_output=True, text=True, timeout=120)
        assert back.returncode == 0, back.stderr
        assert (tmp_path / f"back{n}.jsonl").read_text() == ""
    with open_store(db, create=False) as store:
        case = store.case("case-jpy")
        assert case.status == "refunded"
        assert [(e.type, e.details.get("reference")) for e in case.events] == [
            ("evaluated", None), ("processed", "stripe:re_jpy9"), ("refunded", "stripe:re_jpy9")]
