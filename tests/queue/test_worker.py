"""``refundry publish`` and ``refundry worker`` against a real JetStream and PostgreSQL:
every request decided and recorded exactly once, under several workers, a worker killed with
SIGKILL mid-stream and messages that can never be decided (dead letters, with the reason)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter

import nats

from refundry.app.queue.streams import REASON_HEADER
from refundry.records.stores import open_store

from ..service.conftest import make_request
from .conftest import (
    evaluated,
    publish,
    stream_count,
    stream_messages,
    wait_for_cases,
    worker,
    write_requests,
)


def stop(*procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(30)


def test_two_workers_record_each_request_once_and_dead_letter_the_rest(tmp_path, nats_url,
                                                                       pg_url, streams):
    ids = [f"q-{i}" for i in range(120)]
    bad = make_request("no-currency")
    del bad["currency"]
    path = write_requests(tmp_path / "in.jsonl", ids, ["{not json", json.dumps(bad)])
    assert publish(nats_url, streams, path) == {"published": 121, "duplicates": 0, "dead": 1,
                                                "context": 0, "not_queued": 0}
    procs = [worker(nats_url, pg_url, streams, f"w{n}", "--batch", "10") for n in (1, 2)]
    try:
        got = wait_for_cases(pg_url, 120, procs)
        deadline = time.monotonic() + 30
        while asyncio.run(stream_count(nats_url, streams.dead)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop(*procs)
    assert set(got) == set(ids) and set(got.values()) == {1}
    with open_store(pg_url, create=False) as store:
        assert store.verify().ok
        assert {c.submitter for c in store.cases()} <= {"w1", "w2"}
    decisions = asyncio.run(stream_messages(nats_url, streams.decisions))
    assert sorted(json.loads(m.data)["request_id"] for m in decisions) == sorted(ids)
    assert asyncio.run(stream_count(nats_url, streams.requests)) == 0  # every message acked
    reasons = sorted(m.headers[REASON_HEADER] for m in
                     asyncio.run(stream_messages(nats_url, streams.dead)))
    assert reasons[0].startswith("in.jsonl:121: invalid json")  # from the source, by publish
    assert reasons[1].startswith("invalid request: field `currency`: is required")  # by a worker
    # The same file again: the broker drops every request as a duplicate of its message id.
    assert publish(nats_url, streams, path)["duplicates"] == 121


def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(tmp_path, nats_url, pg_url,
                                                                 streams):
    ids = [f"k-{i}" for i in range(300)]
    publish(nats_url, streams, write_requests(tmp_path / "in.jsonl", ids))
    first = worker(nats_url, pg_url, streams, "w1", "--batch", "10", "--ack-wait", "2")
    try:
        wait_for_cases(pg_url, 40, [first])
        first.send_signal(signal.SIGKILL)  # between a commit and its acks, or inside a batch
        first.wait(10)
        second = worker(nats_url, pg_url, streams, "w2", "--batch", "10", "--ack-wait", "2")
        got = wait_for_cases(pg_url, 300, [second])
        time.sleep(3)  # past the ack wait: anything redelivered would show up now
        got = evaluated(pg_url)
    finally:
        stop(first, *(p for p in [locals().get("second")] if p is not None))
    assert set(got) == set(ids) and set(got.values()) == {1}
    with open_store(pg_url, create=False) as store:
        assert store.verify().ok
    decisions = asyncio.run(stream_messages(nats_url, streams.decisions))
    assert Counter(json.loads(m.data)["request_id"] for m in decisions) == Counter(ids)
    assert asyncio.run(stream_count(nats_url, streams.requests)) == 0


async def _raw(url: str, subject: str, body: bytes, msg_id: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": msg_id})
    await nc.close()


def test_poison_messages_go_to_the_dead_letter_stream_with_the_reason(tmp_path, nats_url,
                                                                      pg_url, streams):
    publish(nats_url, streams, write_requests(tmp_path / "in.jsonl", ["p-1"]))
    changed = make_request("p-1", amount="50.00", note="card 4111 1111 1111 1111")
    asyncio.run(_raw(nats_url, streams.requests_subject, json.dumps(changed).encode(), "x-1"))
    asyncio.run(_raw(nats_url, streams.requests_subject, b"\xff\xfe not json", "x-2"))
    proc = worker(nats_url, pg_url, streams, "w1")
    try:
        wait_for_cases(pg_url, 1, [proc])
        deadline = time.monotonic() + 30
        while asyncio.run(stream_count(nats_url, streams.dead)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop(proc)
    dead = asyncio.run(stream_messages(nats_url, streams.dead))
    reasons = {m.headers[REASON_HEADER].split(":")[0] for m in dead}
    assert reasons == {"not json", "request `p-1` is already recorded with different content; "
                       "a new request needs a new request_id"}
    assert all(b"4111 1111 1111 1111" not in m.data for m in dead)  # scrubbed like a record
    assert evaluated(pg_url) == Counter({"p-1": 1})


def test_an_unreachable_broker_is_one_line_and_exit_1(tmp_path):
    """No broker at the URL: the worker gives up on the first connection with one line (no
    traceback) instead of waiting for ever. A 1 s deadline rather than the default 10 s: the
    test is the giving up, not the wait."""
    import socket
    import subprocess

    from .conftest import EXE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = subprocess.run([EXE, "worker", "--nats", f"nats://127.0.0.1:{port}", "--db",
                          str(tmp_path / "w.db"), "--connect-timeout", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"refundry: cannot connect to nats at `nats://127.0.0.1:{port}`: no answer within 1 s" \
        in out.stderr
    assert "Traceback" not in out.stderr
