"""refundry-woocommerce, tested as a third-party adapter would be: the contract kit refundry
ships, every mapped value, and a batch that never books a refund twice.

The refunds in ``data/refunds.json`` are synthetic, shaped after the WooCommerce REST API v3
"Order refunds" reference (ids, ``date_created_gmt`` without an offset, ``amount`` as a
string, ``refunded_payment``, ``_links.up`` naming the order).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

refundry_woocommerce = pytest.importorskip(
    "refundry_woocommerce", reason="install it: pip install -e examples/refundry-woocommerce")

from refundry.app.runner import run  # noqa: E402
from refundry.plugins import ExecutedRefund, Plugins  # noqa: E402
from refundry.plugins.testing import contract_tests  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "refunds.json"
RULESETS = [HERE / "rulesets"]  # approve everything: only the ledger's keys stop a 2nd booking
OPTS = {"client_id": "shop-1", "jurisdiction": "DE", "currency": "EUR"}

# The kit: hooks, read() signature, record kinds, stable refs, valid requests, idempotent sink.
TestContract = contract_tests(refundry_woocommerce, name="woocommerce", source="woocommerce",
                              input=DATA, options=OPTS, sink="csv-ledger")


def test_every_refund_becomes_the_right_kind_with_its_values() -> None:
    order, paid, manual, other, bad = Plugins().source("woocommerce").read(DATA, OPTS)
    assert order.kind == "context" and order.context.startswith("order `725`")
    assert paid.executed == ExecutedRefund(
        refund_id="woocommerce:refund:726", transaction_id="725", amount="10.00",
        currency="EUR", refunded_at="2024-04-02T10:00:00+00:00")
    req = manual.request
    assert req["request_id"] == "woocommerce:refund:727"
    assert (req["amount"], req["currency"]) == ("30.00", "EUR")
    assert req["requested_at"] == "2024-04-03T10:00:00+00:00"
    assert req["transaction"] == {"id": "725", "amount": "100.00"}  # the order's total
    assert req["items"] == [{"sku": "MUG-1", "quantity": 1}]
    assert req["customer"] == {"id": "woocommerce:order:725"}
    assert req["facts"] == {"woocommerce_reason": "Damaged in transit"}
    assert (req["client_id"], req["jurisdiction"]) == ("shop-1", "DE")
    assert other.request["amount"] == "12.50"  # "12.5" at the currency's minor unit
    assert other.request["transaction"] == {"id": "731", "amount": "12.50"}  # no order: its own
    assert bad.kind == "broken"
    assert bad.error == "refunds.json[4]: `1.234` has more decimals than EUR allows"


def test_a_batch_books_each_refund_once_and_never_the_paid_one(tmp_path: Path) -> None:
    src = tmp_path / "refunds.json"
    shutil.copy(DATA, src)
    ledger = tmp_path / "ledger.csv"
    summary = run(source="woocommerce", input_path=src, sinks=["csv-ledger"], out=ledger,
                  options=OPTS, rulesets=RULESETS)
    assert summary.kinds == {"request": 2, "executed": 1, "context": 1, "broken": 1}
    rows = list(csv.DictReader(ledger.open()))
    # 727: 30.00 of an order of 100.00 that had 10.00 back already; 728: 12.50.
    assert [(r["request_id"], r["amount"], r["idempotency_key"]) for r in rows] == [
        ("woocommerce:refund:727", "30.00", "refundry-woocommerce:refund:727"),
        ("woocommerce:refund:728", "12.50", "refundry-woocommerce:refund:728")]
    # A re-run with its journal lost (a new machine): the ledger's keys stop a second booking.
    (tmp_path / "ledger.csv.progress.jsonl").unlink()
    run(source="woocommerce", input_path=src, sinks=["csv-ledger"], out=ledger, options=OPTS,
        rulesets=RULESETS)
    assert len(list(csv.DictReader(ledger.open()))) == 2
