"""Compiled vs durable backend on the same rulesets and requests.

    .venv/bin/python bench/bench_backends.py [--requests 2000] [--runs 5] [--rss 0] [--swaps 0]

Reports, as the median of ``--runs`` runs, microseconds per evaluation for the whole
``engine.evaluate`` and for the matcher alone, the durable/compiled ratio, and where the durable
matcher's time goes (lowering to codes, JSON, assert, draining activations, retract). ``--rss N``
also runs N durable evaluations and prints RSS along the way; ``--swaps K`` replaces the
compiled durable rulesets K times and prints RSS. Timing is noisy on a shared machine: compare
the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import durable_rules_engine as E  # noqa: E402
from test_durable import RequestGen  # noqa: E402 - the boundary-heavy request generator

import refundry  # noqa: E402
from refundry.core.durable import _RETRACT, DurableBackend  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median_us(fn, n: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rulesets", default=str(ROOT / "rulesets"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rss", type=int, default=0)
    ap.add_argument("--swaps", type=int, default=0)
    ap.add_argument("--changed-mind", type=float, default=0.8,
                    help="share of requests with reason changed_mind, which most EU rules need")
    args = ap.parse_args()

    compiled = refundry.Engine.from_path(args.rulesets)
    durable = refundry.Engine.from_path(args.rulesets, backend="durable")
    comps = list(compiled.library.composites.values())
    rng = random.Random(7)
    work = []
    for i in range(args.requests):
        comp = comps[i % len(comps)]
        gen = RequestGen(comp)
        raw = gen.request(rng, i)
        if rng.random() < args.changed_mind:
            raw["reason"] = "changed_mind"
        req = refundry.parse_request(raw)
        work.append((req, gen.as_of, comp))
    # the facts every backend gets, derived once, so the matchers can be timed alone
    matched = []
    for req, _as_of, comp in work:
        pc, pd = compiled._prepared[comp.ref.digest], durable._prepared[comp.ref.digest]
        facts, items = pc.facts.build(req, pc.facts.context(req))
        matched.append((pc.matcher, pd.matcher, facts, items))
    n = len(work)
    rules = sum(len(c.rules) for c in comps) / len(comps)
    hits = statistics.mean(len(m(f, i)) for m, _, f, i in matched)
    print(f"rulesets: {', '.join(c.id for c in comps)} (avg {rules:.1f} rules, "
          f"{hits:.2f} matching per request); {n} requests, median of {args.runs} runs")

    def whole(engine):
        def run():
            for req, as_of, comp in work:
                engine.evaluate(req, as_of=as_of, ruleset=comp.id)
        return run

    def only(k):
        def run():
            for m in matched:
                m[k](m[2], m[3])
        return run

    e_c = median_us(whole(compiled), n, args.runs)
    e_d = median_us(whole(durable), n, args.runs)
    m_c = median_us(only(0), n, args.runs)
    m_d = median_us(only(1), n, args.runs)
    print(f"{'':24}{'compiled':>10}{'durable':>10}{'ratio':>8}")
    print(f"{'engine.evaluate (us)':24}{e_c:10.1f}{e_d:10.1f}{e_d / e_c:8.2f}")
    print(f"{'matcher only (us)':24}{m_c:10.2f}{m_d:10.1f}{m_d / m_c:8.1f}")

    # Where the durable matcher's time goes: the same steps as DurableMatcher, timed one by one.
    parts = {"lowering to codes": [], "json": [], "assert": [], "drain": [], "retract": []}
    for _ in range(args.runs):
        acc = dict.fromkeys(parts, 0.0)
        for _c, m, facts, items in matched:
            t0 = time.perf_counter()
            coded = m.encoder.encode(facts, items)
            t1 = time.perf_counter()
            payloads = m.payloads(facts, items)  # encodes again: subtract below
            t2 = time.perf_counter()
            acc["lowering to codes"] += t1 - t0
            acc["json"] += max((t2 - t1) - (t1 - t0), 0.0)
            del coded
            with m._lock:
                for shard, payload in zip(m.shards, payloads, strict=True):
                    h = shard.handle
                    a = time.perf_counter()
                    rc, off = E.assert_fact(h, payload)
                    b = time.perf_counter()
                    if rc == 0:
                        started = E.start_action_for_state(h, off)
                        msg = started[1] if started else None
                        while msg:
                            msg = E.complete_and_start_action(h, off)
                        c = time.perf_counter()
                        E.retract_fact(h, _RETRACT)
                        d = time.perf_counter()
                    else:
                        c = d = b
                    acc["assert"] += b - a
                    acc["drain"] += c - b
                    acc["retract"] += d - c
        for k in parts:
            parts[k].append(acc[k] / n * 1e6)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    print(f"durable matcher breakdown (us per evaluation, sum {total:.1f}):")
    for k, v in med.items():
        print(f"  {k:20}{v:8.2f}  {100 * v / total:5.1f} %")

    if args.rss:
        gc.collect()
        start = rss_mb()
        step = max(args.rss // 10, 1)
        print(f"rss over {args.rss} durable evaluations: start {start:.1f} MB")
        t = time.perf_counter()
        for k in range(args.rss):
            req, as_of, comp = work[k % n]
            durable.evaluate(req, as_of=as_of, ruleset=comp.id)
            if (k + 1) % step == 0:
                rate = step / (time.perf_counter() - t) if k + 1 == step else None
                print(f"  after {k + 1:>9}: {rss_mb():.1f} MB" + (f" ({rate:.0f}/s)" if rate else ""))
        for prepared in durable._prepared.values():
            assert prepared.matcher.leftovers() == 0

    if args.swaps:
        comp = comps[0]
        gc.collect()
        start = rss_mb()
        t = time.perf_counter()
        current = DurableBackend().compile(comp)
        for _ in range(args.swaps):
            new = DurableBackend().compile(comp)
            old, current = current, new
            old.close()
        dt = (time.perf_counter() - t) / args.swaps * 1e3
        gc.collect()
        print(f"{args.swaps} swaps: {dt:.2f} ms each, rss {start:.1f} -> {rss_mb():.1f} MB")


if __name__ == "__main__":
    main()
