"""Several hosts: NATS, the API and three workers each in a network namespace of its own,
reaching PostgreSQL and the broker over a bridge; one worker is killed with SIGKILL mid-stream.
Requests arrive both through the API and through the stream (some through both): at the end
every request is exactly one case, and the chain verifies.

Needs root (namespaces), ``nats-server`` and ``REFUNDRY_TEST_POSTGRES_URL``; skips, saying
which is missing, otherwise. Bounded: every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from refundry.app.service.identity import issue
from refundry.records.stores import open_store

from ..conftest import RULESETS
from ..queue.conftest import PG_ENV, evaluated
from ..service.conftest import make_request
from .network import Forwarder, Network, NoNamespaces

EXE = str(Path(sys.executable).parent / "refundry")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
HOSTS = ("nats", "api", "w1", "w2", "w3")
STREAMED, THROUGH_API, BOTH = 400, 40, 20


def _wait_port(address: str, port: int, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {address}:{port}")


@pytest.fixture
def network() -> Iterator[Network]:
    if not os.environ.get(PG_ENV):
        pytest.skip(f"the multi-host test needs PostgreSQL: set {PG_ENV}")
    if not Path(NATS_SERVER).exists():
        pytest.skip("the multi-host test needs a nats-server binary to run on its broker host")
    net = Network(HOSTS)
    try:
        net.up()
    except NoNamespaces as exc:
        pytest.skip(f"network namespaces cannot be made here: {exc}")
    try:
        yield net
    finally:
        net.down()


@pytest.fixture
def database(network: Network) -> Iterator[tuple[str, str]]:
    """(URL for the hosts, URL for this process) of a schema of its own, through the forwarder."""
    url = os.environ[PG_ENV]
    parts = urlsplit(url)
    forwarder = Forwarder(network.gateway, parts.port or 5432)
    schema = "mh_" + uuid.uuid4().hex[:12]
    remote = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@"
                                              f"{network.gateway}:{parts.port or 5432}"))
    try:
        yield f"{remote}?schema={schema}", f"{url}?schema={schema}"
    finally:
        forwarder.close()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_api_and_three_workers_on_separate_hosts_survive_a_killed_worker(tmp_path, network,
                                                                         database):
    remote_db, local_db = database
    nats_url = f"nats://{network.addresses['nats']}:4222"
    api_url = f"http://{network.addresses['api']}:8080"
    token = issue(tmp_path / "tokens.json", "svc", ["service", "admin"])
    streamed = [f"mh-{i}" for i in range(STREAMED)]
    through_api = [f"api-{i}" for i in range(THROUGH_API)] + streamed[:BOTH]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(make_request(r)) for r in streamed))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [network.run("nats", [NATS_SERVER, "-js", "-sd", str(tmp_path / "js"), "-a",
                                  network.addresses["nats"], "-p", "4222"], **quiet)]
    try:
        _wait_port(network.addresses["nats"], 4222, "nats-server")
        procs.append(network.run("api", [EXE, "serve", "--host", network.addresses["api"],
                                         "--port", "8080", "--db", remote_db, "--tokens",
                                         str(tmp_path / "tokens.json"), "--rulesets",
                                         str(RULESETS)], **quiet))
        _wait_port(network.addresses["api"], 8080, "refundry serve", timeout=60)
        workers = {w: network.run(w, [EXE, "worker", "--nats", nats_url, "--db", remote_db,
                                      "--rulesets", str(RULESETS), "--name", w, "--batch", "10",
                                      "--ack-wait", "2"], **quiet)
                   for w in ("w1", "w2", "w3")}
        procs += workers.values()
        published = network.run("api", [EXE, "publish", "--source", "jsonl", "--input",
                                        str(tmp_path / "in.jsonl"), "--nats", nats_url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with httpx.Client(base_url=api_url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for rid in through_api:
                r = http.post("/v1/decisions", params={"record": "true"},
                              json=make_request(rid))
                assert r.status_code == 200, r.text
        out, err = published.communicate(timeout=60)
        assert json.loads(out)["published"] == STREAMED, err
        _wait_cases(local_db, THROUGH_API + 100, list(workers.values()))
        workers["w2"].send_signal(signal.SIGKILL)  # mid-stream, mid-batch or mid-ack
        workers["w2"].wait(10)
        alive = [workers["w1"], workers["w3"]]
        _wait_cases(local_db, STREAMED + THROUGH_API, alive, timeout=120)
        time.sleep(3)  # past the ack wait: a redelivery of w2's batch would land now
    finally:
        _stop(procs)
    got = evaluated(local_db)
    assert set(got) == set(streamed) | set(through_api)  # 0 lost
    assert set(got.values()) == {1}  # 0 duplicated
    with open_store(local_db, create=False) as store:
        assert store.verify().ok
        by = Counter(c.submitter for c in store.cases())
    assert by["svc"] >= THROUGH_API and by["w2"] > 0 and by["w1"] + by["w3"] > 0


def _wait_cases(db: str, n: int, procs: list[subprocess.Popen[str]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(evaluated(db).values()) >= n:
            return
        assert all(p.poll() is None for p in procs), "a worker stopped by itself"
        time.sleep(0.3)
    raise AssertionError(f"only {sum(evaluated(db).values())} of {n} requests were recorded")
