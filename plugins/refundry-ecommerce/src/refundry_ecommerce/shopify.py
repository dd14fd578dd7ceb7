"""Shopify Admin payloads -> source records, and refunds to create.

What each object becomes (one record per object):

- *request* (to decide): a ``refunds/calculate`` response (Shopify's suggestion, no ``id``)
  and a return webhook (``{"return": ...}`` with ``return_line_items``);
- *executed* (history, never a new decision): a refund (``{"refund": {"id": ...}}``) with a
  successful or pending refund transaction, an order transaction of kind ``refund``, and a
  line this package's own ``shopify-refund`` sink wrote (read back: that case is decided and
  its refund is on its way under the same idempotency key);
- *context*: orders, captures, sales, authorizations and tender transactions (payments);
- *broken*: a refund whose transactions all failed, or a malformed object.

The money a refund moves is the sum of its refund transactions, never the line items: in
Shopify's own examples line items, tax and the transaction do not reconcile; when they do not,
``facts.totals_reconcile`` is ``false`` so a rule can route the request to a person. A line's
unit price is its own subtotal (after line and cart discounts) per unit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import (
    ExecutedRefund,
    JsonLinesWriter,
    Option,
    SourceRecord,
    already_executed,
    idempotency_key,
    iter_json_documents,
    money_text,
    record_error,
    request_defaults,
)
from refundry_ecommerce.delivery import Client, DeliveryError, delivered_before

SOURCE = "shopify"
OPTIONS = (
    Option("client_id", help="the merchant's client id in refundry", required=True),
    Option("jurisdiction", help="where the consumers are (ISO 3166, e.g. `DE`, `US-CA`)",
           required=True),
    Option("timezone", help="IANA zone; default from the jurisdiction"),
    Option("reason", default="other", help="canonical reason when the payload has none"),
    Option("requested_at", "time", help="time for refunds/calculate responses, which carry none"),
    Option("currency", help="currency for payloads that name none (old refunds/calculate, returns)"),
    Option("customer_id", help="customer id to use (refunds name only the order)"),
)
NOTE_PREFIX = "refundry "  # the sink's note: "refundry <request_id>: <rule>"

# Return webhook reasons (returns/request, snake_case) -> canonical reasons.
RETURN_REASONS = {
    "defective": "defective", "not_as_described": "not_as_described",
    "wrong_item": "wrong_item", "unwanted": "changed_mind", "size_too_small": "changed_mind",
    "size_too_large": "changed_mind", "style": "changed_mind", "color": "changed_mind",
}
MONEY_KINDS = ("refund", "suggested_refund")
FAILED = ("failure", "error")


class NotARefund(Exception):
    """The object is valid Shopify data but moves no money back: a dead letter, with this reason."""


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "ecommerce")
    reason = options.get("reason", "other")
    for name, doc, error in iter_json_documents(path):
        if error:
            yield SourceRecord(name, error=error)
            continue
        found = False
        for ref, kind, obj in _objects(name, doc):
            found = True
            try:
                yield _record(ref, kind, obj, base, reason, options)
            except NotARefund as exc:
                yield SourceRecord(ref, error=f"{ref}: not a refund: {exc}")
            except Exception as exc:  # noqa: BLE001 - a malformed record is a dead letter
                yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")
        if not found:
            yield SourceRecord(name, error=f"{name}: no refund, order, transaction or return "
                               "object in it")


def _record(ref: str, kind: str, obj: dict[str, Any], base: dict[str, Any], reason: str,
            options: Mapping[str, str]) -> SourceRecord:
    if kind == "instruction":
        return SourceRecord(ref, executed=_instruction(obj))
    if kind == "refund" and "id" in obj:
        return SourceRecord(ref, executed=_executed_refund(obj, options))
    if kind == "refund":
        return SourceRecord(ref, request=_refund(obj, base, reason, options))
    if kind == "transaction":
        return SourceRecord(ref, executed=_executed_transaction(obj))
    if kind == "return":
        return SourceRecord(ref, request=_return(obj, base, options))
    return SourceRecord(ref, context=_describe(kind, obj))


def _describe(kind: str, obj: Mapping[str, Any]) -> str:
    if kind == "order":
        return (f"order `{obj.get('name')}` (financial_status `{obj.get('financial_status')}`): "
                "a payment, not a refund")
    if kind == "tender":
        return f"tender transaction `{obj.get('id')}` of order `{obj.get('order_id')}`: a payment"
    return (f"transaction `{obj.get('id')}` of kind `{obj.get('kind')}` of order "
            f"`{obj.get('order_id')}`: not a refund")


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
    if isinstance(doc, dict) and "idempotency_key" in doc and isinstance(doc.get("refund"), dict):
        yield name, "instruction", doc
    elif isinstance(doc, dict) and isinstance(doc.get("refund"), dict):
        yield name, "refund", doc["refund"]
    elif isinstance(doc, dict) and isinstance(doc.get("refunds"), list):
        for i, refund in enumerate(doc["refunds"]):
            yield f"{name}#refunds[{i}]", "refund", refund
    elif isinstance(doc, dict) and isinstance(doc.get("return"), dict):
        yield name, "return", doc["return"]
    elif isinstance(doc, dict) and isinstance(doc.get("order"), dict):
        yield name, "order", doc["order"]
    elif isinstance(doc, dict) and isinstance(doc.get("tender_transactions"), list):
        for i, tender in enumerate(doc["tender_transactions"]):
            yield f"{name}#tender_transactions[{i}]", "tender", tender
    elif (txs := _transactions_of(doc)) is not None:
        for i, tx in enumerate(txs):
            ref = f"{name}#transactions[{i}]"
            if isinstance(tx, dict) and tx.get("kind") == "refund":
                yield ref, "transaction", tx
            else:
                yield ref, "payment", tx if isinstance(tx, dict) else {}


def _case_of(note: Any) -> str | None:
    """The refundry case a refund was created for, from the note the sink wrote."""
    text = str(note or "")
    if not text.startswith(NOTE_PREFIX):
        return None
    return text[len(NOTE_PREFIX):].split(":", 1)[0].strip() or None


def _executed_refund(refund: dict[str, Any], options: Mapping[str, str]) -> ExecutedRefund:
    txs = [t for t in refund.get("transactions") or []
           if t.get("kind") in MONEY_KINDS and t.get("status") not in FAILED]
    if not txs:
        raise NotARefund(f"refund `{refund.get('id')}` has no successful refund transaction")
    currency = _currency(refund, txs, options.get("currency", ""))
    amount = sum((Decimal(money_text(t["amount"], currency)) for t in txs), Decimal(0))
    order_id = str(refund["order_id"] if "order_id" in refund else txs[0]["order_id"])
    return ExecutedRefund(refund_id=f"shopify:refund:{refund['id']}", transaction_id=order_id,
                          amount=str(amount), currency=currency,
                          refunded_at=refund.get("processed_at") or refund.get("created_at"),
                          case=_case_of(refund.get("note")))


def _executed_transaction(tx: dict[str, Any]) -> ExecutedRefund:
    if tx.get("status") in FAILED:
        raise NotARefund(f"refund transaction `{tx.get('id')}` has status `{tx.get('status')}`")
    currency = _currency({}, [tx])
    return ExecutedRefund(refund_id=f"shopify:transaction:{tx['id']}",
                          transaction_id=str(tx["order_id"]),
                          amount=money_text(tx["amount"], currency), currency=currency,
                          refunded_at=tx.get("processed_at") or tx.get("created_at"))


def _instruction(line: dict[str, Any]) -> ExecutedRefund:
    refund = line["refund"]
    amount = sum((Decimal(str(t["amount"])) for t in refund.get("transactions") or []), Decimal(0))
    return ExecutedRefund(refund_id=str(line["idempotency_key"]),
                          transaction_id=str(line["order_id"]), amount=str(amount),
                          currency=str(refund.get("currency") or ""), case=str(line["request_id"]))


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
    # A refunds/calculate response: Shopify's suggestion, not yet a refund; it has no time.
    requested_at = options.get("requested_at", "")
    if not requested_at:
        raise ValueError("a refunds/calculate response carries no time; pass "
                         "`--option requested_at=...`")
    parent = txs[0].get("parent_id")
    request_id = f"shopify:order:{order_id}:suggested:{parent}:{amount}"
    maximum = [t.get("maximum_refundable") for t in txs if t.get("maximum_refundable")]
    original = money_text(maximum[0], currency) if len(maximum) == 1 else str(amount)
    items, lines_total = _items(refund.get("refund_line_items") or [], currency)
    shipping = _shipping(refund, currency)
    lines = [{"line_item_id": str(li["line_item_id"]), "quantity": int(li.get("quantity") or 0)}
             for li in refund.get("refund_line_items") or [] if li.get("line_item_id")]
    facts: dict[str, Any] = {
        "shopify_refund_line_items": lines or None,
        "shopify_order_id": order_id,
        "shopify_parent_id": str(txs[0]["parent_id"]) if txs[0].get("parent_id") else None,
        "shopify_gateway": txs[0].get("gateway"),
        "original_amount_known": bool(maximum),
        "line_items_total": money_text(lines_total, currency) if lines_total is not None else None,
        "shipping_refunded": money_text(shipping, currency),
        # None when the line items do not state their subtotals: unknown, not "false".
        "totals_reconcile": lines_total + shipping == amount if lines_total is not None else None,
    }
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
        price = _unit_price(line, li, item["quantity"], currency)
        if price is not None:
            item["unit_price"] = price
        if line.get("subtotal") is None or total is None:
            total = None
        else:
            total += Decimal(money_text(line["subtotal"], currency))
            total += Decimal(money_text(line.get("total_tax") or 0, currency))
        items.append(item)
    return items, total


def _unit_price(line: Mapping[str, Any], li: Mapping[str, Any], quantity: int,
                currency: str) -> str | None:
    """What one unit was sold for: the line's own subtotal (after line and cart discounts) per
    unit, else the list price less the line's discount allocations; rounded half-up once."""
    price = li.get("price") or line.get("price")
    if quantity > 0 and line.get("subtotal") is not None:
        total = Decimal(money_text(line["subtotal"], currency))
    elif quantity > 0 and price is not None:
        discounts = sum((Decimal(money_text(d["amount"], currency))
                         for d in li.get("discount_allocations") or []), Decimal(0))
        total = Decimal(money_text(price, currency)) * quantity - discounts
    else:
        return money_text(price, currency) if price is not None else None
    exp = Decimal(money_text(0, currency))
    return str((total / quantity).quantize(exp, rounding=ROUND_HALF_UP))


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
        price = _unit_price(line, li, qty, currency)
        if price is None:
            raise ValueError(f"return line `{line.get('id')}` has no price")
        amount += Decimal(price) * qty
        items.append({"sku": str(li.get("sku") or li.get("id")), "quantity": qty,
                      "unit_price": price})
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


GRAPHQL_VERSION = "2026-04"  # the first version where refundCreate requires @idempotent
REFUND_CREATE = """mutation RefundCreate($input: RefundInput!, $key: String!) {
  refundCreate(input: $input) @idempotent(key: $key) {
    refund { id }
    userErrors { field message }
  }
}"""
SINK_OPTIONS = (
    Option("notify", "bool", "false", "`true` asks Shopify to e-mail the customer"),
    Option("restock", "bool", "false", "`true` restocks the refunded line items (RETURN)"),
)


def _gid(kind: str, value: Any) -> str:
    text = str(value)
    return text if text.startswith("gid://") else f"gid://shopify/{kind}/{text}"


class RefundCreateWriter:
    """Approved decisions as Shopify refunds to create, one JSON object per line:
    ``{"request_id", "idempotency_key", "order_id", "refund": {...}}`` (the REST body) and
    ``"input"``, the GraphQL Admin ``RefundInput`` (refund line items with their restock type,
    the transaction). The refund's ``note`` starts with ``refundry <request_id>``, so the refund
    Shopify creates names its case when it is read back. Other outcomes are not written.

    With ``deliver=true`` each is first sent as the ``refundCreate`` mutation (GraphQL Admin
    API, ``@idempotent(key:)`` with the case's key) to ``base_url``; the line records the refund
    Shopify made (``refund_id``) and ``write`` returns it.
    """

    def __init__(self, path: Path | None, options: Mapping[str, str]) -> None:
        self._out = JsonLinesWriter(path, "request_id")
        self._made = delivered_before(path)
        self._notify = options.get("notify", "false").lower() == "true"
        self._restock = "RETURN" if options.get("restock", "false").lower() == "true" \
            else "NO_RESTOCK"
        self._client = Client(options, token_header="X-Shopify-Access-Token") \
            if options.get("deliver", "false").lower() == "true" else None

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> str | None:
        if decision.outcome != "approve" or decision.amount <= 0 \
                or already_executed(request):
            return None
        if request.request_id in self._out.seen:  # written (and delivered) by an earlier run
            return self._made.get(request.request_id)
        facts = request.facts or {}
        order_id = str(facts.get("shopify_order_id") or request.transaction.id)
        tx: dict[str, Any] = {"kind": "refund", "amount": str(decision.amount)}
        if facts.get("shopify_parent_id"):
            tx["parent_id"] = int(facts["shopify_parent_id"]) if str(
                facts["shopify_parent_id"]).isdigit() else facts["shopify_parent_id"]
        if facts.get("shopify_gateway"):
            tx["gateway"] = facts["shopify_gateway"]
        rule = decision.rule_ids[0] if decision.rule_ids else ""
        refund = {"currency": decision.currency, "notify": self._notify,
                  "note": f"{NOTE_PREFIX}{request.request_id}: {rule}".strip(),
                  "transactions": [tx]}
        line: dict[str, Any] = {"request_id": request.request_id,
                                "idempotency_key": idempotency_key(request.request_id),
                                "order_id": order_id, "refund": refund,
                                "input": self._input(order_id, refund, facts)}
        if self._client is not None:
            line["refund_id"] = self._deliver(line)
        self._out.write(line)
        return line.get("refund_id")

    def _input(self, order_id: str, refund: Mapping[str, Any],
               facts: Mapping[str, Any]) -> dict[str, Any]:
        """The GraphQL ``RefundInput`` for the same refund."""
        tx = refund["transactions"][0]
        gql_tx: dict[str, Any] = {"orderId": _gid("Order", order_id), "amount": tx["amount"],
                                  "kind": "REFUND"}
        if tx.get("parent_id"):
            gql_tx["parentId"] = _gid("OrderTransaction", tx["parent_id"])
        if tx.get("gateway"):
            gql_tx["gateway"] = tx["gateway"]
        out: dict[str, Any] = {"orderId": _gid("Order", order_id), "note": refund["note"],
                               "notify": refund["notify"], "transactions": [gql_tx]}
        items = facts.get("shopify_refund_line_items") or ()
        if items:
            out["refundLineItems"] = [{"lineItemId": _gid("LineItem", li["line_item_id"]),
                                       "quantity": li["quantity"], "restockType": self._restock}
                                      for li in items]
        return out

    def _deliver(self, line: Mapping[str, Any]) -> str:
        assert self._client is not None
        body = json.dumps({"query": REFUND_CREATE,
                           "variables": {"input": line["input"], "key": line["idempotency_key"]}})
        answer = self._client.post(f"/admin/api/{GRAPHQL_VERSION}/graphql.json", body.encode(),
                                   "application/json", {})
        made = ((answer.get("data") or {}).get("refundCreate") or {})
        errors = made.get("userErrors") or answer.get("errors")
        if errors or not (made.get("refund") or {}).get("id"):
            first = errors[0] if errors else {"message": "no refund in the answer"}
            raise DeliveryError(f"refundCreate: {first.get('message')}")
        return str(made["refund"]["id"])

    def close(self) -> None:
        self._out.close()
