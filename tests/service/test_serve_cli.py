"""``refundry serve`` as a user starts it: a subprocess on a free port. The first start makes a
token file and shows the tokens once; logs are JSON lines; SIGTERM lets the requests in flight
finish, so every decision a client was told about is in the store and the chain verifies."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from refundry.records.stores import open_store

from ..conftest import RULESETS
from .conftest import make_request

EXE = str(Path(sys.executable).parent / "refundry")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([EXE, "serve", "--port", str(port), "--rulesets", str(RULESETS),
                             *extra], cwd=tmp, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("refundry serve did not become ready: " + (proc.stderr.read()
                                                                    if proc.stderr else ""))


def shown_tokens(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The token per role that a first start prints on stderr, read as they come."""
    shown: dict[str, str] = {}
    for line in proc.stderr:  # type: ignore[union-attr]
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("rf_"):
            shown[parts[0]] = parts[1]
        if len(shown) == 4:
            break
    return shown


def test_first_start_shows_tokens_once_and_keeps_only_digests(tmp_path):
    proc, url = start(tmp_path)
    try:
        shown = shown_tokens(proc)
        assert set(shown) == {"service", "reviewer", "analyst", "auditor"}
        kept = (tmp_path / "refundry-tokens.json").read_text()
        assert not any(token in kept for token in shown.values())
        assert oct((tmp_path / "refundry-tokens.json").stat().st_mode & 0o777) == "0o600"
        r = httpx.post(url + "/v1/decisions?record=true", json=make_request("cli-1"),
                       headers={"Authorization": f"Bearer {shown['service']}"})
        assert r.status_code == 200 and r.json()["outcome"] == "approve"
        assert (tmp_path / "refundry.db").exists()  # SQLite by default
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_issue_adds_a_token_with_its_roles(tmp_path):
    out = subprocess.run([EXE, "serve", "--tokens", "t.json", "--issue", "carol", "--role",
                          "reviewer", "--role", "auditor", "--client", "acme"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    token = out.stdout.strip()
    assert token.startswith("rf_") and "only its digest is kept" in out.stderr
    entry = json.loads((tmp_path / "t.json").read_text())["tokens"][0]
    assert entry["name"] == "carol" and entry["roles"] == ["auditor", "reviewer"]
    assert entry["clients"] == ["acme"]
    assert token not in (tmp_path / "t.json").read_text()


def test_sigterm_finishes_requests_in_flight(tmp_path):
    subprocess.run([EXE, "serve", "--tokens", "t.json", "--issue", "svc", "--client", "any-shop"], cwd=tmp_path,
                   capture_output=True, check=True)
    token = next(ln for ln in subprocess.run(
        [EXE, "serve", "--tokens", "t.json", "--issue", "svc2", "--client", "any-shop"], cwd=tmp_path,
        capture_output=True, text=True, check=True).stdout.splitlines())
    proc, url = start(tmp_path, "--tokens", "t.json", "--db", "s.db")
    answered: list[str] = []
    statuses: set[int] = set()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                rid = f"g-{n}-{i}"
                try:
                    r = http.post("/v1/decisions?record=true", json=make_request(rid))
                except httpx.TransportError:
                    return  # refused or closed before it was accepted: never answered
                statuses.add(r.status_code)
                if r.status_code == 200:
                    answered.append(rid)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    while len(answered) < 30:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    # Uvicorn re-raises SIGTERM once it has shut down cleanly, so the exit is by that signal
    # (what systemd expects); the "stopped" log line below proves the clean part.
    assert proc.wait(40) in (0, -signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(30)
    assert statuses == {200}
    logs = proc.stderr.read().splitlines()  # type: ignore[union-attr]
    assert logs and all(json.loads(line)["level"] for line in logs)
    assert any(json.loads(line)["message"] == "stopped" for line in logs)
    with open_store(tmp_path / "s.db", create=False) as store:
        recorded = {c.request_id for c in store.cases()}
        assert set(answered) <= recorded
        assert store.verify().ok
