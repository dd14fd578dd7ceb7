"""The service, measured: API decisions/s and latency at 1 and 2 server processes, and worker
throughput into PostgreSQL at 1, 2 and 4 workers as a ratio to one.

    .venv/bin/python bench/bench_service.py                   # both parts; PostgreSQL from
                                                              # REFUNDRY_TEST_POSTGRES_URL
    .venv/bin/python bench/bench_service.py --part api --seconds 10 --concurrency 32 --db sqlite
    .venv/bin/python bench/bench_service.py --part workers --requests 4000

API: ``refundry serve --workers P`` as a user starts it, loaded over loopback by a small
keep-alive HTTP/1.1 client in one process (asyncio, raw sockets: cheap enough to leave most of
the two cores to the server). Every request has a new id and ``record=true``, so each one is
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

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "refundry")
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


async def _client(port: int, token: str, prefix: str, until: float, lat: list[float],
                  errors: list[int], record: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while time.perf_counter() < until:
        body = json.dumps(_request(f"{prefix}-{n}")).encode()
        n += 1
        head = (f"POST /v1/decisions?record={str(record).lower()} HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        t0 = time.perf_counter()
        writer.write(head + body)
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
    await asyncio.gather(*(_client(port, token, f"b{run}-{c}", until, lat, errors, record)
                           for c in range(concurrency)))
    return lat, len(errors)


def _serve(tmp: Path, db: str, processes: int) -> tuple[subprocess.Popen, int, str]:
    tokens = tmp / "tokens.json"
    # A token for the request's client only: `*` is for admins (docs/security.md).
    token = subprocess.run([EXE, "serve", "--tokens", str(tokens), "--issue", "bench",
                            "--client", REQUEST["client_id"]],
                           capture_output=True, text=True, check=True).stdout.strip()
    port = _free_port()
    proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--workers", str(processes),
                             "--db", db, "--tokens", str(tokens), "--rulesets", RULESETS,
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
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


def bench_api(db_kind: str, seconds: float, concurrency: int, record: bool) -> None:
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            db, cleanup = _db(db_kind, Path(tmp))
            proc, port, token = _serve(Path(tmp), db, processes)
            try:
                asyncio.run(_load(port, token, 2, concurrency, record))  # warm-up: caches
                cpu0 = _tree_cpu(proc.pid)
                lat, errors = asyncio.run(_load(port, token, seconds, concurrency, record))
                cpu1 = _tree_cpu(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                cleanup()
        lat.sort()
        print(json.dumps({"part": "api", "store": db_kind, "processes": processes,
                          "concurrency": concurrency, "record": record,
                          "decisions_per_s": round(len(lat) / seconds),
                          "p50_ms": _quantile(lat, 0.50), "p99_ms": _quantile(lat, 0.99),
                          "mean_ms": round(statistics.fmean(lat) * 1000, 1), "errors": errors,
                          "server_cpu_ms_per_decision": None if cpu0 is None or cpu1 is None
                          else round((cpu1 - cpu0) * 1000 / max(1, len(lat)), 2),
                          "load_average": round(os.getloadavg()[0], 1)}),
              flush=True)


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


def bench_workers(n_requests: int, counts: list[int]) -> None:
    from refundry.app.queue.publisher import publish
    from refundry.app.queue.streams import Streams

    nats = os.environ.get("REFUNDRY_TEST_NATS_URL", "nats://127.0.0.1:4222")
    base = None
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp:
            db, cleanup = _db("postgres", Path(tmp))
            streams = Streams("BENCH" + uuid.uuid4().hex[:8].upper())
            path = Path(tmp) / "in.jsonl"
            path.write_text("\n".join(json.dumps(_request(f"w{i}")) for i in range(n_requests)))
            asyncio.run(publish(nats, "jsonl", path, streams=streams))
            procs = [subprocess.Popen([EXE, "worker", "--nats", nats, "--db", db, "--prefix",
                                       streams.prefix, "--rulesets", RULESETS, "--log-level",
                                       "warning", "--name", f"w{k}"], stderr=subprocess.DEVNULL)
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
        base = base or rate
        print(json.dumps({"part": "workers", "workers": workers, "recorded_per_s": round(rate),
                          "ratio_to_1": round(rate / base, 2),
                          "worker_cpu_ms_per_decision": round(cpu * 1000 / max(1, done - first),
                                                              2),
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
    ap.add_argument("--part", choices=("api", "workers", "all"), default="all")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--db", default="sqlite", help="sqlite or postgres (the API part)")
    ap.add_argument("--no-record", action="store_true", help="API part: evaluate only")
    ap.add_argument("--requests", type=int, default=3000, help="requests for the worker part")
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    if args.part in ("api", "all"):
        bench_api(args.db, args.seconds, args.concurrency, not args.no_record)
    if args.part in ("workers", "all"):
        bench_workers(args.requests, [int(x) for x in args.workers.split(",")])


if __name__ == "__main__":
    main()
