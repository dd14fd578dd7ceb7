"""Issue 12, defect 9: every ruleset file up to the documented limits loads or is refused fast.

Speed is compared with loading the shipped rulesets in the same run (a ratio, never a wall-clock
bound); ``bench/bench_loader.py`` prints the absolute times.
"""

from __future__ import annotations

import time

import pytest

import refundry
from refundry.core.loader import MAX_FILE_BYTES
from refundry.core.periods import Period
from refundry.core.yamlsrc import MAX_NODES

from . import hostile_rulesets
from .conftest import RULESETS


def _seconds(path) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        refundry.Engine.from_path(path)
        outcome = "loaded"
    except refundry.InvalidRulesets as exc:
        outcome = "\n".join(str(e) for e in exc.errors)
    return time.perf_counter() - t0, outcome


@pytest.fixture(scope="module")
def shipped_seconds() -> float:
    return min(_seconds(RULESETS)[0] for _ in range(3))


@pytest.mark.parametrize("case", sorted(hostile_rulesets.CASES))
def test_every_input_up_to_the_limits_loads_or_fails_fast(tmp_path, case, shipped_seconds):
    path = hostile_rulesets.write(tmp_path, case, MAX_FILE_BYTES)
    assert path.stat().st_size <= MAX_FILE_BYTES
    seconds, outcome = _seconds(path)
    # The shipped set is 24 files of ~770 values at most; one file at the 10,000-value limit
    # may cost a few of them, never the minutes the alias bomb and the period regex took.
    assert seconds < 8 * shipped_seconds + 0.5, (case, seconds, shipped_seconds)
    if outcome != "loaded":
        assert all(line.startswith(str(path)) and len(line) < 300 for line in outcome.splitlines())


def test_the_516_byte_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    path = hostile_rulesets.write(tmp_path, "alias_bomb", MAX_FILE_BYTES)
    with pytest.raises(refundry.InvalidRulesets) as caught:
        refundry.Engine.from_path(path)
    assert f"holds more than {MAX_NODES} values (aliases expanded)" in str(caught.value.errors[0])


def test_a_self_referencing_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(hostile_rulesets.HEADER.format(name="loop") + "rules: &r [*r]\n")
    with pytest.raises(refundry.InvalidRulesets, match="refers to a node that contains it"):
        refundry.Engine.from_path(path)


def test_ordinary_aliases_still_load(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text(hostile_rulesets.many_rules(4_000).replace(
        "customer_message: Your request needs a review.", "customer_message: &m Your request needs a review.", 1)
        .replace("customer_message: Your request needs a review.", "customer_message: *m"))
    assert refundry.Engine.from_path(path).rulesets[0].id == "hostile-many"


def test_a_file_over_the_byte_limit_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(hostile_rulesets.HEADER.format(name="big") + "#" * MAX_FILE_BYTES + "\n")
    with pytest.raises(refundry.InvalidRulesets, match=f"larger than {MAX_FILE_BYTES} bytes"):
        refundry.Engine.from_path(path)


@pytest.mark.parametrize("text", ["1 " + " " * 60_000 + "!", " + ".join(["1 day"] * 10_000)])
def test_a_hostile_period_is_refused_by_length_not_by_backtracking(text):
    with pytest.raises(ValueError, match="at most 200 characters"):
        Period.parse(text)


@pytest.mark.parametrize("text", ["１４ days", "14 fortnights", "14", "days", "1 day + + 2 days"])
def test_malformed_periods_are_refused(text):
    with pytest.raises(ValueError):
        Period.parse(text)


def test_periods_still_read_the_documented_forms():
    assert Period.parse("14 days + 12 months").steps == ((14, "days"), (12, "months"))
    assert Period.parse(" 10  Business Days ").steps == ((10, "business_days"),)


@pytest.mark.parametrize("line, message", [
    ("version: \"1.0.0\\n\"", "`version`"),
    ("jurisdictions: [\"DE\\n\"]", "is not well formed"),
    ("x: 2024-02-30", "`2024-02-30` is not a real date"),
    ("x: " + "9" * 5000, "integer longer than 64 characters"),
])
def test_yaml_values_that_used_to_slip_through_or_crash(tmp_path, line, message):
    text = hostile_rulesets.many_rules(2_000)
    key = line.split(":")[0]
    if key in ("version", "jurisdictions"):
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(key + ":")) + "\n"
    path = tmp_path / "odd.yaml"
    path.write_text(line + "\n" + text)
    with pytest.raises(refundry.InvalidRulesets) as caught:
        refundry.Engine.from_path(path)
    assert any(message in str(e) and str(e).startswith(f"{path}:1:") for e in caught.value.errors), \
        caught.value.errors
