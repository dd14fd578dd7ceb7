"""The service, measured: API decisions/s and latency at 1 and 2 server processes, and worker
throughput into PostgreSQL at 1, 2 and 4 workers as a ratio to one.

    .venv/bin/python bench/bench_service.py                   # both parts; PostgreSQL from
                                                              # REFUNDRY_TEST_POSTGRES_URL
    .venv/bin/python bench/bench_service.py --part api --seconds 10 --concurrency 32 --db sqlite
    .venv/bin/python bench/bench_service.py --part workers --requests 4000
    .venv/bin/python bench/bench_service.py --part api --baseline main   # main first, then this tree
    .venv/bin/python bench/bench_service.py --part hold --db postgres    # the chain's lock per group

``--baseline REV`` runs every configuration on ``git archive REV src schemas`` (put first on
PYTHONPATH, as bench_run_db.py does) right before this tree's, so both are measured in one run.

API: ``refundry serve --workers P`` as a user starts it, loaded over loopback by a small
keep-alive HTTP/1.1 client in one process (asyncio, raw sockets, each body made from one
pre-encoded template by a byte replace: cheap enough to leave most of the two cores to the
server; its own CPU per request and share of the machine are printed beside every figure). Every request has a new id and ``record=true``, so each one is
evaluated with history facts and appended to the store. Workers: the requests are published
first; the rate is counted from the first recorded case to the last, so start-up is left out.
Timing lives here, never in the test suite; stores and streams are temporary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from pg_server_cpu import ServerCPU

ROOT = Path(__file__).resolve().parents[1]
EXE = [str(Path(sys.executable).parent / "refundry")]
REQUEST = json.loads((ROOT / "examples" / "request.json").read_text(encoding="utf-8"))
RULESETS = str(ROOT / "rulesets")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(rid: str) -> dict:
    req = copy.deepcopy(REQUEST)
    req["request_id"] = rid
    req["customer"] = {**req.get("customer", {}), "id": "c-" + rid}
    # Its own order too, as real traffic has: with one order id for every request, each history
    # lookup read the 1,000 newest rows of that order (the cap), and the bench measured a
    # flood on one transaction rather than a store deciding many customers' refunds.
    # and its own card (last four digits spread as real cards' are)
    method = {**req["transaction"]["payment_method"], "last4": f"{zlib.crc32(rid.encode()) % 10_000:04d}"}
    req["transaction"] = {**req["transaction"], "id": "ord-" + rid, "payment_method": method}
    return req


_ID, _LAST4 = "@@request@@", "@@l4@@"


def _template(record: bool, token: str) -> bytes:
    """One POST with placeholders for the request id and the card's last four digits: made
    per request by two byte replaces, so the client spends its CPU on the connection, not on
    building JSON (the id's length is fixed per client, so Content-Length is too)."""
    req = _request(_ID)
    req["transaction"]["payment_method"]["last4"] = _LAST4
    body = json.dumps(req)
    return (f"POST /v1/decisions?record={str(record).lower()} HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: @@length@@\r\n\r\n{body}").encode()


async def _client(port: int, template: bytes, prefix: str, until: float, lat: list[float],
                  errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    head, body = template.split(b"\r\n\r\n", 1)
    while time.perf_counter() < until:
        rid = f"{prefix}-{n:09d}".encode()
        n += 1
        one = body.replace(_ID.encode(), rid).replace(
            _LAST4.encode(), b"%04d" % (zlib.crc32(rid) % 10_000))
        t0 = time.perf_counter()
        writer.write(head.replace(b"@@length@@", b"%d" % len(one)) + b"\r\n\r\n" + one)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        lat.append(time.perf_counter() - t0)
        if b" 200 " not in status_line:
            errors.append(1)
    writer.close()


async def _load(port: int, token: str, seconds: float, concurrency: int,
                record: bool = True) -> tuple[list[float], int]:
    lat: list[float] = []
    errors: list[int] = []
    until = time.perf_counter() + seconds
    run = uuid.uuid4().hex[:6]
    template = _template(record, token)
    await asyncio.gather(*(_client(port, template, f"b{run}-{c:03d}", until, lat, errors)
                           for c in range(concurrency)))
    return lat, len(errors)


def _command(src: Path | None) -> tuple[list[str], dict[str, str]]:
    """How to start refundry from ``src`` (a baseline's tree) or, without one, as installed."""
    if src is None:
        return EXE, dict(os.environ)
    return [sys.executable, "-m", "refundry.cli"], {**os.environ, "PYTHONPATH": str(src)}


def _serve(tmp: Path, db: str, processes: int, src: Path | None = None,
           extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, str]:
    tokens = tmp / "tokens.json"
    exe, env = _command(src)
    env = {**env, **(extra_env or {})}
    # A token for the request's client only: `*` is for admins (docs/security.md).
    token = subprocess.run([*exe, "serve", "--tokens", str(tokens), "--issue", "bench",
                            "--client", REQUEST["client_id"]], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    port = _free_port()
    proc = subprocess.Popen([*exe, "serve", "--port", str(port), "--workers", str(processes),
                             "--db", db, "--tokens", str(tokens), "--rulesets", RULESETS,
                             "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc, port, token
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("refundry serve did not start")


def _tree_cpu(pid: int) -> float | None:
    """CPU seconds used so far by ``pid`` and its children (the uvicorn workers), from /proc:
    on a shared machine, CPU per decision moves far less with the neighbours' load than
    decisions per second. None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    own = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_tree_cpu(int(c)) or 0.0 for c in children)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_api(db_kind: str, seconds: float, concurrency: int, record: bool,
              trees: list[tuple[str, Path | None]]) -> None:
    for processes in (1, 2):
        for label, src in trees:
            print(json.dumps({"tree": label, **_api_once(db_kind, seconds, concurrency, record,
                                                         processes, src)}), flush=True)


def _api_once(db_kind: str, seconds: float, concurrency: int, record: bool, processes: int,
              src: Path | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        db, cleanup = _db(db_kind, Path(tmp))
        # The database server's CPU for the service's connections, where it is PostgreSQL.
        pg = stack.enter_context(ServerCPU(db)) if db_kind == "postgres" else None
        proc, port, token = _serve(Path(tmp), db, processes, src, pg.env if pg else {})
        try:
            asyncio.run(_load(port, token, 2, concurrency, record))  # warm-up: caches
            cpu0, own0 = _tree_cpu(proc.pid), _own_cpu()
            if pg:
                pg.start()
            lat, errors = asyncio.run(_load(port, token, seconds, concurrency, record))
            cpu1, own1 = _tree_cpu(proc.pid), _own_cpu()
            if pg:
                pg.stop()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            cleanup()
    lat.sort()
    n = max(1, len(lat))
    return {"part": "api", "store": db_kind, "processes": processes,
            "concurrency": concurrency, "record": record,
            "decisions_per_s": round(len(lat) / seconds),
            "p50_ms": _quantile(lat, 0.50), "p99_ms": _quantile(lat, 0.99),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1), "errors": errors,
            "server_cpu_ms_per_decision": None if cpu0 is None or cpu1 is None
            else round((cpu1 - cpu0) * 1000 / n, 2),
            # The load generator runs on the same two cores: what it took of them.
            "client_cpu_ms_per_decision": round((own1 - own0) * 1000 / n, 3),
            "pg_server_cpu_ms_per_decision": None if pg is None or pg.seconds is None
            else round(pg.seconds * 1000 / n, 3),
            "client_share_of_cores": round((own1 - own0) / (seconds * (os.cpu_count() or 1)), 3),
            "load_average": round(os.getloadavg()[0], 1)}


def _quantile(sorted_s: list[float], q: float) -> float:
    return round(sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000, 1)


def _db(kind: str, tmp: Path) -> tuple[str, object]:
    if kind == "sqlite":
        return str(tmp / "bench.db"), lambda: None
    url = os.environ.get("REFUNDRY_TEST_POSTGRES_URL")
    if not url:
        raise SystemExit("set REFUNDRY_TEST_POSTGRES_URL for a PostgreSQL run")
    schema = "bench_" + uuid.uuid4().hex[:10]

    def drop() -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return f"{url}?schema={schema}", drop


def _count(db: str) -> int:
    from refundry.records.events import RecordError
    from refundry.records.stores import open_store

    try:
        with open_store(db, create=False) as store:
            return store.checkpoint().count
    except RecordError:
        return 0


def bench_workers(n_requests: int, counts: list[int], trees: list[tuple[str, Path | None]]) -> None:
    for label, src in trees:
        base = None
        for workers in counts:
            row = _workers_once(n_requests, workers, src)
            base = base or row["recorded_per_s"]
            print(json.dumps({"tree": label, "part": "workers", "workers": workers,
                              "recorded_per_s": round(row["recorded_per_s"]),
                              "ratio_to_1": round(row["recorded_per_s"] / base, 2),
                              "worker_cpu_ms_per_decision": round(row["cpu_ms"], 2),
                              "load_average": round(os.getloadavg()[0], 1)}), flush=True)


def _workers_once(n_requests: int, workers: int, src: Path | None) -> dict[str, float]:
    from refundry.app.queue.publisher import publish
    from refundry.app.queue.streams import Streams

    nats = os.environ.get("REFUNDRY_TEST_NATS_URL", "nats://127.0.0.1:4222")
    exe, env = _command(src)
    with tempfile.TemporaryDirectory() as tmp:
        db, cleanup = _db("postgres", Path(tmp))
        streams = Streams("BENCH" + uuid.uuid4().hex[:8].upper())
        path = Path(tmp) / "in.jsonl"
        path.write_text("\n".join(json.dumps(_request(f"w{i}")) for i in range(n_requests)))
        asyncio.run(publish(nats, "jsonl", path, streams=streams))
        procs = [subprocess.Popen([*exe, "worker", "--nats", nats, "--db", db, "--prefix",
                                   streams.prefix, "--rulesets", RULESETS, "--log-level",
                                   "warning", "--name", f"w{k}"], env=env,
                                  stderr=subprocess.DEVNULL)
                 for k in range(workers)]
        try:
            while (first := _count(db)) == 0:
                time.sleep(0.05)
            t0, cpu0 = time.perf_counter(), [_tree_cpu(p.pid) or 0.0 for p in procs]
            while (done := _count(db)) < n_requests:
                time.sleep(0.05)
            rate = (done - first) / (time.perf_counter() - t0)
            cpu = sum(_tree_cpu(p.pid) or 0.0 for p in procs) - sum(cpu0)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            cleanup()
            asyncio.run(_drop(nats, streams))
    return {"recorded_per_s": rate, "cpu_ms": cpu * 1000 / max(1, done - first)}


def bench_hold(db_kind: str, groups: int = 30, size: int = 16) -> None:
    """How long a group of ``size`` recorded decisions holds the chain's lock (the group
    commit's batch: appends, index sync, commit), appended one ``record`` at a time as before,
    prepared outside the lock then placed by ``record_many``, and as the API's committer
    places them (``record_many``, the index rows from the appended events) in a plain and a
    pipelined batch; medians over ``groups``."""
    import refundry
    from refundry.records.history import History
    from refundry.records.stores import open_store

    engine = refundry.Engine.from_path(RULESETS)
    with tempfile.TemporaryDirectory() as tmp:
        db, cleanup = _db(db_kind, Path(tmp))
        store = open_store(db)
        history = History(store)
        held: dict[str, list[float]] = {"record": [], "record_many": [], "committer": [],
                                        "committer_pipelined": []}
        try:
            for g in range(groups):
                for way in held:
                    reqs = [_request(f"{way}{g}-{i}") for i in range(size)]
                    decided = [(r, engine.evaluate(r)) for r in reqs]
                    prepared = [store.prepare(r, d, engine=engine, actor="bench")
                                for r, d in decided] if way != "record" else []
                    t0 = time.perf_counter()
                    with store.batch(pipelined=way == "committer_pipelined"):
                        appended = []
                        if way == "record":
                            for r, d in decided:
                                store.record(r, d, engine=engine, actor="bench")
                        else:
                            got = store.record_many(prepared)
                            if way.startswith("committer"):
                                appended = [c.events[-1] for c, _new in got]
                        history.sync(appended)
                    held[way].append(time.perf_counter() - t0)
            assert store.verify().ok
        finally:
            store.close()
            cleanup()
    print(json.dumps({"part": "hold", "store": db_kind, "group": size,
                      **{f"{way}_ms": round(statistics.median(v) * 1000, 1)
                         for way, v in held.items()},
                      "load_average": round(os.getloadavg()[0], 1)}), flush=True)


async def _drop(url: str, streams) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in (streams.requests, streams.decisions, streams.dead):
        with contextlib.suppress(Exception):  # never made
            await js.delete_stream(name)
    await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("api", "workers", "hold", "all"), default="all")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--db", default="sqlite", help="sqlite or postgres (the API part)")
    ap.add_argument("--no-record", action="store_true", help="API part: evaluate only")
    ap.add_argument("--requests", type=int, default=3000, help="requests for the worker part")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--baseline", help="a git revision measured first in the same run, e.g. main")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees: list[tuple[str, Path | None]] = []
        if args.baseline:
            from bench_run_db import tree_of  # the same unpacking as the run --db bench

            trees.append((args.baseline, tree_of(args.baseline, Path(tmp))))
        trees.append(("this tree", None))
        if args.part in ("api", "all"):
            bench_api(args.db, args.seconds, args.concurrency, not args.no_record, trees)
        if args.part in ("workers", "all"):
            bench_workers(args.requests, [int(x) for x in args.workers.split(",")], trees)
        if args.part in ("hold", "all"):
            bench_hold(args.db)
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
