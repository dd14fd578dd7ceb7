"""How long the loader takes on hostile ruleset files at the documented limits.

    .venv/bin/python bench/bench_loader.py [--limit BYTES] [--timeout S]

Each case (tests/hostile_rulesets.py) is written at the byte limit (and within the 10,000-value
limit) and loaded by ``Engine.from_path`` in a child process, which is killed after --timeout
seconds, so a regression shows as TIMEOUT instead of a hung bench. Prints the seconds, whether
it loaded or was refused, and the ratio to loading the shipped rulesets.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refundry.core.loader import MAX_FILE_BYTES  # noqa: E402
from tests import hostile_rulesets  # noqa: E402


def _load(path: str, out: mp.Queue) -> None:
    import refundry

    t0 = time.perf_counter()
    try:
        refundry.Engine.from_path(path)
        outcome = "loaded"
    except refundry.RefundryError as exc:
        outcome = "refused: " + str(getattr(exc, "errors", [exc])[0])[:90]
    out.put((time.perf_counter() - t0, outcome))


def timed(path: Path, timeout: float) -> tuple[float | None, str]:
    out: mp.Queue = mp.Queue()
    proc = mp.Process(target=_load, args=(str(path), out))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return None, f"TIMEOUT after {timeout} s"
    return out.get()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=MAX_FILE_BYTES)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    shipped, _ = timed(ROOT / "rulesets", args.timeout)
    print(f"{'shipped rulesets':20} {'':>8} {shipped:7.3f} s  (the ratio's base)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(hostile_rulesets.CASES):
            path = hostile_rulesets.write(Path(tmp), name, args.limit)
            seconds, outcome = timed(path, args.timeout)
            shown = f"{seconds:7.3f} s  x{seconds / shipped:4.1f}" if seconds is not None else " " * 16
            print(f"{name:20} {path.stat().st_size:>8} {shown}  {outcome}")


if __name__ == "__main__":
    main()
