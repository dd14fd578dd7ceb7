"""Shopify Admin REST payloads -> canonical refund requests, and refunds to create.

Read: refunds (``{"refund": ...}``, ``{"refunds": [...]}``), ``refunds/calculate`` responses
(suggested refunds), order transactions (``kind: refund``), and return webhooks
(``{"return": ...}`` with ``return_line_items``). Everything else in the input (orders, captures,
authorizations, tender transactions) is reported to the dead-letter output as "not a refund".

The money a refund moves is the sum of its refund transactions, never the line items: in
Shopify's own examples line items, tax and the transaction do not reconcile; when they do not,
``facts.totals_reconcile`` is ``false`` so a rule can route the request to a person.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import (
    JsonLinesWriter,
    SourceRecord,
    iter_json_documents,
    money_text,
    record_error,
    request_defaults,
)

SOURCE = "shopify"
OPTIONS = {
    "client_id": "required: the merchant's client id in refundry",
    "jurisdiction": "required: where the consumers are (ISO 3166, e.g. `DE`, `US-CA`)",
    "timezone": "optional IANA zone; default from the jurisdiction",
    "reason": "canonical reason when the payload has none (default `other`)",
    "requested_at": "RFC 3339 time for refunds/calculate responses, which carry none",
    "currency": "currency for payloads that name none (old refunds/calculate, returns)",
    "customer_id": "customer id to use (refunds name only the order)",
}

# Return webhook reasons (returns/request, snake_case) -> canonical reasons.
RETURN_REASONS = {
    "defective": "defective", "not_as_described": "not_as_described",
    "wrong_item": "wrong_item", "unwanted": "changed_mind", "size_too_small": "changed_mind",
    "size_too_large": "changed_mind", "style": "changed_mind", "color": "changed_mind",
}
MONEY_KINDS = ("refund", "suggested_refund")
FAILED = ("failure", "error")


class NotARefund(Exception):
    """The object is valid Shopify data but not a refund: a dead letter, with this reason."""


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "ecommerce")
    reason = options.get("reason", "other")
    for name, doc, error in iter_json_documents(path):
        if error:
            yield SourceRecord(name, error=error)
            continue
        found = False
        for ref, kind, obj in _objects(name, doc):
            if kind == "skip":
                continue
            found = True
            try:
                yield SourceRecord(ref, request=_map(kind, obj, base, reason, options))
            except NotARefund as exc:
                yield SourceRecord(ref, error=f"{ref}: not a refund: {exc}")
            except Exception as exc:  # noqa: BLE001 - a malformed record is a dead letter
                yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")
        if not found:
            try:
                what = _describe(doc)
            except Exception as exc:  # noqa: BLE001
                what = record_error(exc)
            yield SourceRecord(name, error=f"{name}: not a refund: {what}")


def _describe(doc: Any) -> str:
    if isinstance(doc, dict) and "order" in doc:
        order = doc["order"]
        return (f"an order (`{order.get('name')}`, financial_status "
                f"`{order.get('financial_status')}`), not a refund")
    if isinstance(doc, dict) and "tender_transactions" in doc:
        n = len(doc["tender_transactions"])
        return f"{n} tender transactions (payments received), no refund"
    txs = _transactions_of(doc)
    if txs is not None:
        kinds = sorted({str(t.get("kind")) for t in txs if isinstance(t, dict)})
        return f"{len(txs)} transaction(s) of kind {', '.join(kinds) or 'none'}, no refund"
    return "no refund, transaction or return object in it"


def _transactions_of(doc: Any) -> list[Any] | None:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        if isinstance(doc.get("transactions"), list):
            return doc["transactions"]
        if isinstance(doc.get("transaction"), dict):
            return [doc["transaction"]]
    return None


def _objects(name: str, doc: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    if isinstance(doc, dict) and isinstance(doc.get("refund"), dict):
        yield name, "refund", doc["refund"]
    elif isinstance(doc, dict) and isinstance(doc.get("refunds"), list):
        for i, refund in enumerate(doc["refunds"]):
            yield f"{name}#refunds[{i}]", "refund", refund
    elif isinstance(doc, dict) and isinstance(doc.get("return"), dict):
        yield name, "return", doc["return"]
    elif (txs := _transactions_of(doc)) is not None:
        for i, tx in enumerate(txs):
            if isinstance(tx, dict) and tx.get("kind") == "refund":
                yield f"{name}#transactions[{i}]", "transaction", tx
            else:
                yield name, "skip", {}


def _map(kind: str, obj: dict[str, Any], base: dict[str, Any], reason: str,
         options: Mapping[str, str]) -> dict[str, Any]:
    if kind == "refund":
        return _refund(obj, base, reason, options)
    if kind == "transaction":
        return _transaction(obj, base, reason)
    return _return(obj, base, options)


def _currency(obj: Mapping[str, Any], txs: list[dict[str, Any]], fallback: str = "") -> str:
    found = {str(t["currency"]).upper() for t in txs if t.get("currency")}
    if obj.get("currency"):
        found.add(str(obj["currency"]).upper())
    if not found and fallback:
        found.add(fallback.upper())
    if not found:
        raise ValueError("no currency in the refund or its transactions; pass "
                         "`--option currency=...`")
    if len(found) > 1:
        raise ValueError(f"transactions in several currencies: {', '.join(sorted(found))}")
    return found.pop()


def _refund(refund: dict[str, Any], base: dict[str, Any], reason: str,
            options: Mapping[str, str]) -> dict[str, Any]:
    txs = [t for t in refund.get("transactions") or []
           if t.get("kind") in MONEY_KINDS and t.get("status") not in FAILED]
    if not txs:
        raise NotARefund(f"refund `{refund.get('id')}` has no successful refund transaction")
    currency = _currency(refund, txs, options.get("currency", ""))
    amount = sum((Decimal(money_text(t["amount"], currency)) for t in txs), Decimal(0))
    if amount <= 0:
        raise NotARefund(f"refund `{refund.get('id')}` moves no money")
    order_id = str(refund["order_id"] if "order_id" in refund else txs[0]["order_id"])
    calculated = "id" not in refund
    if calculated:
        # A refunds/calculate response: Shopify's suggestion, not yet a refund; it has no time.
        requested_at = options.get("requested_at", "")
        if not requested_at:
            raise ValueError("a refunds/calculate response carries no time; pass "
                             "`--option requested_at=...`")
        parent = txs[0].get("parent_id")
        request_id = f"shopify:order:{order_id}:suggested:{parent}:{amount}"
    else:
        requested_at = refund["created_at"]
        request_id = f"shopify:refund:{refund['id']}"
    maximum = [t.get("maximum_refundable") for t in txs if t.get("maximum_refundable")]
    original = money_text(maximum[0], currency) if len(maximum) == 1 else str(amount)
    items, lines_total = _items(refund.get("refund_line_items") or [], currency)
    shipping = _shipping(refund, currency)
    facts: dict[str, Any] = {
        "shopify_order_id": order_id,
        "shopify_parent_id": str(txs[0]["parent_id"]) if txs[0].get("parent_id") else None,
        "shopify_gateway": txs[0].get("gateway"),
        "original_amount_known": bool(maximum),
        "line_items_total": money_text(lines_total, currency) if lines_total is not None else None,
        "shipping_refunded": money_text(shipping, currency),
        # None when the line items do not state their subtotals: unknown, not "false".
        "totals_reconcile": lines_total + shipping == amount if lines_total is not None else None,
    }
    if not calculated:
        facts["shopify_refund_id"] = str(refund["id"])
    out = {
        **base, "request_id": request_id, "requested_at": requested_at, "amount": str(amount),
        "currency": currency, "reason": reason,
        "customer": {"id": options.get("customer_id") or f"shopify:order:{order_id}"},
        "transaction": {"id": order_id, "amount": original},
        "facts": {k: v for k, v in facts.items() if v is not None},
    }
    if items:
        out["items"] = items
    if refund.get("note"):
        out["note"] = str(refund["note"])
    return out


def _items(lines: list[dict[str, Any]], currency: str) -> tuple[list[dict[str, Any]], Decimal | None]:
    """The refunded items, and their subtotal + tax when every line states it (else None)."""
    items: list[dict[str, Any]] = []
    total: Decimal | None = Decimal(0)
    for line in lines:
        item: dict[str, Any] = {"quantity": int(line.get("quantity") or 0)}
        li = line.get("line_item") or {}
        item["sku"] = str(li.get("sku") or line.get("line_item_id"))
        price = li.get("price") or line.get("price")
        if price is not None:
            item["unit_price"] = money_text(price, currency)
        if line.get("subtotal") is None or total is None:
            total = None
        else:
            total += Decimal(money_text(line["subtotal"], currency))
            total += Decimal(money_text(line.get("total_tax") or 0, currency))
        items.append(item)
    return items, total


def _shipping(refund: dict[str, Any], currency: str) -> Decimal:
    total = Decimal(0)
    for adj in refund.get("order_adjustments") or []:
        if adj.get("kind") == "shipping_refund":
            # Shopify books refunded shipping as a negative adjustment.
            total += abs(Decimal(money_text(adj["amount"], currency)))
    ship = refund.get("shipping")
    if isinstance(ship, dict) and ship.get("amount") is not None:
        total += Decimal(money_text(ship["amount"], currency))
    return total


def _transaction(tx: dict[str, Any], base: dict[str, Any], reason: str) -> dict[str, Any]:
    if tx.get("status") in FAILED:
        raise NotARefund(f"refund transaction `{tx.get('id')}` has status `{tx.get('status')}`")
    currency = _currency({}, [tx])
    amount = money_text(tx["amount"], currency)
    order_id = str(tx["order_id"])
    facts = {"shopify_order_id": order_id, "shopify_transaction_id": str(tx["id"]),
             "shopify_gateway": tx.get("gateway"), "original_amount_known": False}
    if tx.get("parent_id"):
        facts["shopify_parent_id"] = str(tx["parent_id"])
    return {
        **base, "request_id": f"shopify:transaction:{tx['id']}",
        "requested_at": tx["created_at"], "amount": amount, "currency": currency,
        "reason": reason, "customer": {"id": f"shopify:order:{order_id}"},
        "transaction": {"id": order_id, "amount": amount},
        "facts": {k: v for k, v in facts.items() if v is not None},
    }


def _return(ret: dict[str, Any], base: dict[str, Any], options: Mapping[str, str]) -> dict[str, Any]:
    lines = ret.get("return_line_items") or []
    if not lines:
        raise NotARefund(f"return `{ret.get('id')}` has no line items")
    currency = str(ret.get("currency") or options.get("currency") or "")
    if not currency:
        raise ValueError("a return names no `currency`; pass `--option currency=...`")
    items, amount, reasons = [], Decimal(0), set()
    for line in lines:
        li = line.get("line_item") or {}
        qty = int(line["quantity"])
        price = Decimal(money_text(li["price"], currency))
        amount += price * qty
        items.append({"sku": str(li.get("sku") or li.get("id")), "quantity": qty,
                      "unit_price": str(price)})
        reasons.add(RETURN_REASONS.get(str(line.get("return_reason", "")).lower(), "other"))
    order_id = str(ret["order_id"])
    out = {
        **base, "request_id": f"shopify:return:{ret['id']}", "requested_at": ret["created_at"],
        "amount": str(amount), "currency": currency.upper(),
        "reason": reasons.pop() if len(reasons) == 1 else options.get("reason", "other"),
        "customer": {"id": str((ret.get("customer") or {}).get("id") or f"shopify:order:{order_id}")},
        "transaction": {"id": order_id, "amount": str(amount)},
        "items": items, "requested_remedy": "refund",
        "facts": {"shopify_order_id": order_id, "original_amount_known": False},
    }
    note = ret.get("customer_note") or ret.get("note")
    if note:
        out["note"] = str(note)
    return out


# --- sink: the refund to create ---------------------------------------------------------------


class RefundCreateWriter:
    """Approved decisions as Shopify ``POST /orders/{order_id}/refunds.json`` bodies, one JSON
    object per line: ``{"request_id", "order_id", "refund": {...}}``. Other outcomes create
    nothing and are not written."""

    def __init__(self, path: Path | None, options: Mapping[str, str]) -> None:
        self._out = JsonLinesWriter(path, "request_id")
        self._notify = options.get("notify", "false").lower() == "true"

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        if decision.outcome != "approve" or decision.amount <= 0:
            return
        facts = request.facts or {}
        order_id = str(facts.get("shopify_order_id") or request.transaction.id)
        tx: dict[str, Any] = {"kind": "refund", "amount": str(decision.amount)}
        if facts.get("shopify_parent_id"):
            tx["parent_id"] = int(facts["shopify_parent_id"]) if str(
                facts["shopify_parent_id"]).isdigit() else facts["shopify_parent_id"]
        if facts.get("shopify_gateway"):
            tx["gateway"] = facts["shopify_gateway"]
        refund = {"currency": decision.currency, "notify": self._notify,
                  "note": f"refundry {request.request_id}: {decision.rule_ids[0] if decision.rule_ids else ''}".strip(),
                  "transactions": [tx]}
        self._out.write({"request_id": request.request_id, "order_id": order_id,
                         "refund": refund})

    def close(self) -> None:
        self._out.close()
