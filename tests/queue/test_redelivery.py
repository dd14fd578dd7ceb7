"""Redelivery and a broker restart: a request delivered again after its decision was committed
(the worker died before its ack) is the case already recorded, and a JetStream server
restarted mid-stream loses nothing (its own nats-server, with a file store of its own)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from refundry.app.queue.streams import Streams
from refundry.app.queue.worker import Decider
from refundry.core.engine import Engine
from refundry.records.stores import open_store

from ..conftest import RULESETS
from ..service.conftest import make_request
from .conftest import evaluated, publish, wait_for_cases, worker, write_requests

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def test_a_redelivered_batch_is_answered_from_the_store(tmp_path):
    engine = Engine.from_path(RULESETS)
    payloads = [json.dumps(make_request(f"r-{i}")).encode() for i in range(5)]
    with open_store(tmp_path / "r.db") as store:
        decider = Decider(engine, store, "w1")
        first = decider.decide(payloads)
        again = Decider(engine, store, "w2").decide(payloads)  # after a crash before the acks
        assert [o.kind for o in first] == [o.kind for o in again] == ["decided"] * 5
        assert [dict(o.decision)["outcome"] for o in again] == \
            [dict(o.decision)["outcome"] for o in first]
        assert len(list(store.events())) == 5 and store.verify().ok
        assert {c.submitter for c in store.cases()} == {"w1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nats(port: int, store_dir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([NATS_SERVER, "-js", "-sd", str(store_dir), "-a", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("nats-server did not start")


def test_a_broker_restart_mid_stream_loses_and_duplicates_nothing(tmp_path, pg_url):
    if not Path(NATS_SERVER).exists():
        pytest.skip("no nats-server binary to restart: install nats-server to run this")
    port = _free_port()
    url = f"nats://127.0.0.1:{port}"
    broker = _nats(port, tmp_path / "js")
    streams = Streams("RESTART")
    ids = [f"b-{i}" for i in range(300)]
    publish(url, streams, write_requests(tmp_path / "in.jsonl", ids))
    proc = worker(url, pg_url, streams, "w1", "--batch", "10", "--ack-wait", "2")
    try:
        wait_for_cases(pg_url, 30, [proc])
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)
        time.sleep(1)
        broker = _nats(port, tmp_path / "js")  # same store: the stream survives
        got = wait_for_cases(pg_url, 300, [proc])
        time.sleep(3)  # past the ack wait: a redelivery would show now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        broker.terminate()
        broker.wait(10)
    got = evaluated(pg_url)
    assert set(got) == set(ids) and set(got.values()) == {1}
    with open_store(pg_url, create=False) as store:
        assert store.verify().ok
