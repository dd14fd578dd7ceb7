"""CPU per request of the records path every recorded decision pays before the writers' lock:
scrubbing the request on entry, parsing it, its canonical dict, masking it, the decision
snapshot (``mask_value(decision.to_dict(), DECISION_MONEY)``, or ``mask_snapshot`` where a tree
has it, as ``prepare_event`` does), the canonical JSON of both, and
``records.events.prepare_event`` as a whole, and pickling and unpickling the prepared
decisions (a worker of ``refundry run --db --workers N`` sends them to the parent).

    .venv/bin/python bench/bench_prepare.py [--requests 300] [--runs 7] [--rounds 3]
        [--baseline REV]

Requests come from bench_run_db.py's generator (a third approved, a third denied, a third held
for review), decided once by an engine over the full ``rulesets/``; only the steps after the
decision are timed. Each tree runs in a child process (``--baseline REV``: ``git archive REV src
schemas``, like bench_engine.py), alternating tree by tree ``--rounds`` times, so before and
after share one run and its load. Figures are CPU time (``time.process_time``) per request:
the median of ``--runs`` passes in a round, the lowest such median over the rounds. Each child
also prints a SHA-256 over every prepared event's encoded bytes: equal digests mean equal
output bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_run_db import generate, tree_of  # noqa: E402 - a sibling script, found by its folder

STEPS = ("scrub_request", "parse_request", "request_to_dict", "mask_request", "snapshot",
         "encode", "prepare_event", "pickle", "unpickle")


def child(requests: int, runs: int) -> dict:
    """This process's figures: µs of CPU per request for each step, and the output digest."""
    from refundry.core.engine import Engine
    from refundry.core.request import parse_request, request_to_dict
    from refundry.records import masking
    from refundry.records.events import DECISION_MONEY, encode, prepare_event
    from refundry.records.masking import mask_request, mask_value, scrub_request

    def snapshot_of(decision):  # as prepare_event masks it, on either tree
        if hasattr(masking, "mask_snapshot"):
            return masking.mask_snapshot(decision.to_dict())
        return mask_value(decision.to_dict(), DECISION_MONEY)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "req.jsonl"
        generate(path, requests)
        data = [json.loads(line, parse_float=Decimal) for line in path.read_text().splitlines()]
    engine = Engine.from_path(ROOT / "rulesets")
    salt = b"s" * 32
    decisions = [engine.evaluate(d) for d in data]
    parsed = [parse_request(d) for d in data]
    raws = [request_to_dict(r) for r in parsed]
    masked = [mask_request(r, salt) for r in raws]
    snaps = [snapshot_of(dec) for dec in decisions]
    pairs = list(zip(parsed, decisions, strict=True))
    prepared = [prepare_event(r, dec, salt, actor="a", texts=()) for r, dec in pairs]
    sent = pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256()
    for r, dec in pairs:
        encoded = prepare_event(r, dec, salt, actor="a", texts=()).draft.encoded
        digest.update(encoded["decision"] + b"\0" + encoded["request"] + b"\0")
    for d in data:
        digest.update(json.dumps(scrub_request(d, salt), sort_keys=True, default=str).encode())
    work = {
        "scrub_request": lambda: [scrub_request(d, salt) for d in data],
        "parse_request": lambda: [parse_request(d) for d in data],
        "request_to_dict": lambda: [request_to_dict(r) for r in parsed],
        "mask_request": lambda: [mask_request(r, salt) for r in raws],
        "snapshot": lambda: [snapshot_of(dec) for dec in decisions],
        "encode": lambda: [encode(s, m) for s, m in zip(snaps, masked, strict=True)],
        "prepare_event": lambda: [prepare_event(r, dec, salt, actor="a", texts=())
                                  for r, dec in pairs],
        # A worker sends its chunk's prepared decisions in one pickle; the parent loads it.
        "pickle": lambda: pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL),
        "unpickle": lambda: pickle.loads(sent),
    }
    out: dict = {"digest": digest.hexdigest()[:16]}
    for step in STEPS:
        work[step]()  # warm: caches filled as in a long run
        times = []
        for _ in range(runs):
            t0 = time.process_time()
            work[step]()
            times.append(time.process_time() - t0)
        out[step] = statistics.median(times) / len(data) * 1e6
    return out


def run_tree(src: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--requests",
           str(args.requests), "--runs", str(args.runs)]
    text = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(src)}, check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="a git revision to measure too, e.g. main")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.requests, args.runs)))
        return 0
    print(f"{args.requests} requests, median of {args.runs} passes, best of {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT / "src"}
        if args.baseline:
            trees = {args.baseline: tree_of(args.baseline, Path(tmp)), **trees}
        best: dict[str, dict] = {name: {} for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                got = run_tree(src, args)
                for key, value in got.items():
                    prior = best[name].get(key)
                    best[name][key] = value if key == "digest" or prior is None else min(prior, value)
    names = list(trees)
    print(f"{'µs CPU / request':18}" + "".join(f"{n:>18}" for n in names)
          + ("       ratio" if len(names) == 2 else ""))
    for step in STEPS:
        row = [best[n][step] for n in names]
        ratio = f"{row[0] / row[1]:11.2f}x" if len(row) == 2 else ""
        print(f"{step:18}" + "".join(f"{v:18.1f}" for v in row) + ratio)
    print("output digest     " + "".join(f"{best[n]['digest']:>18}" for n in names)
          + ("  (equal)" if len({best[n]["digest"] for n in names}) == 1 else "  (DIFFERENT)"))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
