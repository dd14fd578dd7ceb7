"""What does history enrichment cost per request, with 100,000 recorded cases?

The index (``history_index``) is filled with bulk inserts of generated rows, keyed the way
``History`` keys real cases (pseudonyms under the store's salt): 100,000 cases of one client
over 365 days, from 40,000 customers, some sharing addresses. Then ``History.facts`` is timed
on new requests: each call syncs the index with the chain, runs the attribute lookups (one
round trip) and the transaction lookup, and scores against the client's baseline for the day.

The first request of a (client, currency, day) computes that baseline (reads the 30 days before
it, ~8,200 rows here) and the ``History`` object keeps it; "warm" is every request after that.

    python bench/bench_history.py                      # SQLite; PostgreSQL too when
                                                       # REFUNDRY_TEST_POSTGRES_URL is set
    python bench/bench_history.py --cases 100000 --requests 2000 --postgres postgresql://...
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refundry.records.history import History, keys_of, utc_text  # noqa: E402
from refundry.records.masking import mask_request  # noqa: E402
from refundry.records.stores import open_store  # noqa: E402
from tests import fraudgen  # noqa: E402

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def generate(n: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = rng.randrange(40_000)
        when = START + dt.timedelta(seconds=rng.randrange(365 * 86_400))
        out.append(fraudgen.request(f"h-{i}", when, f"cust-{c}",
                                    amount=Decimal(rng.randrange(2_000, 15_000)) / 100,
                                    address=f"Hausweg {c - c % 3}, Berlin",
                                    last4=f"{rng.randrange(10_000):04d}"))
    return out


def index_rows(store, requests: list[dict]) -> list[tuple]:
    salt = store.salt
    rows = []
    for seq, r in enumerate(requests, 1):
        k = keys_of(mask_request(r, salt), salt)
        rows.append((k.request_id, seq, k.client_id, k.requested_at, k.customer, k.email,
                     k.address, k.card, k.transaction, str(k.amount), k.currency,
                     str(k.transaction_amount), str(k.amount), "approve", "approved"))
    return rows


def bench(url: str, cases: int, requests: int) -> dict[str, float]:
    store = open_store(url)
    try:
        history = History(store)
        t0 = time.perf_counter()
        rows = index_rows(store, generate(cases))
        t1 = time.perf_counter()
        for i in range(0, len(rows), 10_000):
            history.bulk_insert(rows[i:i + 10_000])
        t2 = time.perf_counter()
        # new requests in the last month of the history, from its customers
        rng = random.Random(2)
        probes = []
        for i in range(requests):
            c = rng.randrange(40_000)
            when = START + dt.timedelta(days=335 + rng.randrange(30), seconds=rng.randrange(86_400))
            probes.append(fraudgen.request(f"p-{i}", when, f"cust-{c}", amount=Decimal("59.90"),
                                           address=f"Hausweg {c - c % 3}, Berlin"))
        cold, warm = [], []
        seen_days = set()
        for p in probes:
            day = utc_text(dt.datetime.fromisoformat(p["requested_at"]))[:10]
            t = time.perf_counter()
            facts = history.facts(p)
            (warm if day in seen_days else cold).append(time.perf_counter() - t)
            seen_days.add(day)
            assert facts is not None and "anomaly" in facts
        return {"keys_s": t1 - t0, "insert_s": t2 - t1, "cold_n": len(cold),
                "cold_ms": statistics.median(cold) * 1e3,
                "warm_ms": statistics.median(warm) * 1e3,
                "warm_p95_ms": statistics.quantiles(warm, n=20)[-1] * 1e3}
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=1_000)
    ap.add_argument("--postgres", default=os.environ.get("REFUNDRY_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.cases} cases, {args.requests} "
          "enriched requests")
    targets = []
    tmp = tempfile.TemporaryDirectory()
    targets.append(("sqlite", str(Path(tmp.name) / "history.db"), None))
    if args.postgres:
        schema = f"refundry_bench_{uuid.uuid4().hex[:10]}"
        sep = "&" if "?" in args.postgres else "?"
        targets.append(("postgresql", f"{args.postgres}{sep}schema={schema}", schema))
    for name, url, schema in targets:
        try:
            r = bench(url, args.cases, args.requests)
        finally:
            if schema:
                import psycopg

                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        print(f"{name:10s} bulk insert {args.cases} rows {r['insert_s']:.1f} s "
              f"(keys {r['keys_s']:.1f} s); facts per request: warm median "
              f"{r['warm_ms']:.2f} ms, p95 {r['warm_p95_ms']:.2f} ms; first of a day "
              f"(baseline) median {r['cold_ms']:.1f} ms over {r['cold_n']} days")
    tmp.cleanup()


if __name__ == "__main__":
    main()
