"""refundry-ecommerce on the real Shopify and Stripe payloads (copied into tests/payloads/).

Each file either becomes canonical requests that ``refundry.parse_request`` accepts, with the
amount, currency, time and identifiers asserted here, or a dead letter whose reason is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.core.models import Decision
from refundry.plugins import Plugins, SourceError

# The adapter is its own distribution: its tests need it installed (as .ci/run does).
pytest.importorskip("refundry_ecommerce", reason="install it: pip install -e plugins/refundry-ecommerce")

HERE = Path(__file__).resolve().parent
PAYLOADS = HERE / "payloads"
RULESETS = HERE / "rulesets"
OPTS = {"client_id": "acme", "jurisdiction": "US"}


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins()


def read(plugins: Plugins, source: str, path: Path, **options: str) -> list[Any]:
    return list(plugins.source(source).read(path, {**OPTS, **options}))


def one_request(plugins: Plugins, source: str, path: Path, **options: str) -> dict[str, Any]:
    (rec,) = read(plugins, source, path, **options)
    assert rec.error is None, rec.error
    refundry.parse_request(rec.request)  # raises when the mapping is not a valid request
    return rec.request  # type: ignore[no-any-return]


def dead(plugins: Plugins, source: str, path: Path, **options: str) -> str:
    (rec,) = read(plugins, source, path, **options)
    assert rec.request is None
    return rec.error  # type: ignore[no-any-return]


# --- Shopify --------------------------------------------------------------------------------

SHOPIFY = PAYLOADS / "shopify"

# file -> (request_id, amount, requested_at, transaction amount, items, facts subset)
SHOPIFY_REQUESTS = {
    "shopify_api_js_2024-04_refund_test_1.json": (
        "shopify:refund:509562969", "209.00", "2024-04-02T08:59:11-05:00", "209.00",
        [("IPOD2008BLACK", 1, "199.00"), ("IPOD2008GREEN", 1, "199.00")],
        # 195.66 + 195.67 + 2 x 3.98 tax: the money moved (209.00) does not reconcile.
        {"line_items_total": "399.29", "totals_reconcile": False, "shopify_parent_id": "801038806",
         "original_amount_known": False}),
    "shopify_api_js_2024-04_refund_test_4.json": (
        "shopify:refund:509562969", "209.00", "2024-04-02T08:59:11-05:00", "209.00",
        [("IPOD2008BLACK", 1, "199.00"), ("IPOD2008GREEN", 1, "199.00")],
        {"totals_reconcile": False}),
    "shopify_api_js_2024-04_refund_test_2.json": (
        "shopify:refund:929361466", "41.94", "2024-04-02T09:01:02-05:00", "41.94",
        [("IPOD2008RED", 1, "199.00")],
        {"line_items_total": "0.00", "totals_reconcile": False}),  # money without goods
    "shopify_api_js_2024-04_refund_test_3.json": (
        "shopify:refund:929361467", "5.00", "2024-04-02T09:01:05-05:00", "5.00", [],
        # shipping-only: the adjustment is booked as -5.00
        {"shipping_refunded": "5.00", "line_items_total": "0.00", "totals_reconcile": True}),
    "shopify_python_api_refund.json": (
        "shopify:refund:509562969", "209.00", "2016-06-20T13:35:06-04:00", "209.00",
        [("IPOD2008BLACK", 1, "199.00"), ("IPOD2008GREEN", 1, "199.00")],
        {"shopify_gateway": "bogus"}),  # no subtotals: whether it reconciles is unknown
    "shopify_api_js_2024-04_transaction_test_1.json": (
        "shopify:transaction:179259969", "209.00", "2005-08-05T12:59:12-04:00", "209.00", [],
        {"shopify_transaction_id": "179259969", "shopify_parent_id": "801038806"}),
}
# refunds/calculate responses carry no time: with --option requested_at they become requests.
SHOPIFY_CALCULATED = {
    "shopify_api_js_2024-04_refund_test_5.json": ("2.00", "41.94", {"shipping_refunded": "2.00"}),
    "shopify_api_js_2024-04_refund_test_6.json": ("41.94", "41.94", {"totals_reconcile": False}),
    "shopify_python_api_refund_calculate.json": ("41.94", "41.94", {"line_items_total": "199.65"}),
}
SHOPIFY_DEAD = {
    "shopify_api_js_2024-04_transaction_test_2.json": "not a refund: 1 transaction(s) of kind capture, no refund",
    "shopify_api_js_2024-04_transaction_test_3.json": "not a refund: 1 transaction(s) of kind capture, no refund",
    "shopify_api_js_2024-04_transaction_test_4.json": "not a refund: 1 transaction(s) of kind capture, no refund",
    "shopify_api_js_2024-04_transaction_test_5.json": "not a refund: 1 transaction(s) of kind capture, no refund",
    "shopify_api_js_2024-04_transaction_test_6.json": "not a refund: 1 transaction(s) of kind void, no refund",
    "shopify_api_js_2024-04_transaction_test_8.json": "not a refund: 1 transaction(s) of kind authorization, no refund",
    "shopify_python_api_transaction.json": "not a refund: 1 transaction(s) of kind authorization, no refund",
    "shopify_python_api_transactions.json": "not a refund: 1 transaction(s) of kind authorization, no refund",
    "shopify_python_api_order.json": "not a refund: an order (`#1001`, financial_status `authorized`), not a refund",
    "shopify_python_api_tender_transactions.json": "not a refund: 3 tender transactions (payments received), no refund",
}


def test_every_shopify_payload_is_covered() -> None:
    files = {p.name for p in SHOPIFY.glob("*.json")}
    assert files == set(SHOPIFY_REQUESTS) | set(SHOPIFY_CALCULATED) | set(SHOPIFY_DEAD)


@pytest.mark.parametrize("name", sorted(SHOPIFY_REQUESTS))
def test_shopify_refund_payloads(plugins: Plugins, name: str) -> None:
    rid, amount, at, tx_amount, items, facts = SHOPIFY_REQUESTS[name]
    req = one_request(plugins, "shopify", SHOPIFY / name)
    assert req["request_id"] == rid
    assert req["amount"] == amount and req["currency"] == "USD"
    assert req["requested_at"] == at
    assert req["transaction"] == {"id": "450789469", "amount": tx_amount}
    assert req["customer"] == {"id": "shopify:order:450789469"}
    assert (req["client_id"], req["industry"], req["jurisdiction"]) == ("acme", "ecommerce", "US")
    assert [(i["sku"], i["quantity"], i["unit_price"]) for i in req.get("items", [])] == items
    assert facts.items() <= req["facts"].items()


@pytest.mark.parametrize("name", sorted(SHOPIFY_CALCULATED))
def test_shopify_calculate_responses(plugins: Plugins, name: str) -> None:
    amount, maximum, facts = SHOPIFY_CALCULATED[name]
    assert "carries no time; pass `--option requested_at=...`" in dead(plugins, "shopify", SHOPIFY / name,
                                                                      currency="USD")
    req = one_request(plugins, "shopify", SHOPIFY / name, requested_at="2024-04-03T09:00:00-05:00",
                      currency="USD")
    assert req["request_id"] == f"shopify:order:450789469:suggested:801038806:{amount}"
    assert (req["amount"], req["currency"]) == (amount, "USD")
    assert req["transaction"] == {"id": "450789469", "amount": maximum}  # maximum_refundable
    assert req["requested_at"] == "2024-04-03T09:00:00-05:00"
    assert req["facts"]["original_amount_known"] is True
    assert facts.items() <= req["facts"].items()


def test_an_old_calculate_response_without_currency_needs_the_option(plugins: Plugins) -> None:
    why = dead(plugins, "shopify", SHOPIFY / "shopify_python_api_refund_calculate.json",
               requested_at="2024-04-03T09:00:00-05:00")
    assert why.endswith("no currency in the refund or its transactions; pass `--option currency=...`")


@pytest.mark.parametrize("name", sorted(SHOPIFY_DEAD))
def test_shopify_payloads_that_are_not_refunds(plugins: Plugins, name: str) -> None:
    assert dead(plugins, "shopify", SHOPIFY / name) == f"{name}: {SHOPIFY_DEAD[name]}"


def test_shopify_return_webhook(plugins: Plugins) -> None:
    req = one_request(plugins, "shopify", HERE / "synthetic" / "shopify_return_webhook.json",
                      jurisdiction="DE")
    assert req["request_id"] == "shopify:return:945000954"
    assert (req["amount"], req["currency"]) == ("69.80", "EUR")  # 59.90 + 2 x 4.95
    assert req["reason"] == "changed_mind" and req["requested_remedy"] == "refund"
    assert req["customer"] == {"id": "207119551"}
    assert req["requested_at"] == "2024-04-05T10:15:00+02:00"


def test_shopify_needs_client_and_jurisdiction(plugins: Plugins) -> None:
    with pytest.raises(SourceError, match=r"source `shopify` needs `--option jurisdiction=...`"):
        list(plugins.source("shopify").read(SHOPIFY, {"client_id": "acme"}))


# --- Stripe ---------------------------------------------------------------------------------

STRIPE = PAYLOADS / "stripe"
STRIPE_DEAD = {
    "djstripe_charge_ch_fakefakefakefakefake0001.json": "charge `ch_fakefakefakefakefake0001` has no refunds",
    "fixtures3_charge.json": "charge `ch_1PgafuB7WZ01zgkWXYmPNZs8` was never captured (an authorisation): releasing it is a cancel, not a refund",
    "fixtures3_balance_transaction.json": "a `balance_transaction` of type `charge` is not a refund",
    "fixtures3_credit_note.json": "a `credit_note` object is not a refund",
    "fixtures3_customer_balance_transaction.json": "a `customer_balance_transaction` object is not a refund",
    "fixtures3_fee_refund.json": "a `fee_refund` object is not a refund",
    "fixtures3_payment_intent.json": "a `payment_intent` object is not a refund",
    "fixtures3_transfer_reversal.json": "a `transfer_reversal` object is not a refund",
    "fixtures3_dispute.json": "the `dispute` object is a dispute, not a refund: read it with source `stripe-dispute` (refundry-finance)",
    "fixtures3_issuing_dispute.json": "the `issuing.dispute` object is a dispute, not a refund: read it with source `stripe-dispute` (refundry-finance)",
}
STRIPE_REFUNDS = {
    "fixtures3_refund.json": ("stripe:re_1Pgc72B7WZ01zgkWqPvrRrPE", "1.00", "ch_1PgafuB7WZ01zgkWXYmPNZs8"),
    # the 2018 shape: "" where the API now sends null; 1000 cents
    "fixtures3_refund_2018-03-29.json": ("stripe:re_1B2aHR2eZvKYlo2ClqiWjlI2", "10.00", "ch_1B2aHQ2eZvKYlo2CeUg9DBV6"),
}


def test_every_stripe_payload_is_covered() -> None:
    assert {p.name for p in STRIPE.glob("*.json")} == set(STRIPE_DEAD) | set(STRIPE_REFUNDS)


@pytest.mark.parametrize("name", sorted(STRIPE_DEAD))
def test_stripe_objects_that_are_not_refunds(plugins: Plugins, name: str) -> None:
    assert dead(plugins, "stripe", STRIPE / name) == f"{name}: {STRIPE_DEAD[name]}"


@pytest.mark.parametrize("name", sorted(STRIPE_REFUNDS))
def test_stripe_refunds(plugins: Plugins, name: str) -> None:
    # The fixtures' created time is the placeholder 1234567890: a dead letter by default ...
    assert dead(plugins, "stripe", STRIPE / name) == (
        f"{name}: `created` 1234567890 is stripe's fixture placeholder; the request time is unknown")
    # ... and a request only when the run says placeholder times are acceptable.
    rid, amount, charge = STRIPE_REFUNDS[name]
    req = one_request(plugins, "stripe", STRIPE / name, allow_placeholder_time="true")
    assert req["request_id"] == rid
    assert (req["amount"], req["currency"]) == (amount, "USD")  # minor units; "usd" upper-cased
    assert req["requested_at"] == "2009-02-13T23:31:30+00:00"
    assert req["transaction"] == {"id": charge, "amount": amount}
    assert req["reason"] == "other"  # null / "" reason: the run's default


def test_a_stripe_refund_of_an_uncaptured_charge_in_the_same_input_is_a_cancel(plugins: Plugins, tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text(json.dumps([json.loads((STRIPE / f).read_text())
                                for f in ("fixtures3_charge.json", "fixtures3_refund.json")]))
    recs = read(plugins, "stripe", both, allow_placeholder_time="true")
    assert [r.error for r in recs] == [
        "both.json[0]: charge `ch_1PgafuB7WZ01zgkWXYmPNZs8` was never captured (an authorisation): releasing it is a cancel, not a refund",
        "both.json[1]: refund `re_1Pgc72B7WZ01zgkWqPvrRrPE` is of charge `ch_1PgafuB7WZ01zgkWXYmPNZs8`, which was never captured: releasing an authorisation is a cancel, not a refund"]


def test_stripe_zero_decimal_currency_and_charge_context(plugins: Plugins, tmp_path: Path) -> None:
    charge = {"object": "charge", "id": "ch_jp", "amount": 5000, "currency": "jpy", "captured": True,
              "created": 1700000000, "customer": "cus_1",
              "payment_method_details": {"card": {"last4": "4242"}},
              "refunds": {"object": "list", "data": [
                  {"object": "refund", "id": "re_jp", "amount": 1200, "currency": "jpy",
                   "charge": "ch_jp", "created": 1700003600, "reason": "requested_by_customer",
                   "status": "succeeded"}]}}
    f = tmp_path / "jpy.json"
    f.write_text(json.dumps(charge))
    req = one_request(plugins, "stripe", f, jurisdiction="JP")
    assert (req["amount"], req["currency"]) == ("1200", "JPY")  # JPY has no minor unit
    assert req["transaction"] == {"id": "ch_jp", "amount": "5000",
                                  "purchased_at": "2023-11-14T22:13:20+00:00",
                                  "payment_method": {"type": "card", "last4": "4242"}}
    assert req["reason"] == "changed_mind" and req["customer"] == {"id": "cus_1"}
    assert req["requested_at"] == "2023-11-14T23:13:20+00:00"


@pytest.mark.parametrize("expanded", [False, True])
def test_a_stripe_refund_in_another_currency_than_its_charge_is_refused(
        plugins: Plugins, tmp_path: Path, expanded: bool) -> None:
    charge = {"object": "charge", "id": "ch_usd", "amount": 1000, "currency": "usd",
              "captured": True, "created": 1700000000}
    refund = {"object": "refund", "id": "re_eur", "amount": 90000, "currency": "eur",
              "charge": charge if expanded else "ch_usd", "created": 1700003600,
              "status": "succeeded"}
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps([refund] if expanded else [charge | {"refunds": {"data": []}}, refund]))
    errors = [r.error for r in read(plugins, "stripe", f, jurisdiction="DE") if r.error]
    assert errors[-1] == (f"mixed.json[{0 if expanded else 1}]: refund `re_eur` is in EUR but its "
                          "charge `ch_usd` was in USD: a refund is paid in the currency of its charge")


def test_stripe_refund_with_an_expanded_charge(plugins: Plugins, tmp_path: Path) -> None:
    refund = json.loads((STRIPE / "fixtures3_refund_2018-03-29.json").read_text())
    charge = json.loads((STRIPE / "djstripe_charge_ch_fakefakefakefakefake0001.json").read_text())
    f = tmp_path / "expanded.json"
    f.write_text(json.dumps({**refund, "charge": charge}))
    req = one_request(plugins, "stripe", f, allow_placeholder_time="true")
    assert req["transaction"]["id"] == "ch_fakefakefakefakefake0001"
    assert req["transaction"]["amount"] == "20.00"  # from the expanded charge (2000 cents)
    assert req["transaction"]["payment_method"] == {"type": "card", "last4": "4242"}
    assert req["customer"] == {"id": "cus_6lsBvm5rJ0zyHc"}


def test_stripe_refund_balance_transaction(plugins: Plugins, tmp_path: Path) -> None:
    bt = json.loads((STRIPE / "fixtures3_balance_transaction.json").read_text())
    bt.update(id="txn_r1", type="refund", amount=-250, fee=0, source="re_r1", created=1700000000,
              currency="eur", reporting_category="refund")
    f = tmp_path / "bt.json"
    f.write_text(json.dumps(bt))
    req = one_request(plugins, "stripe", f, jurisdiction="DE")
    assert req["request_id"] == "stripe:re_r1"
    assert (req["amount"], req["currency"]) == ("2.50", "EUR")  # -250 minor units
    assert req["transaction"] == {"id": "re_r1", "amount": "2.50"}
    assert req["requested_at"] == "2023-11-14T22:13:20+00:00"


# --- sinks ----------------------------------------------------------------------------------


def _approve(request: dict[str, Any], amount: str) -> tuple[Decision, refundry.RefundRequest]:
    req = refundry.parse_request(request)
    decision = Decision(outcome="approve", amount=Decimal(amount), currency=req.currency,
                        request_id=req.request_id, as_of=req.requested_at)
    return decision, req


def test_shopify_refund_sink_writes_refund_create_bodies(plugins: Plugins, tmp_path: Path) -> None:
    req = one_request(plugins, "shopify", SHOPIFY / "shopify_api_js_2024-04_refund_test_1.json")
    out = tmp_path / "create.jsonl"
    writer = plugins.sink("shopify-refund").open(out, {"notify": "true"})
    decision, parsed = _approve(req, "150.00")
    writer.write(decision, parsed, "r1")
    writer.write(decision, parsed, "r1")  # a resumed run: written once
    writer.write(Decision(outcome="deny", amount=Decimal("0.00"), currency="USD",
                          request_id="x", as_of=None), parsed, "r2")
    writer.close()
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["order_id"] == "450789469" and line["request_id"] == "shopify:refund:509562969"
    refund = line["refund"]
    assert set(refund) == {"currency", "notify", "note", "transactions"}
    assert refund["currency"] == "USD" and refund["notify"] is True
    assert refund["transactions"] == [{"kind": "refund", "amount": "150.00",
                                       "parent_id": 801038806, "gateway": "bogus"}]


def test_stripe_refund_sink_writes_minor_units(plugins: Plugins, tmp_path: Path) -> None:
    req = one_request(plugins, "stripe", STRIPE / "fixtures3_refund_2018-03-29.json",
                      allow_placeholder_time="true", reason="duplicate_charge")
    out = tmp_path / "params.jsonl"
    writer = plugins.sink("stripe-refund").open(out, {})
    writer.write(*_approve(req, "9.99"), "r")
    jp = dict(req, request_id="jp-1", currency="JPY", amount="1200", reason="defective",
              transaction={"id": "pi_123", "amount": "5000"})
    writer.write(*_approve(jp, "1200"), "r")
    writer.close()
    usd, jpy = [json.loads(x) for x in out.read_text().splitlines()]
    assert usd == {"request_id": "stripe:re_1B2aHR2eZvKYlo2ClqiWjlI2",
                   "idempotency_key": "refundry-stripe:re_1B2aHR2eZvKYlo2ClqiWjlI2",
                   "params": {"charge": "ch_1B2aHQ2eZvKYlo2CeUg9DBV6", "amount": 999,
                              "reason": "duplicate",
                              "metadata": {"refundry_request_id": "stripe:re_1B2aHR2eZvKYlo2ClqiWjlI2"}}}
    assert jpy["params"]["payment_intent"] == "pi_123" and jpy["params"]["amount"] == 1200
    assert "reason" not in jpy["params"]


def test_run_from_the_cli_with_the_shopify_sink(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "shopify", "--input", str(SHOPIFY),
           "--sink", "shopify-refund", "--out", str(tmp_path / "create.jsonl"), "--rulesets",
           str(RULESETS), "--option", "client_id=acme", "--option", "jurisdiction=US"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bodies = [json.loads(x) for x in (tmp_path / "create.jsonl").read_text().splitlines()]
    # Requests: 509562969 (three files, one case), 929361466, 929361467, transaction 179259969.
    assert {b["request_id"]: b["refund"]["transactions"][0]["amount"] for b in bodies} == {
        "shopify:refund:509562969": "209.00", "shopify:refund:929361466": "41.94",
        "shopify:refund:929361467": "5.00", "shopify:transaction:179259969": "209.00"}
    dead = [json.loads(x) for x in (tmp_path / "create.jsonl.dead-letter.jsonl").read_text().splitlines()]
    assert len(dead) == 13  # 10 not refunds + 3 calculate responses without a time
    assert "approve 4" in done.stderr and "duplicates 2" in done.stderr


# --- malformed payloads never break a batch -------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=12),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def mutate(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: mutate(doc[head], rest, value)}
    return [mutate(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@pytest.mark.parametrize("source,folder", [("shopify", SHOPIFY), ("stripe", STRIPE)])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_payloads_become_dead_letters(plugins: Plugins, tmp_path: Path, source: str,
                                                folder: Path, data: st.DataObject) -> None:
    files = sorted(folder.glob("*.json"))
    doc = json.loads(data.draw(st.sampled_from(files)).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = mutate(doc, path, data.draw(JUNK))
    f = tmp_path / "fuzz.json"
    f.write_text(json.dumps(doc))
    for rec in read(plugins, source, f, allow_placeholder_time="true",
                    requested_at="2024-04-03T09:00:00-05:00", currency="USD"):
        assert (rec.request is None) != (rec.error is None)
        assert rec.error is None or "\n" not in rec.error
