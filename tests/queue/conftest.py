"""Fixtures for the broker tests: a real NATS JetStream and a real PostgreSQL, from
``REFUNDRY_TEST_NATS_URL`` and ``REFUNDRY_TEST_POSTGRES_URL``; skipped, saying so, without them.

Every test gets streams under a prefix of its own and a PostgreSQL schema of its own, both
removed afterwards, so parallel runs on one broker and one database never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from refundry.app.queue.streams import Streams
from refundry.records.events import RecordError
from refundry.records.stores import open_store

from ..conftest import RULESETS
from ..service.conftest import make_request

NATS_ENV, PG_ENV = "REFUNDRY_TEST_NATS_URL", "REFUNDRY_TEST_POSTGRES_URL"
EXE = str(Path(sys.executable).parent / "refundry")


@pytest.fixture
def nats_url() -> str:
    url = os.environ.get(NATS_ENV)
    if not url:
        pytest.skip(f"NATS tests are off: set {NATS_ENV}=nats://127.0.0.1:4222 to run them")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests are off: set {PG_ENV}=postgresql://postgres@127.0.0.1:5432/"
                    "test to run them")
    schema = "q_" + uuid.uuid4().hex[:12]
    yield f"{url}?schema={schema}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _drop(url: str, streams: Streams) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in (streams.requests, streams.decisions, streams.dead):
        with contextlib.suppress(Exception):  # a stream never made: nothing to remove
            await js.delete_stream(name)
    await nc.close()


@pytest.fixture
def streams(nats_url: str) -> Iterator[Streams]:
    s = Streams("T" + uuid.uuid4().hex[:12])
    yield s
    asyncio.run(_drop(nats_url, s))


def write_requests(path: Path, ids: list[str], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(make_request(rid)) for rid in ids] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def stream_messages(url: str, stream: str, subject: str | None = None) -> list[Any]:
    """Every message now in ``stream`` (read without consuming it)."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            out.append(await js.get_msg(stream, seq))
        except Exception:  # noqa: BLE001 - a removed (acked) message
            continue
    await nc.close()
    return out


async def stream_count(url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info(stream)
    await nc.close()
    return int(info.state.messages)


def worker(nats_url: str, db: str, streams: Streams, name: str, *extra: str,
           env: dict[str, str] | None = None, prefix_cmd: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix_cmd, EXE, "worker", "--nats", nats_url, "--db", db,
                             "--prefix", streams.prefix, "--rulesets", str(RULESETS),
                             "--name", name, *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def publish(nats_url: str, streams: Streams, path: Path) -> dict[str, int]:
    out = subprocess.run([EXE, "publish", "--source", "jsonl", "--input", str(path), "--nats",
                          nats_url, "--prefix", streams.prefix], capture_output=True, text=True,
                         check=True)
    return dict(json.loads(out.stdout))


def evaluated(db: str) -> Counter[str]:
    """How many `evaluated` events each request has (a case opens with exactly one)."""
    try:
        store = open_store(db, create=False)
    except RecordError:
        return Counter()
    with store:
        return Counter(e.request_id for e in store.events() if e.type == "evaluated")


def wait_for_cases(db: str, n: int, procs=(), timeout: float = 120) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = evaluated(db)
        if sum(got.values()) >= n:
            return got
        for p in procs:
            assert p.poll() is None, p.stderr.read()
        time.sleep(0.3)
    raise AssertionError(f"only {sum(evaluated(db).values())} of {n} requests were recorded")
