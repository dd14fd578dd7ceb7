"""Generated refund histories for the fraud tests and bench/bench_history.py.

``clean(n)`` is ordinary traffic of one shop: customers from a pool five times the number of
requests (so a customer rarely asks twice in a month), each with an address and a card of
their own (two customers of a household share an address now and then), amounts between 20
and 150. ``abusive(n)`` is the same traffic with planted abuse in place of some of it; each
planted request says in ``facts.planted`` what it is, and ``PLANTED_FLAGS`` says which requests
the fraud rules must flag. Everything is seeded: the same call gives the same requests.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

START = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
DAYS = 60
CLIENT = "northwind"


def request(rid: str, when: dt.datetime, customer: str, *, amount: Decimal,
            txn_amount: Decimal | None = None, txn: str | None = None,
            address: str | None = None, email: str | None = None, last4: str = "4242",
            currency: str = "EUR", facts: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": rid, "client_id": CLIENT, "industry": "ecommerce", "jurisdiction": "DE",
        "requested_at": when.isoformat(), "amount": str(amount), "currency": currency,
        "reason": "changed_mind",
        "customer": {"id": customer, "email": email or f"{customer}@mail.example",
                     "address": address or f"{customer} Street 1, 10115 Berlin"},
        "transaction": {"id": txn or f"t-{rid}", "amount": str(txn_amount or amount),
                        "delivered_at": (when - dt.timedelta(days=3)).isoformat(),
                        "payment_method": {"type": "card", "last4": last4}},
        "disclosures": {"withdrawal_info_given": True},
        "evidence": {"goods_received_back": True},
    }
    if facts:
        out["facts"] = facts
    return out


def clean(n: int, *, seed: int = 7, prefix: str = "c") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pool = 5 * n
    out = []
    for i in range(n):
        when = START + dt.timedelta(seconds=rng.randrange(DAYS * 86_400))
        c = rng.randrange(pool)
        household = c - c % 2 if rng.random() < 0.1 else c  # some pairs share an address
        amount = Decimal(rng.randrange(2_000, 15_000)) / 100
        out.append(request(f"{prefix}-{i}", when, f"cust-{c}", amount=amount,
                           address=f"Hausweg {household}, 10115 Berlin",
                           last4=f"{rng.randrange(10_000):04d}"))
    out.sort(key=lambda r: r["requested_at"])
    return out


def _at(day: float) -> dt.datetime:
    return START + dt.timedelta(days=day)


def planted() -> list[dict[str, Any]]:
    """Abuse of four kinds, in the second month (so a baseline exists)."""
    out = []
    # A serial returner: 8 requests in 20 days, each for its own order.
    for i in range(8):
        out.append(request(f"serial-{i}", _at(30 + 2.5 * i), "cust-serial",
                           amount=Decimal("60.00"), last4="1111",
                           facts={"planted": "serial"}))
    # One address used by 6 different customers within 10 days.
    for i in range(6):
        out.append(request(f"drop-{i}", _at(32 + 1.5 * i), f"cust-drop-{i}",
                           amount=Decimal("75.00"), address="Packstation 99, 10115 Berlin",
                           last4=f"{2000 + i}", facts={"planted": "address"}))
    # Three duplicates: the same order and amount asked for twice, a day apart.
    for i in range(3):
        for j in range(2):
            out.append(request(f"dup-{i}-{j}", _at(35 + 3 * i + j), f"cust-dup-{i}",
                               amount=Decimal("49.90"), txn=f"order-dup-{i}",
                               last4=f"{3000 + i}", facts={"planted": "duplicate"}))
    # Split refunds: three partial refunds on a 100.00 order adding up to 110.00.
    for i in range(2):
        for j, part in enumerate(("45.00", "35.00", "30.00")):
            out.append(request(f"split-{i}-{j}", _at(40 + 4 * i + j), f"cust-split-{i}",
                               amount=Decimal(part), txn_amount=Decimal("100.00"),
                               txn=f"order-split-{i}", last4=f"{4000 + i}",
                               facts={"planted": "split"}))
    return out


# request id -> the fraud rules that must flag it; no other request may get a fraud rule.
# A duplicate also takes the refunds over the original (49.90 asked twice on a 49.90 order),
# and the serial returner's 7th and 8th requests are far enough out for the anomaly score.
VELOCITY = "fraud-customer-velocity"
PLANTED_FLAGS: dict[str, set[str]] = {
    **{f"serial-{i}": {VELOCITY} for i in range(4, 6)},               # the 5th and 6th
    **{f"serial-{i}": {VELOCITY, "fraud-anomaly-score"} for i in range(6, 8)},
    **{f"drop-{i}": {"fraud-shared-address"} for i in range(3, 6)},  # the 4th..6th customer
    **{f"dup-{i}-1": {"fraud-duplicate-request", "fraud-refunds-beyond-original"}
       for i in range(3)},                                             # each second request
    **{f"split-{i}-2": {"fraud-refunds-beyond-original"} for i in range(2)},  # 45+35+30 > 100
}


def abusive(n: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` requests: clean traffic with the planted abuse in place of some of it."""
    bad = planted()
    out = clean(n - len(bad), seed=seed) + bad
    out.sort(key=lambda r: r["requested_at"])
    return out
