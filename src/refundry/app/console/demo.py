"""A few example cases for trying the console (``refundry serve --demo``): refunds waiting for
one or two reviewers, one with a statutory deadline days away, and some decided at once."""

from __future__ import annotations

import copy
import datetime as dt
from decimal import Decimal
from typing import Any

from refundry.records.events import RecordStore

SUBMITTER = "demo-shop"

_REQUEST: dict[str, Any] = {
    "client_id": "any-shop", "industry": "ecommerce", "jurisdiction": "DE",
    "currency": "EUR", "reason": "changed_mind", "customer": {"id": "cust-77"},
    "transaction": {"id": "ord", "express_shipping_amount": "10.00",
                    "payment_method": {"type": "card", "last4": "4242"}},
    "items": [{"sku": "SHOE-1", "quantity": 1, "condition": "unopened"}],
    "disclosures": {"withdrawal_info_given": True}, "evidence": {"goods_received_back": True},
}

# (request id, client, amount, days since delivery): acme-eu sends refunds above 500 to review,
# and one above the store's four-eyes threshold needs two reviewers.
CASES = (
    ("demo-1001", "acme", "1200.00", 11), ("demo-1002", "acme", "640.00", 3),
    ("demo-1003", "acme", "2150.00", 6), ("demo-1004", "acme", "515.50", 12),
    ("demo-1005", "any-shop", "119.99", 4), ("demo-1006", "acme", "89.00", 2),
)


def request(request_id: str, client: str, amount: str, days: int,
            now: dt.datetime) -> dict[str, Any]:
    req = copy.deepcopy(_REQUEST)
    delivered = now - dt.timedelta(days=days)
    req.update(request_id=request_id, client_id=client, amount=amount,
               requested_at=now.isoformat(timespec="seconds"))
    req["transaction"].update(id=f"ord-{request_id}", amount=str(Decimal(amount) + 10),
                              delivered_at=delivered.isoformat(timespec="seconds"))
    req["items"][0]["unit_price"] = amount
    return req


def seed(store: RecordStore, engine: Any, now: dt.datetime | None = None) -> int:
    """Record the example cases into an empty store; returns how many were recorded."""
    if store.checkpoint().count:
        return 0
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.timezone(dt.timedelta(hours=1)))
    for rid, client, amount, days in CASES:
        req = request(rid, client, amount, days, now)
        store.record(req, engine.evaluate(req), engine=engine, actor=SUBMITTER)
    return len(CASES)
