"""How much does the engine cost over the same rules written by hand?

Times ``engine.evaluate`` on bench/ruleset-20.yaml against ``hand_written`` (the same 20 rules as
plain Python, building the same Decision) over the same generated requests; checks both agree on
every request; reports the median ratio of several runs, and RSS over many evaluations.

    python bench/bench_engine.py                      # quick: 2,000 requests x 7 runs
    python bench/bench_engine.py --memory 1000000     # plus RSS over 1,000,000 evaluations
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import refundry
from refundry.core.combine import NO_RULE_MATCHED
from refundry.core.models import Deadline, Decision, Line

HERE = Path(__file__).resolve().parent
REASONS = ["changed_mind", "defective", "not_as_described", "not_received", "damaged_in_transit",
           "wrong_item", "billing_error", "duplicate_charge", "unauthorized", "overpayment",
           "service_cancelled", "other"]
CONDITIONS = ["new", "unopened", "opened", "used", "damaged", "defective", "missing_parts"]
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]


def generate(n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        delivered = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rnd.randrange(0, 60 * 24 * 200))
        requested = delivered + dt.timedelta(minutes=rnd.randrange(0, 60 * 24 * 45))
        total = Decimal(rnd.randrange(100, 200_000)) / 100
        amount = min(total, Decimal(rnd.randrange(100, 150_000)) / 100)
        req = {
            "request_id": f"b{i}", "client_id": "bench", "industry": "ecommerce",
            "jurisdiction": rnd.choice(["DE", "US-CA", "JP", "AU"]), "timezone": rnd.choice(ZONES),
            "requested_at": requested.isoformat(), "amount": str(amount), "currency": "EUR",
            "reason": rnd.choice(REASONS), "customer": {"id": f"c{rnd.randrange(500)}"},
            "transaction": {"id": f"t{i}", "amount": str(total), "delivered_at": delivered.isoformat(),
                            "express_shipping_amount": str(rnd.choice([0, 5, 12])),
                            "payment_method": {"type": rnd.choice(["card", "card", "gift_card", "paypal"])}},
            "items": [{"sku": f"s{k}", "quantity": 1, "unit_price": "10.00",
                       "condition": rnd.choice(CONDITIONS), "final_sale": rnd.random() < 0.05,
                       "personalized": rnd.random() < 0.05} for k in range(rnd.randrange(1, 4))],
            "prior_refunds": [{"amount": "5.00"} for _ in range(rnd.choice([0, 0, 1, 3]))],
            "evidence": {"receipt": rnd.random() > 0.1},
        }
        if rnd.random() < 0.3:
            req["disclosures"] = {"refund_policy": rnd.choice(["full_refund", "store_credit", "no_refunds", "exchange_only"])}
        out.append(req)
    return out


def make_hand_written(engine: refundry.Engine):
    """The same rules, by hand. Reasons and the ruleset identity are shared so the results can
    be compared object for object; everything else is computed here."""
    comp = engine.library.composites[(("bench-20", "1.0.0"),)]
    reason = {r.id.split("-")[0]: r.reason for r in comp.rules}
    ref = comp.ref
    month = dt.timedelta(days=30)
    fortnight = dt.timedelta(days=14)
    zones = {z: __import__("zoneinfo").ZoneInfo(z) for z in ZONES}
    strict = {"approve": 0, "manual_review": 1, "deny": 2}
    cent = Decimal("0.01")

    def hand_written(req: refundry.RefundRequest) -> Decision:
        tz = zones[req.timezone]
        local = req.requested_at.astimezone(tz).date()
        t = req.transaction
        delivered = t.delivered_at.astimezone(tz).date() if t.delivered_at else None
        prior = sum((p.amount for p in req.prior_refunds), Decimal(0))
        hits = []
        r = req.reason
        within = None if delivered is None else local <= delivered + month
        if r == "changed_mind" and within is True and req.amount <= 1000:
            hits.append("r01")
        if r == "changed_mind" and within is False:
            hits.append("r02")
        if any(it.final_sale is True for it in req.items):
            hits.append("r03")
        if any(it.personalized is True for it in req.items):
            hits.append("r04")
        if r in ("defective", "damaged_in_transit", "wrong_item"):
            hits.append("r05")
        if r == "not_received":
            hits.append("r06")
        if req.amount > 1000:
            hits.append("r07")
        if req.amount > t.amount * 90 / 100:
            hits.append("r08")
        if len(req.prior_refunds) >= 3:
            hits.append("r09")
        if req.evidence is not None and req.evidence.receipt is False:
            hits.append("r10")
        if any(it.condition in ("used", "opened") for it in req.items):
            hits.append("r11")
        if r == "changed_mind" and any(it.condition == "damaged" for it in req.items):
            hits.append("r12")
        if t.payment_method is not None and t.payment_method.type == "gift_card":
            hits.append("r13")
        policy = req.disclosures.refund_policy if req.disclosures else None
        if policy in ("store_credit", "exchange_only"):
            hits.append("r14")
        if policy == "no_refunds" and r == "changed_mind":
            hits.append("r15")
        hits.append("r16")
        if r in ("billing_error", "duplicate_charge"):
            hits.append("r17")
        if r == "unauthorized":
            hits.append("r18")
        if r == "overpayment" and req.amount <= 500:
            hits.append("r19")
        if r in ("other", "service_cancelled", "not_as_described"):
            hits.append("r20")
        reasons = tuple(reason[h] for h in hits)
        effects = [x.effect for x in reasons if x.effect != "adjust"]
        if effects:
            outcome = max(effects, key=strict.__getitem__)
        else:
            outcome, reasons = "manual_review", reasons + (NO_RULE_MATCHED,)
        refundable = t.amount - prior
        if outcome == "deny":
            amount = Decimal(0)
        else:
            amount = req.amount
            if "r01" in hits and t.express_shipping_amount is not None:
                amount -= t.express_shipping_amount
            if "r11" in hits:
                amount -= req.amount * 10 / 100
            amount = max(Decimal(0), min(amount, refundable))
        deadlines = ()
        if "r01" in hits:
            deadlines = (Deadline("refund_due_by", local + fortnight, "", reason["r01"].rule_id),)
        # No rule has `lines:`, so every line gets the order's outcome; no standard delivery is
        # paid in these requests, so a line comes to its own price.
        ids = tuple(h.rule_id for h in reasons if h.rule_id != NO_RULE_MATCHED.rule_id)
        lines = tuple(Line(it.sku, it.quantity or 1, outcome,
                           (Decimal(0) if outcome == "deny" else it.unit_price * (it.quantity or 1)
                            ).quantize(cent, rounding=ROUND_HALF_UP), ids) for it in req.items)
        return Decision(outcome=outcome, amount=amount.quantize(cent, rounding=ROUND_HALF_UP),
                        currency=req.currency, request_id=req.request_id, as_of=req.requested_at,
                        reasons=reasons, deadlines=deadlines, ruleset=ref, lines=lines)

    return hand_written


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--memory", type=int, default=0, help="evaluations for the RSS check")
    ap.add_argument("--backend", default="compiled")
    args = ap.parse_args()

    engine = refundry.Engine.from_path(HERE / "ruleset-20.yaml", backend=args.backend)
    hand = make_hand_written(engine)
    raw = generate(args.requests)
    parsed = [refundry.parse_request(r) for r in raw]

    mismatches = sum(1 for req in parsed if engine.evaluate(req) != hand(req))
    print(f"agreement: {len(parsed) - mismatches}/{len(parsed)} identical decisions")
    if mismatches:
        return 1

    def timed(fn, items) -> float:
        start = time.perf_counter()
        for x in items:
            fn(x)
        return (time.perf_counter() - start) / len(items) * 1e6

    ratios, eng_us, hand_us, dict_us = [], [], [], []
    for _ in range(args.runs):
        h = timed(hand, parsed)
        e = timed(engine.evaluate, parsed)
        d = timed(engine.evaluate, raw)
        hand_us.append(h)
        eng_us.append(e)
        dict_us.append(d)
        ratios.append(e / h)
    print(f"hand-written:            {statistics.median(hand_us):7.1f} µs/request")
    print(f"engine.evaluate(parsed): {statistics.median(eng_us):7.1f} µs/request")
    print(f"engine.evaluate(dict):   {statistics.median(dict_us):7.1f} µs/request (parsing included)")
    print(f"ratio engine/hand-written (median of {args.runs} runs): {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")

    if args.memory:
        step = max(1, args.memory // 10)
        samples = []
        for i in range(args.memory):
            engine.evaluate(parsed[i % len(parsed)])
            if i % step == 0:
                samples.append(rss_mb())
        samples.append(rss_mb())
        print(f"rss over {args.memory:,} evaluations (MB): " + " ".join(f"{s:.1f}" for s in samples))
        print(f"rss growth after warm-up: {samples[-1] - samples[1]:+.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
