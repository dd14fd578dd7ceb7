"""Card disputes -> canonical refund requests: Stripe dispute objects and a CSV of disputes.

A dispute is a cardholder asking their bank for money back; refundry decides whether to refund
(or accept the chargeback) and by when. Stripe amounts are integer minor units with lower-case
currencies; ``created`` and ``evidence_details.due_by`` are Unix seconds (UTC).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from refundry.plugins import (
    SourceError,
    SourceRecord,
    epoch_to_rfc3339,
    from_minor_units,
    iter_api_objects,
    money_text,
    option,
    record_error,
    request_defaults,
)

PLACEHOLDER_EPOCH = 1234567890  # the created time of every object in Stripe's API fixtures

DISPUTE_OPTIONS = {
    "client_id": "required: the merchant's or issuer's client id in refundry",
    "jurisdiction": "required: ISO 3166 code of the cardholders",
    "timezone": "optional IANA zone",
    "allow_placeholder_time": "`true` accepts `created: 1234567890` (Stripe fixtures; tests only)",
}
# Stripe dispute reasons -> canonical reasons.
DISPUTE_REASONS = {
    "fraudulent": "unauthorized", "unrecognized": "unauthorized",
    "debit_not_authorized": "unauthorized", "duplicate": "duplicate_charge",
    "product_not_received": "not_received", "product_unacceptable": "not_as_described",
    "subscription_canceled": "service_cancelled", "credit_not_processed": "billing_error",
    "incorrect_account_details": "billing_error", "bank_cannot_process": "other",
    "check_returned": "other", "customer_initiated": "other", "insufficient_funds": "other",
    "general": "other", "other": "other", "not_received": "not_received",
    "service_not_as_described": "not_as_described", "merchandise_not_as_described": "not_as_described",
    "canceled": "service_cancelled",
}
FUNDING = {"credit": "credit_card", "debit": "debit_card", "prepaid": "prepaid"}


def read_stripe(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, "stripe-dispute", "finance")
    objects = list(iter_api_objects(path))
    charges = {str(o.get("id")): o for _, o, _ in objects
               if isinstance(o, dict) and o.get("object") == "charge"}
    for ref, obj, error in objects:
        if error:
            yield SourceRecord(ref, error=error)
            continue
        kind = obj.get("object") if isinstance(obj, dict) else None
        if kind not in ("dispute", "issuing.dispute"):
            if kind == "charge":
                yield SourceRecord(ref, context=f"charge `{obj.get('id')}`: read for the amount "
                                   "and card of its disputes")
            else:
                yield SourceRecord(ref, error=f"{ref}: not a dispute: a `{kind}` object")
            continue
        try:
            # A dispute changes state (needs_response -> under_review, funds withdrawn then
            # reinstated): the state makes a later copy of the same dispute an update of its
            # case, not a duplicate.
            state = f"{obj.get('status')}:{len(obj.get('balance_transactions') or [])}"
            yield SourceRecord(ref, request=_dispute(obj, charges, base, options), state=state)
        except Exception as exc:  # noqa: BLE001 - a malformed record is a dead letter
            yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _dispute(d: dict[str, Any], charges: Mapping[str, Any], base: dict[str, Any],
             options: Mapping[str, str]) -> dict[str, Any]:
    if d["created"] == PLACEHOLDER_EPOCH and options.get("allow_placeholder_time") != "true":
        raise ValueError(f"`created` {d['created']} is stripe's fixture placeholder; the request "
                         "time is unknown")
    currency = str(d["currency"]).upper()
    amount = from_minor_units(d["amount"], currency)
    issuing = d["object"] == "issuing.dispute"
    reason = (d.get("evidence") or {}).get("reason") if issuing else d.get("reason")
    linked = d.get("transaction") if issuing else d.get("charge") or d.get("payment_intent")
    expanded = linked if isinstance(linked, dict) else None  # fetched with expand[]=charge
    charge_id = str(expanded.get("id") if expanded else linked)
    card = ((d.get("payment_method_details") or {}).get("card")) or {}
    facts: dict[str, Any] = {"stripe_dispute_id": d["id"], "stripe_status": d.get("status"),
                             "stripe_reason": reason, "original_amount_known": False}
    finance: dict[str, Any] = {"scheme": "card_network",
                               "notice_received_at": epoch_to_rfc3339(d["created"]),
                               "fraud_reported": reason in ("fraudulent", "unrecognized")}
    if card.get("network") or card.get("brand"):
        finance["card_network"] = str(card.get("network") or card.get("brand"))
    for key in ("network_reason_code", "case_type"):
        if card.get(key):
            facts[key] = card[key]
    details = d.get("evidence_details") or {}
    if isinstance(details.get("due_by"), int):
        facts["evidence_due_by"] = epoch_to_rfc3339(details["due_by"])
    if "is_charge_refundable" in d:
        facts["is_charge_refundable"] = bool(d["is_charge_refundable"])
    txs = d.get("balance_transactions") or []
    if txs:
        # A withdrawal (-amount, +fee) and, when the dispute is won, a reinstatement reversing
        # both; their net says whether the funds are still out.
        net = sum((from_minor_units(t["net"], currency) for t in txs), Decimal(0))
        fees = sum((from_minor_units(t["fee"], currency) for t in txs), Decimal(0))
        facts["balance_net"] = str(net)
        facts["dispute_fees"] = str(fees)
        facts["funds_reinstated"] = net == 0 and len(txs) > 1
    transaction: dict[str, Any] = {"id": charge_id, "amount": str(amount)}
    customer = None
    charge = expanded if expanded and expanded.get("object") == "charge" else charges.get(charge_id)
    if charge is not None:
        transaction["amount"] = str(from_minor_units(charge["amount"], currency))
        transaction["purchased_at"] = epoch_to_rfc3339(charge["created"])
        ccard = (charge.get("payment_method_details") or {}).get("card") or {}
        if ccard.get("funding") in FUNDING:
            finance["account_type"] = FUNDING[ccard["funding"]]
        if ccard.get("last4"):
            transaction["payment_method"] = {"type": "card", "last4": ccard["last4"]}
        facts["original_amount_known"] = True
        facts["amount_exceeds_transaction"] = amount > from_minor_units(charge["amount"], currency)
        customer = charge.get("customer")
    return {
        **base, "request_id": f"stripe:{d['id']}", "requested_at": epoch_to_rfc3339(d["created"]),
        "amount": str(amount), "currency": currency,
        "reason": DISPUTE_REASONS.get(str(reason), "other"),
        "customer": {"id": str(customer or f"stripe:{charge_id}")},
        "transaction": transaction, "finance": finance,
        "facts": {k: v for k, v in facts.items() if v is not None},
    }


# --- CSV of card disputes ---------------------------------------------------------------------

CSV_COLUMNS = {
    "dispute_id": "required: unique id; becomes `request_id` (prefixed `csv:`)",
    "disputed_at": "required: RFC 3339 time the cardholder disputed (`requested_at`)",
    "amount": "required: disputed amount, decimal with a dot (`12.50`); a leading `-` is "
              "read as the magnitude (ledgers export debits as negatives)",
    "currency": "required: ISO 4217, any case",
    "reason": "required: a canonical reason or a Stripe/network dispute reason",
    "account_id": "required: the cardholder's account id (`customer.id`)",
    "transaction_id": "required: the disputed transaction",
    "transaction_amount": "the transaction's amount (default: `amount`)",
    "transaction_at": "RFC 3339 time of the transaction (`transaction.purchased_at`)",
    "account_type": "credit_card, debit_card, prepaid or bank_account",
    "card_network": "visa, mastercard, ...",
    "statement_sent_at": "RFC 3339; the statement that first showed the transaction",
    "notice_form": "written or oral",
    "last4": "last four digits of the card; a longer number is refused, never stored",
}
CSV_OPTIONS = {
    "client_id": "required: the issuer's client id in refundry",
    "jurisdiction": "required: ISO 3166 code of the cardholders",
    "timezone": "optional IANA zone",
    "delimiter": "field delimiter (default `,`)",
}
_REQUIRED = [k for k, v in CSV_COLUMNS.items() if v.startswith("required")]


def read_csv(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, "card-dispute-csv", "finance")
    delimiter = option(options, "delimiter", "card-dispute-csv", ",")
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    with fh:
        rows = csv.DictReader(fh, delimiter=delimiter)
        missing = [c for c in _REQUIRED if c not in (rows.fieldnames or [])]
        if missing:
            raise SourceError(f"`{path.name}`: the header lacks column(s) "
                              f"{', '.join(f'`{c}`' for c in missing)}")
        for row in rows:
            ref = f"{path.name}:{rows.line_num}"
            try:
                yield SourceRecord(ref, request=_row(row, base))
            except Exception as exc:  # noqa: BLE001 - a malformed row is a dead letter
                yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _row(row: Mapping[str, str | None], base: dict[str, Any]) -> dict[str, Any]:
    def get(name: str) -> str:
        return (row.get(name) or "").strip()

    for name in _REQUIRED:
        if not get(name):
            raise ValueError(f"column `{name}` is empty")
    currency = get("currency").upper()
    try:
        amount = abs(Decimal(money_text(get("amount"), currency)))
        tx_amount = abs(Decimal(money_text(get("transaction_amount") or get("amount"), currency)))
    except KeyError:
        raise ValueError(f"`{currency}` is not an ISO 4217 currency") from None
    reason = get("reason").lower()
    from refundry.core.models import REASONS

    canonical = reason if reason in REASONS else DISPUTE_REASONS.get(reason)
    if canonical is None:
        raise ValueError(f"column `reason`: `{reason[:40]}` is not a known reason")
    last4 = get("last4")
    if last4 and not (len(last4) == 4 and last4.isdigit()):
        raise ValueError("column `last4` must be exactly four digits")
    transaction: dict[str, Any] = {"id": get("transaction_id"), "amount": str(tx_amount)}
    if get("transaction_at"):
        transaction["purchased_at"] = get("transaction_at")
    if last4:
        transaction["payment_method"] = {"type": "card", "last4": last4}
    finance: dict[str, Any] = {"scheme": "card_network", "notice_received_at": get("disputed_at")}
    for key in ("account_type", "card_network", "statement_sent_at", "notice_form"):
        if get(key):
            finance[key] = get(key)
    return {
        **base, "request_id": f"csv:{get('dispute_id')}", "requested_at": get("disputed_at"),
        "amount": str(amount), "currency": currency, "reason": canonical,
        "customer": {"id": get("account_id")}, "transaction": transaction, "finance": finance,
    }
