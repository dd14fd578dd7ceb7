"""HL7 FHIR R4 resources -> canonical refund requests, and a PaymentReconciliation out.

R4 has no Refund resource. Money owed back shows up as:
- ``PaymentReconciliation.detail`` lines that are negative or typed ``advance``/``adjustment``
  (a payer recovering an advance or an overpayment from the provider);
- ``ClaimResponse.payment.adjustment`` (a recoupment), or a ``payment.amount`` above the
  ``benefit`` total (the provider was paid more than the benefit: an overpayment).
Everything else (Account, Claim, Invoice, ChargeItem, Coverage, PaymentNotice, EOB, or a
ClaimResponse with ``outcome: error``) goes to the dead-letter output saying why.

Nothing clinical is read: no diagnosis, procedure, patient name or service line reaches the
request (HIPAA minimum necessary); identifiers are the claim's and the payment's.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import (
    ExecutedRefund,
    JsonLinesWriter,
    SourceRecord,
    already_executed,
    day_start,
    iter_json_documents,
    money_text,
    record_error,
    request_defaults,
    zone_for,
)

SOURCE = "fhir"
OPTIONS = {
    "client_id": "required: the payer's or provider's client id in refundry",
    "jurisdiction": "required: ISO 3166 code (`US`, `US-CA`, `DE`)",
    "timezone": "optional IANA zone that FHIR dates (days without a time) are read in",
    "provider_type": "optional: `physician`, `hospital`, ... copied to healthcare.provider_type",
}
PAYMENT_TYPE = "http://terminology.hl7.org/CodeSystem/payment-type"
REQUEST_SYSTEM = "urn:refundry:request"  # the identifier system the sink names its case with


class NotARefund(Exception):
    pass


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "healthcare")
    if options.get("provider_type"):
        base["healthcare"] = {"provider_type": options["provider_type"]}
    for name, doc, error in iter_json_documents(path):
        if error:
            yield SourceRecord(name, error=error)
            continue
        for ref, resource in _resources(name, doc):
            yield from _read_resource(ref, resource, base)


def _resources(name: str, doc: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc.get("entry") or []):
            yield f"{name}#entry[{i}]", (entry or {}).get("resource")
    else:
        yield name, doc


def _read_resource(ref: str, res: Any, base: dict[str, Any]) -> Iterator[SourceRecord]:
    if not isinstance(res, dict) or "resourceType" not in res:
        yield SourceRecord(ref, error=f"{ref}: not a fhir resource (no `resourceType`)")
        return
    rtype = res["resourceType"]
    label = f"{rtype}/{res.get('id', '?')}"
    try:
        if rtype == "PaymentReconciliation" and _own_case(res):
            yield SourceRecord(ref, executed=_executed(res))
            return
        if rtype == "PaymentReconciliation":
            requests = list(_payment_reconciliation(res, base))
        elif rtype == "ClaimResponse":
            requests = [_claim_response(res, base)]
        elif rtype == "Account":
            raise NotARefund("an R4 Account states no balance or amount; there is nothing to "
                             "refund in it")
        else:
            raise NotARefund(f"the `{rtype}` resource is not a refund, overpayment or "
                            "recoupment")
    except NotARefund as exc:
        # Valid FHIR that moves no money back (claims, invoices, notices): context.
        yield SourceRecord(ref, context=f"{label}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - a malformed resource is a dead letter
        yield SourceRecord(ref, error=f"{ref}: {label}: {record_error(exc)}")
        return
    for key, request in requests:
        yield SourceRecord(f"{ref}#{key}" if key else ref, request=request)


def _own_case(res: Mapping[str, Any]) -> str | None:
    """The refundry case a PaymentReconciliation was written for (this package's sink)."""
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == REQUEST_SYSTEM and ident.get("value"):
            return str(ident["value"])
    return None


def _executed(res: dict[str, Any]) -> ExecutedRefund:
    """A PaymentReconciliation this package's sink wrote, read back: that refund is made."""
    value, currency = _money(res["paymentAmount"])
    return ExecutedRefund(
        refund_id=f"fhir:PaymentReconciliation/{res['id']}",
        transaction_id=str((res.get("paymentIdentifier") or {}).get("value") or res["id"]),
        amount=str(abs(value)), currency=currency, refunded_at=res.get("created"),
        case=_own_case(res))


def _money(m: Mapping[str, Any], fallback_currency: str | None = None) -> tuple[Decimal, str]:
    currency = str(m.get("currency") or fallback_currency or "")
    if not currency:
        raise ValueError("a money value names no currency")
    return Decimal(money_text(m["value"], currency)), currency.upper()


def _code(concept: Any) -> str | None:
    for coding in (concept or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return None


def _ident(ref: Any) -> str | None:
    """A Reference's identifier value, else its literal reference."""
    if not isinstance(ref, Mapping):
        return None
    ident = ref.get("identifier")
    if isinstance(ident, Mapping) and ident.get("value"):
        return str(ident["value"])
    return str(ref["reference"]) if ref.get("reference") else None


def _when(value: str, base: Mapping[str, Any]) -> str:
    return day_start(value, zone_for(base)) if len(value) == 10 else value


def _payment_reconciliation(res: dict[str, Any], base: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    paid, currency = _money(res["paymentAmount"])
    details = res.get("detail") or []
    total = sum((_money(d["amount"], currency)[0] for d in details if d.get("amount")), Decimal(0))
    payment_id = (res.get("paymentIdentifier") or {}).get("value") or res["id"]
    found = False
    for i, d in enumerate(details):
        kind = _code(d.get("type"))
        if not d.get("amount"):
            continue
        value, cur = _money(d["amount"], currency)
        if not (value < 0 or kind in ("advance", "adjustment")) or value == 0:
            continue
        found = True
        key = str((d.get("identifier") or {}).get("value") or f"detail[{i}]")
        day = d.get("date") or res["created"]
        healthcare = {**base.get("healthcare", {}), "requested_by": "payer",
                      "payment_received_at": _when(res["paymentDate"], base),
                      "overpayment_identified_at": _when(day, base)}
        claim = _ident(d.get("request"))
        if claim:
            healthcare["claim_id"] = claim
        yield key, {
            **base, "request_id": f"fhir:PaymentReconciliation/{res['id']}#{key}",
            "requested_at": _when(day, base), "amount": str(abs(value)), "currency": cur,
            "reason": "overpayment",
            "customer": {"id": _ident(d.get("payee")) or _ident(d.get("submitter"))
                         or _ident(res.get("requestor")) or "unknown-provider"},
            "transaction": {"id": str(payment_id), "amount": str(paid)},
            "healthcare": healthcare,
            "facts": {"fhir_resource": f"PaymentReconciliation/{res['id']}",
                      "fhir_detail_type": kind, "fhir_detail_amount": str(value),
                      "payment_amount": str(paid), "details_total": str(total),
                      "totals_reconcile": total == paid},
        }
    if not found:
        raise NotARefund("no negative, advance or adjustment detail line")


def _claim_response(res: dict[str, Any], base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if res.get("outcome") == "error":
        raise NotARefund("outcome `error`: the claim was not adjudicated, nothing was paid")
    payment = res.get("payment")
    if not payment or not payment.get("amount"):
        raise NotARefund("no payment")
    paid, currency = _money(payment["amount"])
    benefit = None
    for total in res.get("total") or []:
        if _code(total.get("category")) == "benefit":
            benefit = _money(total["amount"], currency)[0]
    adjustment = _money(payment["adjustment"], currency)[0] if payment.get("adjustment") else Decimal(0)
    if adjustment != 0:
        amount, why = abs(adjustment), "payment_adjustment"
    elif benefit is not None and paid > benefit:
        # Paid above the adjudicated benefit, with no adjustment to explain it.
        amount, why = paid - benefit, "paid_above_benefit"
    else:
        raise NotARefund(f"paid {paid} {currency} against a benefit of {benefit} with no "
                         "adjustment: no overpayment")
    day = payment.get("date") or res["created"]
    healthcare: dict[str, Any] = {**base.get("healthcare", {}), "requested_by": "payer",
                                  "payment_received_at": _when(day, base)}
    if benefit is not None:
        healthcare["amount_due"] = str(benefit)
    claim = _ident(res.get("request"))
    if claim:
        healthcare["claim_id"] = claim
    facts: dict[str, Any] = {"fhir_resource": f"ClaimResponse/{res['id']}", "overpayment_kind": why,
                             "payment_amount": str(paid)}
    if benefit is not None:
        facts["benefit_total"] = str(benefit)
    if payment.get("adjustmentReason"):
        facts["adjustment_reason"] = _code(payment["adjustmentReason"])
    return "", {
        **base, "request_id": f"fhir:ClaimResponse/{res['id']}",
        "requested_at": _when(res["created"], base), "amount": str(amount), "currency": currency,
        "reason": "overpayment",
        "customer": {"id": _ident(res.get("requestor")) or "unknown-provider"},
        "transaction": {"id": str((payment.get("identifier") or {}).get("value") or res["id"]),
                        "amount": str(paid)},
        "healthcare": healthcare, "facts": facts,
    }


# --- sink ---------------------------------------------------------------------------------------

_NUMBER = re.compile(r'"\$decimal:(-?[0-9]+(?:\.[0-9]+)?)"')


def dumps_fhir(resource: Mapping[str, Any]) -> str:
    """JSON with ``Decimal`` written as a JSON number (FHIR's ``decimal``), exactly, never via
    a float."""
    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"$decimal:{value}"
        raise TypeError(type(value).__name__)

    return _NUMBER.sub(r"\1", json.dumps(resource, default=default, ensure_ascii=False))


def payment_reconciliation(decision: Decision, request: RefundRequest) -> dict[str, Any]:
    """An R4 PaymentReconciliation for an approved refund: the amount the decision allows, the
    request as identifier, the claim (when known) as the detail's request."""
    rid = hashlib.sha256(request.request_id.encode()).hexdigest()[:40]
    when = decision.as_of or request.requested_at
    recoupment = str((request.facts or {}).get("fhir_detail_amount", "")).startswith("-")
    due = decision.deadline("refund_due_by") or decision.deadline("return_due_by") or when.date()
    detail: dict[str, Any] = {
        "identifier": {"system": REQUEST_SYSTEM, "value": request.request_id},
        "type": {"coding": [{"system": PAYMENT_TYPE, "code": "adjustment"}]},
        "date": due.isoformat(),
        # A recoupment (the payer takes money back) keeps the sign its detail line had.
        "amount": {"value": -decision.amount if recoupment else decision.amount,
                   "currency": decision.currency},
    }
    hc = request.healthcare
    if hc is not None and hc.claim_id:
        detail["request"] = {"identifier": {"value": hc.claim_id}}
    reasons = "; ".join(f"{r.rule_id}: {r.message}" for r in decision.reasons)
    return {
        "resourceType": "PaymentReconciliation",
        "id": f"refundry-{rid}",
        "identifier": [{"system": REQUEST_SYSTEM, "value": request.request_id}],
        "status": "active",
        "created": when.isoformat(),
        "requestor": {"identifier": {"value": request.customer.id}},
        "outcome": "complete",
        "disposition": reasons[:1000] or "approved by refundry",
        "paymentDate": due.isoformat(),
        "paymentAmount": {"value": decision.amount, "currency": decision.currency},
        "paymentIdentifier": {"system": "urn:refundry:transaction", "value": request.transaction.id},
        "detail": [detail],
    }


class PaymentReconciliationWriter:
    """Approved refunds as FHIR R4 PaymentReconciliation resources, NDJSON (one per line, the
    FHIR bulk-data format). Other outcomes are not written."""

    def __init__(self, path: Path | None) -> None:
        self._out = JsonLinesWriter(path, "id")

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        if decision.outcome != "approve" or decision.amount <= 0 \
                or already_executed(request):
            return
        resource = payment_reconciliation(decision, request)
        self._out.write_line(resource["id"], dumps_fhir(resource))

    def close(self) -> None:
        self._out.close()
