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

N_THREADS, PER_THREAD = 8, 10


def _unauthorised_calls(url: str) -> None:
    def one_thread() -> None:
        for _ in range(PER_THREAD):
            # A new connection each time, so the kernel hands them to both processes.
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
    try:
        _unauthorised_calls(url)
        line = re.compile(r'^refundry_http_requests_total\{method="GET",route="/v1/rulesets",'
                          r'status="401"\} (\S+)$', re.M)
        for _ in range(6):  # whichever process answers the scrape
            text = httpx.get(url + "/metrics", headers={"Connection": "close"}).text
            found = line.search(text)
            assert found and float(found.group(1)) == N_THREADS * PER_THREAD, text[:2000]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    logs = [json.loads(ln) for ln in proc.stderr.read().splitlines()]  # type: ignore[union-attr]
    answered_by = {e["pid"] for e in logs if e.get("status") == 401}
    assert len(answered_by) == 2  # both processes answered a share: the total is a sum
