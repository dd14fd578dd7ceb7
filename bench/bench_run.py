"""Throughput of `refundry run` (source jsonl -> engine -> sink jsonl) for 1 and 2 workers.

    .venv/bin/python bench/bench_run.py [N] [--workers 1,2]

Generates N canonical requests (default 100,000; a third approved, a third denied, a third for
review), runs each worker count through the CLI as a user would, and prints requests per second
(the runner's own clock: reading, validating, evaluating, writing and journalling) and the wall
time including start-up. Timing lives here, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "examples" / "request.json").read_text())


def generate(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            req = {**EXAMPLE, "request_id": f"bench-{i:07d}"}
            if i % 3 == 1:
                req["requested_at"] = "2024-04-20T10:00:00+02:00"
            elif i % 3 == 2:
                req["reason"] = "defective"
            fh.write(json.dumps(req) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requests.jsonl"
        generate(src, args.n)
        results = []
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"decisions-{workers}.jsonl"
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "refundry.cli", "run", "--source", "jsonl", "--input", str(src),
                 "--out", str(out), "--rulesets", str(ROOT / "rulesets"), "--workers", str(workers)],
                capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                sys.exit(done.stderr)
            lines = sum(1 for _ in out.open())
            seconds = float(re.search(r"seconds (\d+\.\d+)", done.stderr).group(1))  # type: ignore[union-attr]
            results.append({"workers": workers, "requests": args.n, "decisions": lines,
                            "run_seconds": seconds, "wall_seconds": round(wall, 2),
                            "requests_per_second": round(args.n / seconds)})
            print(json.dumps(results[-1]), flush=True)
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
