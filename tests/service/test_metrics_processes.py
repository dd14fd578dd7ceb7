"""``/metrics`` under ``refundry serve --workers 2``: any process answers with the figures of
both (prometheus_client's multiprocess mode), not only its own."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading

import httpx

from .test_serve_cli import EXE, start

N_THREADS, PER_THREAD, MAX_ROUNDS = 8, 5, 40
LINE = re.compile(r'^refundry_http_requests_total\{method="GET",route="/v1/rulesets",'
                  r'status="401"\} (\S+)$', re.M)


def _unauthorised_calls(url: str) -> None:
    def one_thread() -> None:
        for _ in range(PER_THREAD):
            # A new connection each time, so the kernel can hand them to either process.
            r = httpx.get(url + "/v1/rulesets", headers={"Connection": "close"}, timeout=30)
            assert r.status_code == 401

    threads = [threading.Thread(target=one_thread) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_metrics_add_up_every_process(tmp_path):
    subprocess.run([EXE, "serve", "--tokens", "t.json", "--issue", "svc", "--client", "any-shop"], cwd=tmp_path,
                   capture_output=True, check=True)
    proc, url = start(tmp_path, "--tokens", "t.json", "--db", "m.db", "--workers", "2")
    answered_by: set[int] = set()  # the processes that logged a 401 (every error is logged)

    def read_logs() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            entry = json.loads(line)
            if entry.get("status") == 401:
                answered_by.add(entry["pid"])

    reader = threading.Thread(target=read_logs, daemon=True)
    reader.start()
    sent = 0
    try:
        # On a busy machine one process may take every connection for a while: go on until
        # both have answered a share, so the figure below can only be right as a sum.
        for _ in range(MAX_ROUNDS):
            _unauthorised_calls(url)
            sent += N_THREADS * PER_THREAD
            for _ in range(4):  # whichever process answers the scrape
                text = httpx.get(url + "/metrics", headers={"Connection": "close"}).text
                found = LINE.search(text)
                assert found and float(found.group(1)) == sent, text[:2000]
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2, f"one process answered all {sent} requests"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
