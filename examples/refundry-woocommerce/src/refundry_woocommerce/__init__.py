"""refundry-woocommerce: an out-of-tree refundry plugin, written only against the public
``refundry.plugins`` API (docs/plugins.md walks through it).

Source ``woocommerce`` reads WooCommerce REST API v3 order refunds
(``GET /wp-json/wc/v3/orders/<id>/refunds``: a JSON array, or one refund per line):

- ``refunded_payment: true``: the payment gateway already paid the money back: an *executed*
  refund (history of its order, never decided again);
- ``refunded_payment: false``: a refund recorded by hand in WooCommerce whose money nobody has
  sent yet: a *request* to decide;
- anything that is not a refund object (an order, a note): *context*; a refund that cannot be
  read: *broken*, with the reason.

WooCommerce refunds carry no order id of their own: it is the last path segment of
``_links.up[0].href``. ``date_created_gmt`` is UTC without an offset; the shop's currency
comes from ``--option currency``.

Sink ``csv-ledger`` books each approved refund as one CSV row (``idempotency_key``,
``request_id``, ``order_id``, ``amount``, ``currency``, ``due_by``): the ledger re-opened
after a kill already holds its keys, so no row is ever booked twice.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import refundry
from refundry.plugins import (
    ExecutedRefund,
    Option,
    Sink,
    Source,
    SourceError,
    SourceRecord,
    already_executed,
    idempotency_key,
    money_text,
    record_error,
    request_defaults,
)

OPTIONS = (
    Option("client_id", help="the shop's client id in refundry", required=True),
    Option("jurisdiction", help="where the shop's consumers are (ISO 3166, e.g. `DE`)",
           required=True),
    Option("currency", help="the shop's currency (WooCommerce refunds name none)",
           required=True),
    Option("timezone", help="IANA zone; default from the jurisdiction"),
)
LEDGER_COLUMNS = ("idempotency_key", "request_id", "order_id", "amount", "currency", "due_by")


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, "woocommerce", "ecommerce")
    currency = str(options.get("currency", "")).upper()
    # Orders in the same input give a refund's transaction its total (else the refund's own
    # amount stands for it: nothing is invented).
    totals = {str(o["id"]): o["total"] for _, o in _objects(path)
              if isinstance(o, dict) and "refunded_payment" not in o and "total" in o and "id" in o}
    for ref, obj in _objects(path):
        if obj is None:
            yield SourceRecord(ref, error=f"{ref}: invalid json")
        elif not isinstance(obj, dict) or "refunded_payment" not in obj:
            what = f"order `{obj.get('id')}`" if isinstance(obj, dict) else type(obj).__name__
            yield SourceRecord(ref, context=f"{what}: not a refund (its total is the refunds' "
                               "transaction amount)")
        else:
            try:
                yield _refund(ref, obj, base, currency, totals)
            except Exception as exc:  # noqa: BLE001 - one bad refund never stops a batch
                yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _objects(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    if path.suffix == ".json":
        try:
            doc = json.loads(text, parse_float=Decimal)
        except ValueError:
            yield path.name, None
            return
        for i, obj in enumerate(doc if isinstance(doc, list) else [doc]):
            yield f"{path.name}[{i}]", obj
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path.name}:{n}", json.loads(line, parse_float=Decimal)
            except ValueError:
                yield f"{path.name}:{n}", None


def _order_id(refund: Mapping[str, Any]) -> str:
    href = str(refund["_links"]["up"][0]["href"])
    order = href.rstrip("/").rsplit("/", 1)[-1]
    if not order.isdigit():
        raise ValueError(f"`_links.up` `{href}` does not end in an order id")
    return order


def _refund(ref: str, refund: dict[str, Any], base: dict[str, Any], currency: str,
            totals: Mapping[str, Any]) -> SourceRecord:
    order = _order_id(refund)
    amount = money_text(refund["amount"], currency)
    at = f"{refund['date_created_gmt']}+00:00"  # GMT without an offset: say so
    if refund["refunded_payment"]:
        return SourceRecord(ref, executed=ExecutedRefund(
            refund_id=f"woocommerce:refund:{refund['id']}", transaction_id=order, amount=amount,
            currency=currency, refunded_at=at))
    items = [{"sku": str(li.get("sku") or li.get("product_id")),
              "quantity": abs(int(li.get("quantity") or 0))}
             for li in refund.get("line_items") or []]
    request = {**base, "request_id": f"woocommerce:refund:{refund['id']}", "requested_at": at,
               "amount": amount, "currency": currency, "reason": "other",
               "customer": {"id": f"woocommerce:order:{order}"},
               "transaction": {"id": order,
                               "amount": money_text(totals.get(order, amount), currency)},
               "facts": {"woocommerce_reason": str(refund.get("reason") or "")}}
    if items:
        request["items"] = items
    return SourceRecord(ref, request=request)


class LedgerWriter:
    """Approved refunds as CSV rows, one per case, never twice."""

    def __init__(self, path: Path | None) -> None:
        if path is None:
            raise SourceError("sink `csv-ledger` writes a file: give `--out PATH`")
        self.path = path
        self.keys: set[str] = set()
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                self.keys = {row["idempotency_key"] for row in csv.DictReader(fh)}
        new = not path.exists() or path.stat().st_size == 0
        self._fh = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(LEDGER_COLUMNS)

    def write(self, decision: refundry.Decision, request: refundry.RefundRequest, ref: str) -> None:
        key = idempotency_key(request.request_id)
        if decision.outcome != "approve" or decision.amount <= 0 or key in self.keys \
                or already_executed(request):
            return
        due = decision.deadline("refund_due_by")
        self._csv.writerow((key, request.request_id, request.transaction.id, str(decision.amount),
                            decision.currency, due.isoformat() if due else ""))
        self._fh.flush()
        self.keys.add(key)

    def close(self) -> None:
        self._fh.close()


@refundry.hookimpl
def refundry_sources() -> Sequence[Source]:
    return [Source("woocommerce", read, "WooCommerce REST v3 order refunds (JSON or JSON lines)",
                   OPTIONS, history=True)]


@refundry.hookimpl
def refundry_sinks() -> Sequence[Sink]:
    return [Sink("csv-ledger", lambda path, options: LedgerWriter(path),
                 "approved refunds as CSV ledger rows, one per case")]
