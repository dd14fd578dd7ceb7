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
from refundry.plugins import ExecutedRefund, Plugins, SourceError

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

# file -> (refund_id, amount, refunded_at): refunds Shopify has made already are history.
SHOPIFY_EXECUTED = {
    "shopify_api_js_2024-04_refund_test_1.json": (
        "shopify:refund:509562969", "209.00", "2024-04-02T08:59:11-05:00"),
    "shopify_api_js_2024-04_refund_test_4.json": (
        "shopify:refund:509562969", "209.00", "2024-04-02T08:59:11-05:00"),
    "shopify_api_js_2024-04_refund_test_2.json": (
        "shopify:refund:929361466", "41.94", "2024-04-02T09:01:02-05:00"),
    "shopify_api_js_2024-04_refund_test_3.json": (
        "shopify:refund:929361467", "5.00", "2024-04-02T09:01:05-05:00"),
    "shopify_python_api_refund.json": (
        "shopify:refund:509562969", "209.00", "2016-06-20T13:35:06-04:00"),
}
# refunds/calculate responses carry no time: with --option requested_at they become requests.
SHOPIFY_CALCULATED = {
    "shopify_api_js_2024-04_refund_test_5.json": ("2.00", "41.94", {"shipping_refunded": "2.00"}, []),
    "shopify_api_js_2024-04_refund_test_6.json": ("41.94", "41.94", {"totals_reconcile": False},
                                                  [("518995019", 1, "195.67")]),
    # the line's own subtotal (199.00 less a 3.33 cart discount), not the list price
    "shopify_python_api_refund_calculate.json": ("41.94", "41.94", {"line_items_total": "199.65"},
                                                 [("518995019", 1, "195.67")]),
}
# file -> context descriptions, one per object (payments the refunds are checked against)
SHOPIFY_CONTEXT = {
    **{f"shopify_api_js_2024-04_transaction_test_{n}.json": [
        f"transaction `{tid}` of kind `{kind}` of order `450789469`: not a refund"]
       for n, tid, kind in [(2, 1068278466, "capture"), (3, 1068278465, "capture"),
                            (4, 1068278482, "capture"), (5, 1068278479, "capture"),
                            (6, 1068278475, "void"), (8, 389404469, "authorization")]},
    "shopify_python_api_transaction.json": [
        "transaction `389404469` of kind `authorization` of order `450789469`: not a refund"],
    "shopify_python_api_transactions.json": [
        "transaction `389404469` of kind `authorization` of order `450789469`: not a refund"],
    "shopify_python_api_order.json": [
        "order `#1001` (financial_status `authorized`): a payment, not a refund"],
    "shopify_python_api_tender_transactions.json": [
        f"tender transaction `{n}` of order `450789469`: a payment" for n in (1, 2, 3)],
}
SHOPIFY_MIXED = "shopify_api_js_2024-04_transaction_test_1.json"


def test_every_shopify_payload_is_covered() -> None:
    files = {p.name for p in SHOPIFY.glob("*.json")}
    assert files == (set(SHOPIFY_EXECUTED) | set(SHOPIFY_CALCULATED) | set(SHOPIFY_CONTEXT)
                     | {SHOPIFY_MIXED})


@pytest.mark.parametrize("name", sorted(SHOPIFY_EXECUTED))
def test_shopify_refunds_are_executed_never_requests(plugins: Plugins, name: str) -> None:
    refund_id, amount, at = SHOPIFY_EXECUTED[name]
    (rec,) = read(plugins, "shopify", SHOPIFY / name)
    assert rec.kind == "executed" and rec.request is None
    assert rec.executed == ExecutedRefund(refund_id=refund_id, transaction_id="450789469",
                                          amount=amount, currency="USD", refunded_at=at)
    assert rec.executed.prior_refund() == {"amount": amount, "request_id": refund_id,
                                           "refunded_at": at}


def test_shopify_refund_transaction_beside_payments(plugins: Plugins) -> None:
    recs = read(plugins, "shopify", SHOPIFY / SHOPIFY_MIXED)
    assert [r.kind for r in recs] == ["executed", "context", "context"]
    assert recs[0].ref == f"{SHOPIFY_MIXED}#transactions[0]"
    assert recs[0].executed == ExecutedRefund(
        refund_id="shopify:transaction:179259969", transaction_id="450789469", amount="209.00",
        currency="USD", refunded_at="2005-08-05T12:59:12-04:00")


@pytest.mark.parametrize("name", sorted(SHOPIFY_CALCULATED))
def test_shopify_calculate_responses(plugins: Plugins, name: str) -> None:
    amount, maximum, facts, items = SHOPIFY_CALCULATED[name]
    assert "carries no time; pass `--option requested_at=...`" in dead(plugins, "shopify", SHOPIFY / name,
                                                                      currency="USD")
    req = one_request(plugins, "shopify", SHOPIFY / name, requested_at="2024-04-03T09:00:00-05:00",
                      currency="USD")
    assert req["request_id"] == f"shopify:order:450789469:suggested:801038806:{amount}"
    assert (req["amount"], req["currency"]) == (amount, "USD")
    assert req["transaction"] == {"id": "450789469", "amount": maximum}  # maximum_refundable
    assert req["requested_at"] == "2024-04-03T09:00:00-05:00"
    assert req["customer"] == {"id": "shopify:order:450789469"}
    assert (req["client_id"], req["industry"], req["jurisdiction"]) == ("acme", "ecommerce", "US")
    assert req["facts"]["original_amount_known"] is True
    assert req["facts"]["shopify_parent_id"] == "801038806"
    assert req["facts"]["shopify_gateway"] == "bogus"
    assert facts.items() <= req["facts"].items()
    assert [(i["sku"], i["quantity"], i["unit_price"]) for i in req.get("items", [])] == items


def test_an_old_calculate_response_without_currency_needs_the_option(plugins: Plugins) -> None:
    why = dead(plugins, "shopify", SHOPIFY / "shopify_python_api_refund_calculate.json",
               requested_at="2024-04-03T09:00:00-05:00")
    assert why.endswith("no currency in the refund or its transactions; pass `--option currency=...`")


@pytest.mark.parametrize("name", sorted(SHOPIFY_CONTEXT))
def test_shopify_payments_are_context(plugins: Plugins, name: str) -> None:
    recs = read(plugins, "shopify", SHOPIFY / name)
    assert [r.kind for r in recs] == ["context"] * len(recs)
    assert [r.context for r in recs] == SHOPIFY_CONTEXT[name]


def test_shopify_return_webhook(plugins: Plugins) -> None:
    req = one_request(plugins, "shopify", HERE / "synthetic" / "shopify_return_webhook.json",
                      jurisdiction="DE")
    assert req["request_id"] == "shopify:return:945000954"
    assert (req["amount"], req["currency"]) == ("69.80", "EUR")  # 59.90 + 2 x 4.95
    assert req["reason"] == "changed_mind" and req["requested_remedy"] == "refund"
    assert req["customer"] == {"id": "207119551"}
    assert req["requested_at"] == "2024-04-05T10:15:00+02:00"
    assert req["transaction"] == {"id": "450789469", "amount": "69.80"}
    assert [(i["sku"], i["quantity"], i["unit_price"]) for i in req["items"]] == [
        ("SHOE-42", 1, "59.90"), ("SOCK-3", 2, "4.95")]
    assert req["note"] == "Too small, and the second one arrived scratched"


def test_shopify_return_line_discounts_lower_the_unit_price(plugins: Plugins, tmp_path: Path) -> None:
    doc = json.loads((HERE / "synthetic" / "shopify_return_webhook.json").read_text())
    doc["return"]["return_line_items"][1]["line_item"]["discount_allocations"] = [{"amount": "1.00"}]
    f = tmp_path / "discounted.json"
    f.write_text(json.dumps(doc))
    req = one_request(plugins, "shopify", f, jurisdiction="DE")
    # 2 x 4.95 less 1.00 = 8.90, 4.45 each
    assert [i["unit_price"] for i in req["items"]] == ["59.90", "4.45"]
    assert req["amount"] == "68.80"


def test_shopify_needs_client_and_jurisdiction(plugins: Plugins) -> None:
    with pytest.raises(SourceError, match=r"source `shopify` needs `--option jurisdiction=...`"):
        list(plugins.source("shopify").read(SHOPIFY, {"client_id": "acme"}))


# --- Stripe ---------------------------------------------------------------------------------

STRIPE = PAYLOADS / "stripe"
STRIPE_DEAD = {
    "fixtures3_credit_note.json": "a `credit_note` object is not a refund",
    "fixtures3_customer_balance_transaction.json": "a `customer_balance_transaction` object is not a refund",
    "fixtures3_fee_refund.json": "a `fee_refund` object is not a refund",
    "fixtures3_transfer_reversal.json": "a `transfer_reversal` object is not a refund",
    "fixtures3_dispute.json": "the `dispute` object is a dispute, not a refund: read it with source `stripe-dispute` (refundry-finance)",
    "fixtures3_issuing_dispute.json": "the `issuing.dispute` object is a dispute, not a refund: read it with source `stripe-dispute` (refundry-finance)",
}
STRIPE_CONTEXT = {
    "djstripe_charge_ch_fakefakefakefakefake0001.json": "charge `ch_fakefakefakefakefake0001`, captured, with 0 refund(s): the payment refunds are checked against",
    "fixtures3_charge.json": "charge `ch_1PgafuB7WZ01zgkWXYmPNZs8`, never captured (an authorisation), with 0 refund(s): the payment refunds are checked against",
    "fixtures3_balance_transaction.json": "balance transaction `txn_1PgaxNB7WZ01zgkWEV3TLf40` of type `charge`: not a refund",
    "fixtures3_payment_intent.json": "payment intent `pi_1PgafyB7WZ01zgkWSjxsAJo3`: a payment",
}
STRIPE_EXECUTED = {
    "fixtures3_refund.json": ("stripe:re_1Pgc72B7WZ01zgkWqPvrRrPE", "1.00", "ch_1PgafuB7WZ01zgkWXYmPNZs8"),
    # the 2018 shape: "" where the API now sends null; 1000 cents
    "fixtures3_refund_2018-03-29.json": ("stripe:re_1B2aHR2eZvKYlo2ClqiWjlI2", "10.00", "ch_1B2aHQ2eZvKYlo2CeUg9DBV6"),
}


def test_every_stripe_payload_is_covered() -> None:
    assert {p.name for p in STRIPE.glob("*.json")} == (set(STRIPE_DEAD) | set(STRIPE_EXECUTED)
                                                       | set(STRIPE_CONTEXT))


@pytest.mark.parametrize("name", sorted(STRIPE_DEAD))
def test_stripe_objects_that_are_not_refunds(plugins: Plugins, name: str) -> None:
    assert dead(plugins, "stripe", STRIPE / name) == f"{name}: {STRIPE_DEAD[name]}"


@pytest.mark.parametrize("name", sorted(STRIPE_CONTEXT))
def test_stripe_payments_are_context(plugins: Plugins, name: str) -> None:
    (rec,) = read(plugins, "stripe", STRIPE / name)
    assert rec.kind == "context" and rec.context == STRIPE_CONTEXT[name]


@pytest.mark.parametrize("name", sorted(STRIPE_EXECUTED))
def test_stripe_refunds_are_executed_never_requests(plugins: Plugins, name: str) -> None:
    refund_id, amount, charge = STRIPE_EXECUTED[name]
    (rec,) = read(plugins, "stripe", STRIPE / name)
    # The fixtures' created time is the placeholder 1234567890: the refund time is unknown.
    assert rec.executed == ExecutedRefund(refund_id=refund_id, transaction_id=charge,
                                          amount=amount, currency="USD", refunded_at=None)


def test_a_stripe_refund_of_an_uncaptured_charge_in_the_same_input_is_a_cancel(plugins: Plugins, tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text(json.dumps([json.loads((STRIPE / f).read_text())
                                for f in ("fixtures3_charge.json", "fixtures3_refund.json")]))
    recs = read(plugins, "stripe", both)
    assert [r.kind for r in recs] == ["context", "broken"]
    assert recs[1].error == "both.json[1]: refund `re_1Pgc72B7WZ01zgkWqPvrRrPE` is of charge `ch_1PgafuB7WZ01zgkWXYmPNZs8`, which was never captured: releasing an authorisation is a cancel, not a refund"


JPY_CHARGE = {"object": "charge", "id": "ch_jpy1", "amount": 5000, "currency": "jpy", "captured": True,
              "created": 1700000000, "customer": "cus_1",
              "payment_method_details": {"card": {"last4": "4242"}},
              "refunds": {"object": "list", "data": [
                  {"object": "refund", "id": "re_jpy1", "amount": 1200, "currency": "jpy",
                   "charge": "ch_jpy1", "created": 1700003600, "reason": "requested_by_customer",
                   "status": "succeeded"}]}}


def test_stripe_zero_decimal_refund_of_a_charge_is_history(plugins: Plugins, tmp_path: Path) -> None:
    f = tmp_path / "jpy.json"
    f.write_text(json.dumps(JPY_CHARGE))
    charge, refund = read(plugins, "stripe", f, jurisdiction="JP")
    assert charge.kind == "context"
    assert refund.ref == "jpy.json#refunds[0]"
    assert refund.executed == ExecutedRefund(  # JPY has no minor unit: 1200 is 1200
        refund_id="stripe:re_jpy1", transaction_id="ch_jpy1", amount="1200", currency="JPY",
        refunded_at="2023-11-14T23:13:20+00:00")


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
    f.write_text(json.dumps({**refund, "charge": charge, "metadata": {"refundry_request_id": "case-9"}}))
    (rec,) = read(plugins, "stripe", f)
    assert rec.executed is not None
    assert rec.executed.transaction_id == "ch_fakefakefakefakefake0001"
    assert rec.executed.case == "case-9"  # the idempotency key the sink wrote names the case
    assert rec.executed.prior_refund()["request_id"] == "case-9"


def test_stripe_refund_balance_transaction(plugins: Plugins, tmp_path: Path) -> None:
    bt = json.loads((STRIPE / "fixtures3_balance_transaction.json").read_text())
    bt.update(id="txn_r1", type="refund", amount=-250, fee=0, source="re_r1", created=1700000000,
              currency="eur", reporting_category="refund")
    f = tmp_path / "bt.json"
    f.write_text(json.dumps(bt))
    (rec,) = read(plugins, "stripe", f, jurisdiction="DE")
    assert rec.executed == ExecutedRefund(refund_id="stripe:re_r1", transaction_id="re_r1",
                                          amount="2.50", currency="EUR",
                                          refunded_at="2023-11-14T22:13:20+00:00")


# --- sinks ----------------------------------------------------------------------------------


def _approve(request: dict[str, Any], amount: str) -> tuple[Decision, refundry.RefundRequest]:
    req = refundry.parse_request(request)
    decision = Decision(outcome="approve", amount=Decimal(amount), currency=req.currency,
                        request_id=req.request_id, as_of=req.requested_at)
    return decision, req


def _calculated(plugins: Plugins) -> dict[str, Any]:
    return one_request(plugins, "shopify", SHOPIFY / "shopify_api_js_2024-04_refund_test_6.json",
                       requested_at="2024-04-03T09:00:00-05:00")


def test_shopify_refund_sink_writes_refund_create_bodies(plugins: Plugins, tmp_path: Path) -> None:
    req = _calculated(plugins)
    rid = req["request_id"]
    out = tmp_path / "create.jsonl"
    writer = plugins.sink("shopify-refund").open(out, {"notify": "true"})
    decision, parsed = _approve(req, "40.00")
    writer.write(decision, parsed, "r1")
    writer.write(decision, parsed, "r1")  # a resumed run: written once
    writer.write(Decision(outcome="deny", amount=Decimal("0.00"), currency="USD",
                          request_id="x", as_of=None), parsed, "r2")
    writer.close()
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["order_id"] == "450789469" and line["request_id"] == rid
    assert line["idempotency_key"] == f"refundry-{rid}"
    refund = line["refund"]
    assert set(refund) == {"currency", "notify", "note", "transactions"}
    assert refund["currency"] == "USD" and refund["notify"] is True
    assert refund["note"].startswith(f"refundry {rid}")
    assert refund["transactions"] == [{"kind": "refund", "amount": "40.00",
                                       "parent_id": 801038806, "gateway": "bogus"}]


def test_stripe_refund_sink_writes_minor_units(plugins: Plugins, tmp_path: Path) -> None:
    base = {"request_id": "case-1", "client_id": "acme", "industry": "ecommerce",
            "jurisdiction": "US", "requested_at": "2024-04-03T09:00:00-05:00", "amount": "9.99",
            "currency": "USD", "reason": "duplicate_charge", "customer": {"id": "cus_1"},
            "transaction": {"id": "ch_1B2aHQ2eZvKYlo2CeUg9DBV6", "amount": "10.00"}}
    out = tmp_path / "params.jsonl"
    writer = plugins.sink("stripe-refund").open(out, {})
    writer.write(*_approve(base, "9.99"), "r")
    jp = dict(base, request_id="jp-1", currency="JPY", amount="1200", reason="defective",
              transaction={"id": "pi_123", "amount": "5000"})
    writer.write(*_approve(jp, "1200"), "r")
    writer.close()
    usd, jpy = [json.loads(x) for x in out.read_text().splitlines()]
    assert usd == {"request_id": "case-1", "idempotency_key": "refundry-case-1", "currency": "USD",
                   "params": {"charge": "ch_1B2aHQ2eZvKYlo2CeUg9DBV6", "amount": 999,
                              "reason": "duplicate",
                              "metadata": {"refundry_request_id": "case-1"}}}
    assert jpy["params"]["payment_intent"] == "pi_123" and jpy["params"]["amount"] == 1200
    assert "reason" not in jpy["params"]


def test_run_from_the_cli_with_the_shopify_sink(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "shopify", "--input", str(SHOPIFY),
           "--sink", "shopify-refund", "--out", str(tmp_path / "create.jsonl"), "--rulesets",
           str(RULESETS), "--option", "client_id=acme", "--option", "jurisdiction=US"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Every refund in the folder was made already: none is written again.
    assert (tmp_path / "create.jsonl").read_text() == ""
    dead = [json.loads(x) for x in (tmp_path / "create.jsonl.dead-letter.jsonl").read_text().splitlines()]
    assert len(dead) == 3  # the calculate responses, which carry no time without the option
    assert "read: executed 6" in done.stderr and "read: context 14" in done.stderr
    assert "read: request 0" in done.stderr and "read: broken 3" in done.stderr


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
        assert rec.kind in ("request", "executed", "context", "broken")
        assert rec.error is None or "\n" not in rec.error


# --- the contract kit a third-party adapter runs, run on this one ---------------------------

import refundry_ecommerce  # noqa: E402

from refundry.plugins.testing import contract_tests  # noqa: E402

TestShopifyContract = contract_tests(refundry_ecommerce, name="ecommerce", source="shopify",
                                     input=SHOPIFY, options=OPTS, sink="shopify-refund")
TestStripeContract = contract_tests(refundry_ecommerce, name="ecommerce", source="stripe",
                                    input=STRIPE, options=OPTS, sink="stripe-refund")


def _with_currency(doc: Any, currency: str) -> Any:
    if isinstance(doc, dict):
        return {k: currency if k == "currency" else _with_currency(v, currency) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_with_currency(v, currency) for v in doc]
    return doc


@pytest.mark.parametrize("currency", ["\n", "us\nd", "\u2028", "\x1b[31m"])
def test_a_control_character_in_a_payload_never_breaks_a_dead_letter_line(
        plugins: Plugins, tmp_path: Path, currency: str) -> None:
    # found by the fuzzer above: a Stripe refund whose currency was "\n" put a newline into
    # the dead letter's reason, which must be one line whatever the payload holds
    reasons = []
    for file in sorted(STRIPE.glob("*.json")):
        f = tmp_path / file.name
        f.write_text(json.dumps(_with_currency(json.loads(file.read_text()), currency)))
        reasons += [r.error for r in read(plugins, "stripe", f, allow_placeholder_time="true",
                                          requested_at="2024-04-03T09:00:00-05:00")
                    if r.error is not None]
    assert reasons
    assert all(r.isprintable() for r in reasons), [r for r in reasons if not r.isprintable()]
