"""Stripe objects -> source records, and refund create params.

A Stripe refund is money already on its way back: every refund (``pending``,
``requires_action``, ``succeeded``; a charge's own ``refunds`` list; a refund balance
transaction; a line the ``stripe-refund`` sink wrote) is an *executed* record, never a request:
refundry never creates it a second time. ``failed``/``canceled`` refunds, charges and payment
intents are *context*. Refund requests reach refundry from elsewhere (disputes, returns, a
``jsonl`` source); the ``stripe-refund`` sink turns approved ones into create params.

Stripe amounts are integers in the currency's minor units (``100 usd`` is 1.00, ``100 jpy`` is
100), currencies are lower-case, times are Unix seconds in UTC. The input may hold refund and
charge objects side by side (a file, a list, a Stripe ``list`` object, or a directory): a refund
whose charge is in the input gets the charge's amount and card; a charge's own ``refunds`` list
is read too.

``created: 1234567890`` is the placeholder Stripe's API fixtures use: such a refund's time is
unknown and left out of its ``prior_refunds`` entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import (
    ExecutedRefund,
    JsonLinesWriter,
    Option,
    SourceRecord,
    already_executed,
    epoch_to_rfc3339,
    from_minor_units,
    idempotency_key,
    iter_api_objects,
    record_error,
    request_defaults,
    to_minor_units,
)
from refundry_ecommerce.delivery import Client, delivered_before, form_body

SOURCE = "stripe"
PLACEHOLDER_EPOCH = 1234567890
OPTIONS = (
    Option("client_id", help="the merchant's client id in refundry", required=True),
    Option("jurisdiction", help="where the consumers are (ISO 3166)", required=True),
    Option("timezone", help="IANA zone; default from the jurisdiction"),
)
REASONS = {"duplicate": "duplicate_charge", "fraudulent": "unauthorized",
           "requested_by_customer": "changed_mind"}
TO_STRIPE_REASON = {"duplicate_charge": "duplicate", "unauthorized": "fraudulent"}


def _time(obj: Mapping[str, Any]) -> str | None:
    created = obj.get("created")
    return None if created in (None, PLACEHOLDER_EPOCH) else epoch_to_rfc3339(created)


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    request_defaults(options, SOURCE, "ecommerce")  # a run without a client never starts
    objects = list(iter_api_objects(path))
    charges = {str(o.get("id")): o for _, o, _ in objects
               if isinstance(o, dict) and o.get("object") == "charge"}
    for ref, obj, error in objects:
        if error or not isinstance(obj, dict):
            yield SourceRecord(ref, error=error or f"{ref}: not a stripe object")
            continue
        try:
            yield from _records(ref, obj, charges)
        except Exception as exc:  # noqa: BLE001 - a malformed record is a dead letter
            yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _records(ref: str, obj: dict[str, Any], charges: Mapping[str, Any]) -> Iterator[SourceRecord]:
    kind = obj.get("object")
    if "idempotency_key" in obj and isinstance(obj.get("params"), dict):
        yield SourceRecord(ref, executed=_instruction(obj))
    elif kind == "refund":
        charge = obj.get("charge")
        if isinstance(charge, dict):  # fetched with expand[]=charge
            obj = {**obj, "charge": charge.get("id")}
        else:
            charge = charges.get(str(charge))
        yield _refund(ref, obj, charge)
    elif kind == "charge":
        refunds = (obj.get("refunds") or {}).get("data") or []
        state = "captured" if obj.get("captured") else "never captured (an authorisation)"
        yield SourceRecord(ref, context=f"charge `{obj['id']}`, {state}, with "
                           f"{len(refunds)} refund(s): the payment refunds are checked against")
        for i, refund in enumerate(refunds):
            yield _refund(f"{ref}#refunds[{i}]", refund, obj)
    elif kind == "payment_intent":
        yield SourceRecord(ref, context=f"payment intent `{obj.get('id')}`: a payment")
    elif kind == "balance_transaction" and obj.get("type") in ("refund", "payment_refund"):
        yield SourceRecord(ref, executed=_balance_refund(obj))
    elif kind == "balance_transaction":
        yield SourceRecord(ref, context=f"balance transaction `{obj.get('id')}` of type "
                           f"`{obj.get('type')}`: not a refund")
    elif kind in ("dispute", "issuing.dispute"):
        yield SourceRecord(ref, error=f"{ref}: the `{kind}` object is a dispute, not a "
                           "refund: read it with source `stripe-dispute` (refundry-finance)")
    else:
        yield SourceRecord(ref, error=f"{ref}: a `{kind}` object is not a refund")


def _refund(ref: str, refund: dict[str, Any], charge: dict[str, Any] | None) -> SourceRecord:
    """A Stripe refund exists once it is created: pending, requires_action and succeeded are
    money on its way back (executed); failed and canceled moved nothing (context)."""
    currency = str(refund["currency"]).upper()
    amount = from_minor_units(refund["amount"], currency)
    if refund.get("status") in ("failed", "canceled"):
        return SourceRecord(ref, context=f"refund `{refund['id']}` has status "
                            f"`{refund['status']}`: no money moved")
    if charge is not None and not charge.get("captured"):
        raise ValueError(f"refund `{refund['id']}` is of charge `{charge['id']}`, which was never "
                         "captured: releasing an authorisation is a cancel, not a refund")
    charge_id = refund.get("charge") or refund.get("payment_intent")
    if not charge_id:
        raise ValueError(f"refund `{refund['id']}` names no charge or payment_intent")
    case = (refund.get("metadata") or {}).get("refundry_request_id")
    return SourceRecord(ref, executed=ExecutedRefund(
        refund_id=f"stripe:{refund['id']}", transaction_id=str(charge_id), amount=str(amount),
        currency=currency, refunded_at=_time(refund), case=str(case) if case else None))


def _instruction(line: dict[str, Any]) -> ExecutedRefund:
    """A line the ``stripe-refund`` sink wrote, read back: its case is decided and the refund
    is created under its idempotency key, never a second time."""
    params = line["params"]
    target = str(params.get("charge") or params.get("payment_intent"))
    currency = str(line.get("currency") or params.get("currency") or "")
    amount = from_minor_units(params["amount"], currency) if currency else params["amount"]
    return ExecutedRefund(refund_id=str(line["idempotency_key"]), transaction_id=target,
                          amount=str(amount), currency=currency.upper(),
                          case=str(line["request_id"]))


def _balance_refund(bt: dict[str, Any]) -> ExecutedRefund:
    """A refund as the balance sees it (``amount`` negative, ``source`` the refund id); the
    charge is not named, so the refund id stands for the transaction."""
    currency = str(bt["currency"]).upper()
    refund_id = str(bt.get("source") or bt["id"])
    return ExecutedRefund(refund_id=f"stripe:{refund_id}", transaction_id=refund_id,
                          amount=str(abs(from_minor_units(bt["amount"], currency))),
                          currency=currency, refunded_at=_time(bt))


class RefundParamsWriter:
    """Approved decisions as Stripe ``POST /v1/refunds`` parameters, one JSON object per line:
    ``{"request_id", "idempotency_key", "currency", "params": {"charge"|"payment_intent",
    "amount" (integer minor units), "reason"?, "metadata"}}``. Other outcomes are not written.

    With ``deliver=true`` each is first POSTed to ``base_url`` + ``/v1/refunds`` with the
    ``Idempotency-Key`` header, and the line records the refund Stripe made (``refund_id``);
    ``write`` returns that id, which ``refundry run --db`` records on the case.
    """

    def __init__(self, path: Path | None, options: Mapping[str, str]) -> None:
        self._out = JsonLinesWriter(path, "request_id")
        self._made = delivered_before(path)
        self._client = Client(options, token_header="Authorization") \
            if options.get("deliver", "false").lower() == "true" else None
        if self._client is not None and "Authorization" in self._client.headers:
            self._client.headers["Authorization"] = f"Bearer {self._client.headers['Authorization']}"

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> str | None:
        if decision.outcome != "approve" or decision.amount <= 0 \
                or already_executed(request):
            return None
        if request.request_id in self._out.seen:  # written (and delivered) by an earlier run
            return self._made.get(request.request_id)
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
        line: dict[str, Any] = {"request_id": request.request_id,
                                "idempotency_key": idempotency_key(request.request_id),
                                "currency": decision.currency, "params": params}
        if self._client is not None:
            # Delivered before the line is written: a kill in between delivers again under
            # the same key, and Stripe answers with the refund it already made.
            made = self._client.post("/v1/refunds", form_body(params),
                                     "application/x-www-form-urlencoded",
                                     {"Idempotency-Key": line["idempotency_key"]})
            line["refund_id"] = f"stripe:{made['id']}"
        self._out.write(line)
        return line.get("refund_id")

    def close(self) -> None:
        self._out.close()
