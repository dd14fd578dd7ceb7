"""Stripe refunds and charges -> canonical refund requests, and refund create params.

Stripe amounts are integers in the currency's minor units (``100 usd`` is 1.00, ``100 jpy`` is
100), currencies are lower-case, times are Unix seconds in UTC. The input may hold refund and
charge objects side by side (a file, a list, a Stripe ``list`` object, or a directory): a refund
whose charge is in the input gets the charge's amount and card; a charge's own ``refunds`` list
is read too.

``created: 1234567890`` is the placeholder Stripe's API fixtures use; the real request time is
unknown, so such an object goes to the dead-letter output unless ``allow_placeholder_time=true``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import (
    JsonLinesWriter,
    SourceRecord,
    epoch_to_rfc3339,
    from_minor_units,
    iter_api_objects,
    record_error,
    request_defaults,
    to_minor_units,
)

SOURCE = "stripe"
PLACEHOLDER_EPOCH = 1234567890
OPTIONS = {
    "client_id": "required: the merchant's client id in refundry",
    "jurisdiction": "required: where the consumers are (ISO 3166)",
    "timezone": "optional IANA zone; default from the jurisdiction",
    "reason": "canonical reason for refunds without one (default `other`)",
    "allow_placeholder_time": "`true` accepts the fixture time 1234567890 (tests only)",
}
REASONS = {"duplicate": "duplicate_charge", "fraudulent": "unauthorized",
           "requested_by_customer": "changed_mind"}
TO_STRIPE_REASON = {"duplicate_charge": "duplicate", "unauthorized": "fraudulent"}


def created_at(obj: Mapping[str, Any], options: Mapping[str, str]) -> str:
    created = obj["created"]
    if created == PLACEHOLDER_EPOCH and options.get("allow_placeholder_time") != "true":
        raise ValueError(f"`created` {created} is stripe's fixture placeholder; the request "
                         "time is unknown")
    return epoch_to_rfc3339(created)


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "ecommerce")
    objects = list(iter_api_objects(path))
    charges = {str(o.get("id")): o for _, o, _ in objects
               if isinstance(o, dict) and o.get("object") == "charge"}
    for ref, obj, error in objects:
        if error or not isinstance(obj, dict):
            yield SourceRecord(ref, error=error or f"{ref}: not a stripe object")
            continue
        kind = obj.get("object")
        try:
            if kind == "refund":
                charge = obj.get("charge")
                if isinstance(charge, dict):  # fetched with expand[]=charge
                    obj = {**obj, "charge": charge.get("id")}
                else:
                    charge = charges.get(str(charge))
                yield SourceRecord(ref, request=_refund(obj, charge, base, options))
            elif kind == "charge":
                refunds = (obj.get("refunds") or {}).get("data") or []
                if not obj.get("captured"):
                    yield SourceRecord(ref, error=f"{ref}: charge `{obj['id']}` was never captured "
                                       "(an authorisation): releasing it is a cancel, not a refund")
                elif not refunds:
                    yield SourceRecord(ref, error=f"{ref}: charge `{obj['id']}` has no refunds")
                for i, refund in enumerate(refunds if obj.get("captured") else []):
                    yield SourceRecord(f"{ref}#refunds[{i}]",
                                       request=_refund(refund, obj, base, options))
            elif kind == "balance_transaction":
                if obj.get("type") in ("refund", "payment_refund"):
                    yield SourceRecord(ref, request=_balance_refund(obj, base, options))
                else:
                    yield SourceRecord(ref, error=f"{ref}: a `balance_transaction` of type "
                                       f"`{obj.get('type')}` is not a refund")
            elif kind in ("dispute", "issuing.dispute"):
                yield SourceRecord(ref, error=f"{ref}: the `{kind}` object is a dispute, not a "
                                   "refund: read it with source `stripe-dispute` (refundry-finance)")
            else:
                yield SourceRecord(ref, error=f"{ref}: a `{kind}` object is not a refund")
        except Exception as exc:  # noqa: BLE001 - a malformed record is a dead letter
            yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _refund(refund: dict[str, Any], charge: dict[str, Any] | None, base: dict[str, Any],
            options: Mapping[str, str]) -> dict[str, Any]:
    currency = str(refund["currency"]).upper()
    amount = from_minor_units(refund["amount"], currency)
    if refund.get("status") in ("failed", "canceled"):
        raise ValueError(f"refund `{refund['id']}` has status `{refund['status']}`")
    if charge is not None and not charge.get("captured"):
        raise ValueError(f"refund `{refund['id']}` is of charge `{charge['id']}`, which was never "
                         "captured: releasing an authorisation is a cancel, not a refund")
    charged_in = str(charge.get("currency") or currency).upper() if charge else currency
    if charge and charged_in != currency:
        # Stripe refunds in the charge's currency; a refund object that says otherwise is
        # forged or corrupt, and its amount would be compared with the charge in another unit.
        raise ValueError(f"refund `{refund['id']}` is in {currency[:3]} but its charge "
                         f"`{charge['id']}` was in {charged_in[:3]}: a refund is paid in the "
                         "currency of its charge")
    # Older API versions send "" where newer ones send null.
    reason = REASONS.get(refund.get("reason") or "", options.get("reason", "other"))
    charge_id = refund.get("charge") or refund.get("payment_intent")
    if not charge_id:
        raise ValueError(f"refund `{refund['id']}` names no charge or payment_intent")
    transaction: dict[str, Any] = {"id": str(charge_id), "amount": str(amount)}
    facts: dict[str, Any] = {"stripe_refund_id": refund["id"], "original_amount_known": False,
                             "stripe_status": refund.get("status") or None}
    customer = refund.get("customer")
    if charge is not None:
        transaction["amount"] = str(from_minor_units(charge["amount"], currency))
        transaction["purchased_at"] = epoch_to_rfc3339(charge["created"])
        card = (charge.get("payment_method_details") or {}).get("card")
        if card:
            transaction["payment_method"] = {"type": "card", **({"last4": card["last4"]} if card.get("last4") else {})}
        facts["original_amount_known"] = True
        facts["charge_amount_refunded"] = str(from_minor_units(charge.get("amount_refunded") or 0, currency))
        customer = customer or charge.get("customer")
    return {
        **base, "request_id": f"stripe:{refund['id']}", "requested_at": created_at(refund, options),
        "amount": str(amount), "currency": currency, "reason": reason,
        "customer": {"id": str(customer or f"stripe:{charge_id}")},
        "transaction": transaction, "facts": {k: v for k, v in facts.items() if v is not None},
    }


def _balance_refund(bt: dict[str, Any], base: dict[str, Any],
                    options: Mapping[str, str]) -> dict[str, Any]:
    """A refund as the balance sees it (``amount`` negative, ``source`` the refund id); the
    charge is not named, so the refund id stands for the transaction."""
    currency = str(bt["currency"]).upper()
    amount = abs(from_minor_units(bt["amount"], currency))
    refund_id = str(bt.get("source") or bt["id"])
    return {
        **base, "request_id": f"stripe:{refund_id}", "requested_at": created_at(bt, options),
        "amount": str(amount), "currency": currency, "reason": options.get("reason", "other"),
        "customer": {"id": f"stripe:{refund_id}"},
        "transaction": {"id": refund_id, "amount": str(amount)},
        "facts": {"stripe_balance_transaction": bt["id"], "original_amount_known": False,
                  "stripe_fee": str(from_minor_units(bt.get("fee") or 0, currency))},
    }


class RefundParamsWriter:
    """Approved decisions as Stripe ``POST /v1/refunds`` parameters, one JSON object per line:
    ``{"request_id", "idempotency_key", "params": {"charge"|"payment_intent", "amount"
    (integer minor units), "reason"?, "metadata"}}``. Other outcomes are not written."""

    def __init__(self, path: Path | None, options: Mapping[str, str]) -> None:
        self._out = JsonLinesWriter(path, "request_id")

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        if decision.outcome != "approve" or decision.amount <= 0:
            return
        target = request.transaction.id
        key = "payment_intent" if target.startswith("pi_") else "charge"
        params: dict[str, Any] = {
            key: target,
            "amount": to_minor_units(decision.amount, decision.currency),
            "metadata": {"refundry_request_id": request.request_id},
        }
        # Stripe accepts only these three reasons; anything else is sent without one.
        stripe_reason = TO_STRIPE_REASON.get(request.reason)
        if stripe_reason is None and request.reason == "changed_mind":
            stripe_reason = "requested_by_customer"
        if stripe_reason:
            params["reason"] = stripe_reason
        self._out.write({"request_id": request.request_id,
                         "idempotency_key": f"refundry-{request.request_id}", "params": params})

    def close(self) -> None:
        self._out.close()
