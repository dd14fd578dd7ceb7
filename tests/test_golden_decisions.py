"""The Decision JSON of every shipped test case, and of the speed bench's layered policy, is held
to a golden file, so that work on the engine's speed cannot change a decision by a byte.

Shipped cases are decided as `refundry test` decides them (forced to their suite's ruleset);
the bench's requests are resolved from the request alone, as production does. After a deliberate change to a shipped ruleset or
to the Decision, rewrite the file with ``REFUNDRY_GOLDEN_UPDATE=1 pytest tests/test_golden_decisions.py``
and review its diff.
"""

from __future__ import annotations

import importlib.util
import json
import os

import refundry
from refundry.app.testing import run_tests

from .conftest import DATA, ROOT, RULESETS

GOLDEN = DATA / "golden_decisions.json"
BENCH_REQUESTS = 300


def _bench():
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "bench_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped_decisions(engine) -> dict[str, dict]:
    out = {}
    report = run_tests(engine, [RULESETS])
    assert report.results, "no shipped test case ran"
    for result in report.results:
        key = f"{os.path.relpath(result.path, ROOT)}:{result.line} {result.name}"
        out[key] = result.decision.to_dict()
    return out


def bench_decisions(tmp_path) -> dict[str, dict]:
    bench = _bench()
    bench.write_policy(tmp_path, 20)
    engine = refundry.Engine.from_path(tmp_path)
    return {f"bench {r['request_id']}": engine.evaluate(r).to_dict()
            for r in bench.generate(BENCH_REQUESTS)}


def current(tmp_path) -> dict[str, dict]:
    engine = refundry.Engine.from_path(RULESETS)
    out = shipped_decisions(engine)
    out.update(bench_decisions(tmp_path))
    return json.loads(json.dumps(out, sort_keys=True))


def test_every_decision_is_byte_identical_to_the_golden_file(tmp_path):
    got = current(tmp_path)
    if os.environ.get("REFUNDRY_GOLDEN_UPDATE") == "1":
        GOLDEN.write_text("{\n" + ",\n".join(  # one decision a line: a change shows as its line
            f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in got.items()) + "\n}\n")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} decisions changed, first {differ[0]}:\n" \
                       f"{json.dumps(want[differ[0]], indent=1)}\n{json.dumps(got[differ[0]], indent=1)}"
