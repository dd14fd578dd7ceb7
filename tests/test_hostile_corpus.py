"""Issue 12, done-when: hostile requests (mutated shipped test requests, and hypothesis) are
never raised on, never approved above what is left of the order, and never make the CLI print a
traceback. 5,000 in CI; 100,000 with REFUNDRY_LONG=1."""

from __future__ import annotations

import json
import os
import random
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refundry
from refundry.core.request import parse_request

from . import hostile_corpus
from .conftest import RULESETS, refundry_cli

LONG = os.environ.get("REFUNDRY_LONG") == "1"
N = 100_000 if LONG else 5_000


def _check(engine: refundry.Engine, doc: dict, tally: dict[str, int]) -> None:
    try:
        decision = engine.evaluate(doc)
    except Exception:  # noqa: BLE001 - counted, then asserted to be zero
        tally["raised"] += 1
        return
    if decision.outcome != "approve":
        return
    tally["approved"] += 1
    request = parse_request(doc)  # an approved request must be valid
    # Above the requested amount is lawful (a withdrawal refunds every payment for the goods and
    # standard delivery, whatever the consumer typed: issue 10); above what is left is not.
    if decision.amount > hostile_corpus.refundable(request):
        tally["over_approved"] += 1


def test_hostile_requests_in_process(engine):
    tally = dict.fromkeys(("raised", "approved", "over_approved"), 0)
    for doc in hostile_corpus.corpus(N):
        _check(engine, hostile_corpus.with_deep(doc), tally)
    assert tally["raised"] == 0 and tally["over_approved"] == 0, tally
    assert tally["approved"] > N // 100, tally  # the corpus still exercises approvals


@settings(max_examples=2_000 if LONG else 300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_hostile_requests_by_hypothesis(engine, data):
    base = json.loads(data.draw(st.sampled_from(hostile_corpus.shipped_requests())))
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    tally = dict.fromkeys(("raised", "approved", "over_approved"), 0)
    _check(engine, hostile_corpus.with_deep(hostile_corpus.mutate(base, rng)), tally)
    assert tally["raised"] == 0 and tally["over_approved"] == 0


@pytest.mark.parametrize("store", [False, True], ids=["jsonl", "jsonl+db"])
def test_hostile_requests_through_refundry_run(tmp_path: Path, store: bool):
    rng = random.Random(7)
    # With a store every request also reads and writes the records (about 100/s on a shared
    # machine): 20,000 keep the long run inside the CLI helper's 10 minutes; the bench runs
    # 100,000 (bench/bench_hostile.py --cli --db).
    docs = list(hostile_corpus.corpus(min(N, 20_000) if store else N, seed=13))
    batch = tmp_path / "hostile.jsonl"
    batch.write_bytes(b"\n".join(hostile_corpus.json_line(d, rng) for d in docs) + b"\n")
    out = tmp_path / "out.jsonl"
    db = ["--db", str(tmp_path / "records.db")] if store else []
    done = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                        "--rulesets", RULESETS, *db)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = batch.read_bytes().split(b"\n")[:-1]
    decided = [json.loads(x) for x in out.read_text().splitlines()]
    dead = out.with_name("out.jsonl.dead-letter.jsonl").read_text().splitlines()
    journal = out.with_name("out.jsonl.progress.jsonl").read_text().splitlines()
    # every line with content is journalled once, or counted as a repeat of an earlier id
    content = [line for line in lines if line.strip() and not line.strip().startswith(b"#")]
    assert len(journal) + _repeats(done.stderr) == len(content) >= len(decided) + len(dead)
    by_line = {int(d["ref"].rsplit(":", 1)[1]): d for d in decided}
    over = []
    for number, decision in by_line.items():
        if decision["outcome"] != "approve":
            continue
        if Decimal(decision["amount"]) > hostile_corpus.refundable_of_line(lines[number - 1]):
            over.append(number)
    assert over == []


def _repeats(stderr: str) -> int:
    """Lines the run counted as duplicates of an earlier request_id in the same batch."""
    for part in stderr.split(","):
        if part.strip().startswith("duplicates"):
            return int(part.split()[-1])
    raise AssertionError(stderr)


def test_the_parser_refuses_every_hostile_request_the_schema_refuses():
    import jsonschema

    schema = json.loads((RULESETS.parent / "schemas" / "refund-request.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    accepted = []
    for doc in hostile_corpus.corpus(min(N, 20_000), seed=5):
        # as JSON text would carry it: money floats and Decimals as numbers, nesting shallow
        text = json.dumps(doc, default=str).replace(json.dumps(hostile_corpus.DEEP), "[[1]]")
        data = json.loads(text)
        if validator.is_valid(data):
            continue
        try:
            parse_request(data)
        except refundry.InvalidRequest:
            continue
        accepted.append(next(iter(validator.iter_errors(data))).json_path)
    assert accepted == []
