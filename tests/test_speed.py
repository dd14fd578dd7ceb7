"""The fast paths of issue 14 decide exactly as the checking paths they stand in front of.

- Rules indexed on `reason` match as the interpreter does on a policy of hundreds of rules.
- Memory stays flat over 1,000,000 evaluations (behind REFUNDRY_LONG=1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import refundry

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_engine
    finally:
        sys.path.remove(str(BENCH))
    return bench_engine


def test_an_indexed_policy_of_200_rules_decides_as_the_interpreter_and_by_hand(bench, tmp_path):
    bench.write_policy(tmp_path, 200)
    compiled = refundry.Engine.from_path(tmp_path)
    interpreted = refundry.Engine.from_path(tmp_path, backend="interpreted")
    for request in bench.generate(300, seed=11):
        got = compiled.evaluate(request)
        assert got == interpreted.evaluate(request)
        assert bench.summary(got) == bench.hand_written(request)


@pytest.mark.slow  # skipped unless REFUNDRY_LONG=1 (tests/conftest.py); .ci/run runs it
def test_memory_stays_flat_over_a_million_evaluations_from_dicts(bench, tmp_path):
    bench.write_policy(tmp_path, 20)
    engine = refundry.Engine.from_path(tmp_path)
    requests = bench.generate(2000)
    for request in requests * 5:
        engine.evaluate(request)
    warm = bench.rss_mb()
    for i in range(1_000_000):
        engine.evaluate(requests[i % len(requests)])
    assert bench.rss_mb() - warm < 5


def test_every_command_module_is_a_command_the_cli_knows():
    """`refundry NAME` imports only refundry.cli.NAME; a command module missing from the list
    would be a command nobody can run."""
    import refundry.cli as cli

    modules = {p.stem for p in Path(cli.__file__).parent.glob("*.py")} - {"__init__", "__main__", "common"}
    assert modules == set(cli.COMMANDS)


@pytest.mark.parametrize("text", ["1 day", "14 days", "30 days", "2 weeks", "14 days + 1 week", "0 days"])
def test_a_calendar_day_period_is_a_precomputed_offset_equal_to_counting(text):
    import datetime as dt

    from refundry.core.periods import Period, add_period

    period = Period.parse(text)
    assert period.offset is not None
    start = dt.date(2023, 1, 1)
    for n in range(800):  # every day of two years, leap day included
        day = start + dt.timedelta(days=n)
        assert day + period.offset == add_period(period, day, lambda d: d.weekday() < 5)


@pytest.mark.parametrize("text", ["1 month", "10 business days", "14 days + 1 month", "1 billing cycle"])
def test_a_period_that_needs_a_calendar_has_no_offset(text):
    from refundry.core.periods import Period

    assert Period.parse(text).offset is None


def test_the_db_option_names_the_stores_default_file(capsys):
    """cli/common.py writes the default out so a one-shot does not import the stores for it."""
    from refundry.cli import main
    from refundry.records.stores import DEFAULT_PATH

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert f"./{DEFAULT_PATH})" in " ".join(capsys.readouterr().out.split())


def test_a_one_shot_evaluate_imports_neither_the_stores_nor_the_plugin_host(tmp_path):
    import json
    import subprocess

    request = tmp_path / "r.json"
    request.write_text(json.dumps({"request_id": "x"}))
    code = ("import sys; from refundry.cli import main\n"
            f"try: main(['evaluate', {str(request)!r}])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('refundry.records.stores', 'pluggy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
