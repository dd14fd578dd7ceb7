"""Issue 12's figures: hostile requests in-process and through `refundry run`.

    .venv/bin/python bench/bench_hostile.py [N] [--cli] [--db]

Mutates the shipped test requests (tests/hostile_corpus.py, seeded) and prints how many
evaluations raised, were approved, were approved above what is left of the order; with --cli
the same requests go through `refundry run` (with --db also into a SQLite store) and it prints
the outcome counts and whether stderr held a traceback.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import refundry  # noqa: E402
from refundry.core.request import parse_request  # noqa: E402
from tests import hostile_corpus  # noqa: E402


def in_process(n: int) -> None:
    engine = refundry.Engine.from_path(ROOT / "rulesets")
    tally: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    for doc in hostile_corpus.corpus(n):
        try:
            decision = engine.evaluate(hostile_corpus.with_deep(doc))
        except Exception:  # noqa: BLE001
            tally["raised"] += 1
            continue
        tally[decision.outcome] += 1
        tally["invalid"] += bool(decision.errors)
        if decision.outcome == "approve":
            request = parse_request(doc)
            tally["over_approved"] += decision.amount > min(hostile_corpus.refundable(request),
                                                            request.amount)
    seconds = time.perf_counter() - t0
    print(f"in-process: {n} requests in {seconds:.1f} s: raised {tally['raised']}, approve "
          f"{tally['approve']}, deny {tally['deny']}, manual_review {tally['manual_review']} "
          f"(invalid {tally['invalid']}), approved above the refundable amount "
          f"{tally['over_approved']}")


def through_cli(n: int, db: bool) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        batch, out = Path(tmp) / "hostile.jsonl", Path(tmp) / "out.jsonl"
        batch.write_bytes(b"\n".join(hostile_corpus.json_line(d, rng)
                                     for d in hostile_corpus.corpus(n, seed=13)) + b"\n")
        extra = ["--db", str(Path(tmp) / "records.db")] if db else []
        t0 = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).parent / "refundry"), "run", "--source",
                               "jsonl", "--input", str(batch), "--out", str(out), "--rulesets",
                               str(ROOT / "rulesets"), *extra], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        summary = done.stderr.strip().splitlines()[-2] if done.stderr.strip() else ""
        over = 0
        lines = batch.read_bytes().split(b"\n")
        for line in out.read_text().splitlines():
            decision = json.loads(line)
            if decision["outcome"] == "approve":
                request = parse_request(json.loads(lines[int(decision["ref"].rsplit(":", 1)[1]) - 1]))
                over += Decimal(decision["amount"]) > hostile_corpus.refundable(request)
        print(f"refundry run{' --db' if db else ''}: {n} lines in {seconds:.1f} s, exit "
              f"{done.returncode}, traceback {'Traceback' in done.stderr}, approved above the "
              f"refundable amount {over}\n  {summary}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=100_000)
    ap.add_argument("--cli", action="store_true")
    ap.add_argument("--db", action="store_true")
    args = ap.parse_args()
    in_process(args.n)
    if args.cli:
        through_cli(args.n, db=False)
        if args.db:
            through_cli(args.n, db=True)


if __name__ == "__main__":
    main()
