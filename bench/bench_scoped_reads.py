"""What reading through PostgreSQL row-level security costs the service: the time of the
scoped read routes (one case, a page of cases, the review queue) for an identity of one
client, read through its ``ReaderStore`` (now) and over the owner's connection with the
application filter only (before), as ratios to the same routes for an identity of every
client (always the owner), all in one run.

    REFUNDRY_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_scoped_reads.py --cases 3000 --rounds 300

The store is a temporary schema, dropped at the end; timing lives here, never in the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from starlette.testclient import TestClient

from refundry.app.console.demo import request
from refundry.app.service.api import Service, create_app
from refundry.app.service.identity import Tokens, issue
from refundry.app.service.rulesets import Rulesets
from refundry.core.engine import Engine
from refundry.records.stores import open_store

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ("acme", "beta", "gamma", "delta")


def fill(url: str, n: int) -> None:
    engine, now = Engine.from_path(ROOT / "rulesets"), dt.datetime.now(dt.UTC)
    with open_store(url) as store, store.batch():
        for i in range(n):
            req = request(f"s-{i:06d}", CLIENTS[i % len(CLIENTS)], "700.00", 5, now)
            store.record(req, engine.evaluate(req), engine=engine, actor="bench")


def timed(http: TestClient, token: str, paths: list[str], rounds: int) -> float:
    """The median seconds of one pass over ``paths``."""
    headers = {"Authorization": f"Bearer {token}"}
    took = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for path in paths:
            answer = http.get(path, headers=headers)
            assert answer.status_code == 200, (path, answer.text)
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    base = os.environ.get("REFUNDRY_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set REFUNDRY_TEST_POSTGRES_URL to a PostgreSQL database")
    import psycopg

    schema = "bench_rls_" + uuid.uuid4().hex[:8]
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    tmp = Path(tempfile.mkdtemp())
    try:
        fill(url, args.cases)
        tokens = tmp / "tokens.json"
        admin = issue(tokens, "admin", ["reviewer", "admin"])
        one = issue(tokens, "of-acme", ["reviewer"], ["acme"])
        service = Service(rulesets=Rulesets([ROOT / "rulesets"]), store=open_store(url),
                          tokens=Tokens.load(tokens))
        readers = service.readers
        paths = ["/v1/cases/s-000004", "/v1/cases?limit=100", "/v1/cases?limit=100&status=approved"]
        with TestClient(create_app(service)) as http:
            timed(http, one, paths, 20)  # warm: connections, caches
            every = timed(http, admin, paths, args.rounds)
            through_rls = timed(http, one, paths, args.rounds)
            service.readers = None  # before: the owner's connection, the filter alone
            owner_only = timed(http, one, paths, args.rounds)
            service.readers = readers
        print(f"cases {args.cases}, rounds {args.rounds}, one pass = {len(paths)} GETs")
        print(f"every client (owner):           {every * 1000:.2f} ms  1.00x")
        print(f"one client, owner + filter:     {owner_only * 1000:.2f} ms  "
              f"{owner_only / every:.2f}x   (before)")
        print(f"one client, row-level security: {through_rls * 1000:.2f} ms  "
              f"{through_rls / every:.2f}x   (now)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
