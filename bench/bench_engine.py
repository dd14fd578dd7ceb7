"""What does a caller pay for refundry over the same rules written by hand?

The caller has a dict (``json.loads(text, parse_float=Decimal)``, as the CLI reads a request),
not a parsed request, so both sides start from that dict: ``engine.evaluate(dict)`` against
``hand_written(dict)``, plain Python over the same dict returning the same outcome, matched rule
ids, amount and deadlines. Agreement is checked on every request before anything is timed.

The policy is layered like a real deployment: a shared base, three industry layers (ecommerce,
healthcare, finance) and twelve ecommerce client layers; a request meets 20 rules (base 7,
ecommerce 6, its client 7). ``--rules 200,2000`` adds rules to the ecommerce layer that never
match (20 still do), to show whether cost follows the matching rules or all of them.

    python bench/bench_engine.py                         # 20, 200 and 2,000 rules, 7 runs each
    python bench/bench_engine.py --rules 20 --oneshot    # plus `refundry evaluate` wall time
    python bench/bench_engine.py --rules 20 --memory 1000000   # plus RSS over many evaluations
    python bench/bench_engine.py --baseline main         # each size on `main` first, then here

Ratios are medians of ``--runs`` runs in this one process; absolute µs depend on the machine.
``--baseline REV`` runs this same script over ``git archive REV src schemas`` in a child process
before each size (and the one-shot) here, so before and after come from one run on one machine
under the same load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zoneinfo
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_run_db import tree_of  # noqa: E402 - a sibling script, found by its folder

REASONS = ["changed_mind", "defective", "not_as_described", "not_received", "damaged_in_transit",
           "wrong_item", "billing_error", "duplicate_charge", "unauthorized", "overpayment",
           "service_cancelled", "other"]
CONDITIONS = ["new", "unopened", "opened", "used", "damaged", "defective", "missing_parts"]
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
CLIENTS = [f"shop{i:02d}" for i in range(1, 13)]
NO_RULE = "refundry.no-rule-matched"
FILLER_PER_FILE = 400  # 5 filler layers at 2,000 rules: 8 layers in all, the loader's deepest
FILLER_SCOPES = ["AQ", "BV", "HM", "TF", "UM"]  # places no bench request comes from


class _Numbers(json.JSONEncoder):
    def default(self, o):  # money goes over the wire as a JSON number, as payment APIs send it
        if isinstance(o, Decimal):
            return float(o)
        return super().default(o)


def generate(n: int, seed: int = 7) -> list[dict]:
    """Requests as a caller has them: JSON text read with ``parse_float=Decimal``."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        delivered = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rnd.randrange(0, 60 * 24 * 200))
        requested = delivered + dt.timedelta(minutes=rnd.randrange(0, 60 * 24 * 45))
        total = Decimal(rnd.randrange(100, 200_000)) / 100
        amount = min(total, Decimal(rnd.randrange(100, 150_000)) / 100)
        req = {
            "request_id": f"b{i}", "client_id": rnd.choice(CLIENTS), "industry": "ecommerce",
            "jurisdiction": rnd.choice(["DE", "US-CA", "JP", "AU"]), "timezone": rnd.choice(ZONES),
            "requested_at": requested.isoformat(), "amount": amount, "currency": "EUR",
            "reason": rnd.choice(REASONS), "customer": {"id": f"c{rnd.randrange(500)}"},
            "transaction": {"id": f"t{i}", "amount": total, "delivered_at": delivered.isoformat(),
                            "express_shipping_amount": rnd.choice([0, 5, 12]),
                            "payment_method": {"type": rnd.choice(["card", "card", "gift_card", "paypal"])}},
            "items": [{"sku": f"s{k}", "quantity": 1, "unit_price": Decimal("10.00"),
                       "condition": rnd.choice(CONDITIONS), "final_sale": rnd.random() < 0.05,
                       "personalized": rnd.random() < 0.05} for k in range(rnd.randrange(1, 4))],
            "prior_refunds": [{"amount": Decimal("5.00")} for _ in range(rnd.choice([0, 0, 1, 3]))],
            "evidence": {"receipt": rnd.random() > 0.1},
        }
        if rnd.random() < 0.3:
            req["disclosures"] = {"refund_policy": rnd.choice(["full_refund", "store_credit", "no_refunds", "exchange_only"])}
        out.append(json.loads(json.dumps(req, cls=_Numbers), parse_float=Decimal))
    return out


# --- the policy, written as layers ------------------------------------------------------------

def _rule_lines() -> dict[str, str]:
    lines = [ln for ln in (HERE / "ruleset-20.yaml").read_text().splitlines() if ln.strip().startswith("- {id:")]
    return {ln.split("id: ")[1].split("-")[0]: ln for ln in lines}


def _filler(n: int) -> list[str]:
    """Rules that never match these requests (amounts stay under 1,500) but test the same enum
    field the real rules do, as a large client base does."""
    return [f"  - {{id: f{i:05d}, when: {{all: [{{field: reason, eq: {REASONS[i % 12]}}}, "
            f"{{field: amount, gt: {100_000 + i}}}]}}, effect: manual_review, message: m, customer_message: c}}"
            for i in range(n)]


def write_policy(folder: Path, total_rules: int) -> None:
    rules = _rule_lines()
    head = "version: 1.0.0\neffective_from: 2020-01-01\njurisdictions: [\"*\"]\n"
    pick = lambda *ids: "\n".join(rules[i] for i in ids)  # noqa: E731
    (folder / "base.yaml").write_text(
        f"ruleset: bench-base\n{head}calendar: {{holidays: none, period_end: as_is}}\n"
        "windows:\n  returns: {from: transaction.delivered_at, period: 30 days}\nrules:\n"
        + pick("r01", "r02", "r03", "r04", "r05", "r06", "r07") + "\n")
    # The loader refuses a file of over 10,000 values (about 450 such rules), so the filler goes
    # into layers of FILLER_PER_FILE rules between the base and the ecommerce layer, as a client
    # with that many rules would split them. Each declares a scope of its own that no request
    # has (two layers may not claim the same one); the ecommerce layer on top declares `*`.
    filler, under = _filler(total_rules - 20), "bench-base"
    for k in range(0, len(filler), FILLER_PER_FILE):
        name = f"bench-ecommerce-filler{k // FILLER_PER_FILE}"
        scope = head.replace('"*"', f'"{FILLER_SCOPES[k // FILLER_PER_FILE]}"')
        (folder / f"{name}.yaml").write_text(
            f"ruleset: {name}\n{scope}industry: ecommerce\nextends: {under}\nrules:\n"
            + "\n".join(filler[k:k + FILLER_PER_FILE]) + "\n")
        under = name
    (folder / "ecommerce.yaml").write_text(
        f"ruleset: bench-ecommerce\n{head}industry: ecommerce\nextends: {under}\nrules:\n"
        + pick("r08", "r09", "r10", "r11", "r12", "r13") + "\n")
    for industry in ("healthcare", "finance"):
        (folder / f"{industry}.yaml").write_text(
            f"ruleset: bench-{industry}\n{head}industry: {industry}\nextends: bench-base\nrules:\n"
            + "\n".join(rules[i].replace(f"id: {i}-", f"id: {industry[0]}{i}-") for i in ("r07", "r08", "r09")) + "\n")
    for client in CLIENTS:
        (folder / f"{client}.yaml").write_text(
            f"ruleset: bench-{client}\n{head}industry: ecommerce\nclient: {client}\n"
            "extends: bench-ecommerce\nrules:\n"
            + pick("r14", "r15", "r16", "r17", "r18", "r19", "r20") + "\n")


# --- the same rules by hand, over the same dict -------------------------------------------------

def hand_written(req: dict, zones={z: zoneinfo.ZoneInfo(z) for z in ZONES},  # noqa: B006, B008 - bound once, read as locals
                 month=dt.timedelta(days=30), fortnight=dt.timedelta(days=14),
                 strict={"approve": 0, "manual_review": 1, "deny": 2},  # noqa: B006
                 effects={"r11": "adjust", "r16": "adjust"}, cent=Decimal("0.01")) -> tuple:  # noqa: B006
    """The 20 rules as plain Python: (outcome, matched rule ids, amount, deadlines)."""
    tz = zones[req["timezone"]]
    local = dt.datetime.fromisoformat(req["requested_at"]).astimezone(tz).date()
    t = req["transaction"]
    d = t.get("delivered_at")
    delivered = dt.datetime.fromisoformat(d).astimezone(tz).date() if d else None
    items = req.get("items") or ()
    prior = req.get("prior_refunds") or ()
    amount = req["amount"]
    r = req["reason"]
    hits = []
    within = None if delivered is None else local <= delivered + month
    if r == "changed_mind" and within is True and amount <= 1000:
        hits.append(("r01-in-window", "approve"))
    if r == "changed_mind" and within is False:
        hits.append(("r02-out-of-window", "deny"))
    if any(it.get("final_sale") is True for it in items):
        hits.append(("r03-final-sale", "deny"))
    if any(it.get("personalized") is True for it in items):
        hits.append(("r04-personalized", "deny"))
    if r in ("defective", "damaged_in_transit", "wrong_item"):
        hits.append(("r05-faulty", "approve"))
    if r == "not_received":
        hits.append(("r06-not-received", "manual_review"))
    if amount > 1000:
        hits.append(("r07-big-amount", "manual_review"))
    if amount > t["amount"] * 90 / 100:
        hits.append(("r08-most-of-order", "manual_review"))
    if len(prior) >= 3:
        hits.append(("r09-serial", "manual_review"))
    if (req.get("evidence") or {}).get("receipt") is False:
        hits.append(("r10-no-receipt", "manual_review"))
    used = any(it.get("condition") in ("used", "opened") for it in items)
    if used:
        hits.append(("r11-used", "adjust"))
    if r == "changed_mind" and any(it.get("condition") == "damaged" for it in items):
        hits.append(("r12-damaged-return", "manual_review"))
    if (t.get("payment_method") or {}).get("type") == "gift_card":
        hits.append(("r13-gift-card", "deny"))
    policy = (req.get("disclosures") or {}).get("refund_policy")
    if policy in ("store_credit", "exchange_only"):
        hits.append(("r14-credit-policy", "manual_review"))
    if policy == "no_refunds" and r == "changed_mind":
        hits.append(("r15-no-refunds", "deny"))
    hits.append(("r16-cap", "adjust"))
    if r in ("billing_error", "duplicate_charge"):
        hits.append(("r17-billing", "approve"))
    if r == "unauthorized":
        hits.append(("r18-unauthorized", "manual_review"))
    if r == "overpayment" and amount <= 500:
        hits.append(("r19-overpayment", "approve"))
    if r in ("other", "service_cancelled", "not_as_described"):
        hits.append(("r20-other", "manual_review"))
    outcomes = [e for _, e in hits if e != "adjust"]
    outcome = max(outcomes, key=strict.__getitem__) if outcomes else "manual_review"
    if outcome == "deny":
        refund = Decimal(0)
    else:
        refund = amount
        if hits[0][0] == "r01-in-window":
            refund -= t.get("express_shipping_amount") or 0
        if used:
            refund -= amount * 10 / 100
        refundable = t["amount"] - sum(p["amount"] for p in prior)
        refund = max(Decimal(0), min(refund, refundable))
    deadlines = (("refund_due_by", local + fortnight),) if hits[0][0] == "r01-in-window" else ()
    return (outcome, tuple(h for h, _ in hits), refund.quantize(cent, rounding=ROUND_HALF_UP), deadlines)


def summary(decision) -> tuple:
    return (decision.outcome, tuple(r.rule_id for r in decision.reasons if r.rule_id != NO_RULE),
            decision.amount, tuple((d.name, d.due) for d in decision.deadlines))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def timed(fn, items) -> float:
    start = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - start) / len(items) * 1e6


def bench_size(refundry, total: int, raw: list[dict], args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_policy(folder, total)
        before = rss_mb()
        start = time.process_time()
        engine = refundry.Engine.from_path(folder, backend=args.backend)
        load_s = time.process_time() - start
        grown = rss_mb() - before
    wrong = [r["request_id"] for r in raw if summary(engine.evaluate(r)) != hand_written(r)]
    if wrong:
        first = next(r for r in raw if r["request_id"] == wrong[0])
        print(f"{total} rules: {len(wrong)} of {len(raw)} decisions differ; first {wrong[0]}:\n"
              f"  engine {summary(engine.evaluate(first))}\n  hand   {hand_written(first)}")
        raise SystemExit(1)
    ratios, eng, hand = [], [], []
    for _ in range(args.runs):
        h = timed(hand_written, raw)
        e = timed(engine.evaluate, raw)
        hand.append(h)
        eng.append(e)
        ratios.append(e / h)
    print(f"{total:5d} rules: load {load_s:6.2f} s, rss +{grown:5.1f} MB; hand {statistics.median(hand):5.1f} µs, "
          f"evaluate(dict) {statistics.median(eng):6.1f} µs; ratio {statistics.median(ratios):6.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}; agreement {len(raw)}/{len(raw)})")
    return {"engine": engine, "ratio": statistics.median(ratios), "us": statistics.median(eng)}


def memory(engine, raw: list[dict], n: int) -> None:
    step = max(1, n // 10)
    samples = []
    for i in range(n):
        engine.evaluate(raw[i % len(raw)])
        if i % step == 0:
            samples.append(rss_mb())
    samples.append(rss_mb())
    print(f"rss over {n:,} evaluations (MB): " + " ".join(f"{s:.1f}" for s in samples))
    print(f"rss growth after warm-up: {samples[-1] - samples[1]:+.2f} MB")


def oneshot(raw: list[dict], runs: int = 5) -> None:
    """A whole `refundry evaluate` process on the 20-rule policy: its CPU time (user + system,
    what it costs whatever else the machine runs) and its wall time."""
    exe = Path(sys.executable).with_name("refundry")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rules").mkdir()
        write_policy(folder / "rules", 20)
        request = folder / "request.json"
        request.write_text(json.dumps(raw[0], cls=_Numbers))
        walls, cpus = [], []
        # As an installed refundry runs: with its bytecode cached. A shell that sets
        # PYTHONDONTWRITEBYTECODE (this machine's does) would otherwise charge every run for
        # compiling refundry's sources again (about 60 ms); one untimed run writes the cache.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        command = [str(exe), "evaluate", "--no-baselines", "--rulesets", str(folder / "rules"),
                   str(request)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"one-shot `refundry evaluate` (20 rules), median of {runs}: CPU {statistics.median(cpus):.3f} s "
          f"(min {min(cpus):.3f}), wall {statistics.median(walls):.3f} s (min {min(walls):.3f})")


def on_baseline(src: Path, args, rules: str, *, oneshot_only: bool = False) -> None:
    """This script's figures for ``rules`` (or only its one-shot) over the baseline tree."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rules", rules, "--runs", str(args.runs),
           "--requests", str(args.requests), "--backend", args.backend]
    if oneshot_only:
        cmd += ["--oneshot", "--runs", "1"]
    out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(src)}, check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("one-shot" if oneshot_only else " "):
            print(f"  [{args.baseline}] {line.strip()}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rules", default="20,200,2000", help="policy sizes, comma-separated (each >= 20)")
    ap.add_argument("--memory", type=int, default=0, help="evaluations for the RSS check (first size)")
    ap.add_argument("--oneshot", action="store_true", help="also time a one-shot `refundry evaluate`")
    ap.add_argument("--backend", default="compiled")
    ap.add_argument("--baseline", help="a git revision to measure too, in a child process, e.g. main")
    args = ap.parse_args()

    import refundry  # after argument parsing so --help stays instant

    raw = generate(args.requests)
    print(f"{len(raw)} requests as json.loads(parse_float=Decimal) dicts, backend {args.backend}, "
          f"{args.runs} runs; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        base = tree_of(args.baseline, Path(tmp)) if args.baseline else None
        results = []
        for n in args.rules.split(","):
            if base is not None:
                on_baseline(base, args, n)
            results.append(bench_size(refundry, int(n), raw, args))
        if len(results) > 1:
            print(f"largest vs smallest policy: {results[-1]['us'] / results[0]['us']:.2f}x the time per evaluate")
        if args.memory:
            memory(results[0]["engine"], raw, args.memory)
        if args.oneshot:
            if base is not None:
                on_baseline(base, args, "20", oneshot_only=True)
            oneshot(raw)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
