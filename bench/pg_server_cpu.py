"""CPU time the PostgreSQL server spends on one client's connections, read from /proc.

The client tags its connections with an ``application_name`` (``PGAPPNAME`` in its
environment, which libpq reads); a thread lists those backends in ``pg_stat_activity`` every
few milliseconds and keeps each one's latest user + system time from ``/proc/<pid>/stat``. A
backend's CPU after its last sample (at most one interval) is missed. Needs the server on this
machine (elsewhere ``seconds`` is None). Timing lives in bench/, never in the tests.

    with ServerCPU(url) as cpu:      # cpu.env goes into the client's environment
        ...                          # start-up, warm-up: not counted after cpu.start()
        cpu.start(); ...; cpu.stop()
    cpu.seconds
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class ServerCPU:
    def __init__(self, url: str, interval: float = 0.005) -> None:
        self.url, self.interval = url, interval
        self.name = f"refundry-bench-{uuid.uuid4().hex[:8]}"
        self.env = {"PGAPPNAME": self.name}
        self.seconds: float | None = None
        self._latest: dict[int, float] = {}
        self._base: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def __enter__(self) -> ServerCPU:
        import psycopg

        self._conn = psycopg.connect(self.url.split("?", 1)[0], autocommit=True,
                                     application_name="refundry-bench-probe")
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def start(self) -> None:
        """Count from now: backends already open start from what they have used so far."""
        self._sample()
        with self._lock:
            self._base = dict(self._latest)

    def stop(self) -> None:
        self._sample()
        with self._lock:
            used = sum(v - self._base.get(pid, 0.0) for pid, v in self._latest.items())
            self.seconds = used if self._latest else None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            pids = [r[0] for r in self._conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,))]
            for pid in pids:
                used = _cpu(pid)
                if used is not None:
                    self._latest[pid] = used

    def __exit__(self, *exc: object) -> None:
        if self.seconds is None and self._latest:
            self.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._conn.close()
