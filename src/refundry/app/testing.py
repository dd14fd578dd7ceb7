"""``refundry test``: tests written next to the rules, in YAML, with rule coverage.

A test file ends in ``.test.yaml``::

    ruleset: eu-consumer          # the cases are evaluated against this ruleset
    defaults:
      request: {...}              # deep-merged under every case's request (null deletes a key)
    cases:
      - name: day 14 is still inside
        request: {requested_at: "2024-03-15T10:00:00+01:00"}
        as_of: "2024-03-15T10:00:00+01:00"      # optional
        expect:
          outcome: approve
          rules: [crd-withdrawal-in-period]     # the exact set of rules that matched
          amount: "109.99"
          deadlines: {refund_due_by: 2024-04-02, period_ends: null}   # null: must be absent

A rule is covered when at least one case matched it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import attrs

from refundry.core.engine import Engine
from refundry.core.errors import RulesetError, did_you_mean
from refundry.core.language import positions_of
from refundry.core.loader import (
    TEST_SUFFIXES,
    Report,
    RulesetDoc,
    discover,
    is_test_file,
    read_yaml,
)
from refundry.core.models import OUTCOMES, Decision
from refundry.core.yamlsrc import LocDict

_CASE_KEYS = {"name", "request", "as_of", "expect", "description"}
_EXPECT_KEYS = {"outcome", "rules", "amount", "deadlines", "errors", "lines", "actions"}


@attrs.frozen
class CaseResult:
    path: str
    line: int
    suite: str
    name: str
    failures: tuple[str, ...]
    decision: Decision | None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        return (f"{self.path}:{self.line}: `{self.suite}` case `{self.name}`: "
                + "; ".join(self.failures))


@attrs.frozen
class ConditionCoverage:
    """One leaf condition of a rule and the outcomes the cases gave it."""

    ruleset: str
    rule_id: str
    path: str
    line: int
    column: int
    text: str
    seen_true: bool
    seen_false: bool

    @property
    def covered(self) -> bool:
        return self.seen_true and self.seen_false

    def describe(self) -> str:
        never = "true" if not self.seen_true else "false"
        return (f"{self.path}:{self.line}:{self.column}: `{self.ruleset}` rule `{self.rule_id}`: "
                f"condition `{self.text}` was never {never}")


@attrs.frozen
class TestReport:
    results: tuple[CaseResult, ...]
    uncovered: tuple[tuple[str, str, str, int], ...]  # ruleset id, rule id, path, line
    total_rules: int
    errors: tuple[RulesetError, ...] = ()
    conditions: tuple[ConditionCoverage, ...] = ()

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return not self.errors and self.failed == 0

    def summary(self) -> str:
        return f"{self.passed} passed, {self.failed} failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "failed": self.failed,
            "failures": [r.describe() for r in self.results if not r.passed],
            # no times here: the same cases give the same report, whatever the machine
            "cases": [{"path": r.path, "line": r.line, "ruleset": r.suite, "name": r.name,
                       "passed": r.passed} for r in self.results],
            "coverage": {"rules": self.total_rules, "uncovered": [
                {"ruleset": rs, "rule_id": rid, "path": p, "line": line}
                for rs, rid, p, line in self.uncovered],
                "conditions": len(self.conditions),
                "conditions_uncovered": [c.describe() for c in self.conditions if not c.covered]},
            "errors": [str(e) for e in self.errors],
        }


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = {k: v for k, v in base.items()}
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = deep_merge(out.get(k), v)
        return out
    return over


def _plain(value: Any) -> Any:
    """YAML values as the JSON a source would send: dates and numbers become strings."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _parse_as_of(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _check(expect: Mapping[str, Any], decision: Decision) -> list[str]:
    failures = []
    if "outcome" in expect and decision.outcome != expect["outcome"]:
        failures.append(f"expected outcome `{expect['outcome']}`, got `{decision.outcome}`")
    if "rules" in expect:
        want = set(expect["rules"] or ())
        got = {r for r in decision.rule_ids if not r.startswith("refundry.")}
        if want != got:
            missing, extra = sorted(want - got), sorted(got - want)
            detail = []
            if missing:
                detail.append("did not match " + ", ".join(f"`{m}`" for m in missing))
            if extra:
                detail.append("also matched " + ", ".join(f"`{x}`" for x in extra))
            failures.append("rules: " + " and ".join(detail))
    if "amount" in expect and Decimal(str(expect["amount"])) != decision.amount:
        failures.append(f"expected amount {expect['amount']}, got {decision.amount}")
    for name, due in (expect.get("deadlines") or {}).items():
        got_due = decision.deadline(name)
        if due is None:
            if got_due is not None:
                failures.append(f"expected no `{name}`, got {got_due}")
        elif got_due is None or got_due.isoformat() != str(due):
            failures.append(f"expected `{name}` {due}, got {got_due}")
    failures += _check_lines(expect.get("lines"), decision)
    failures += _check_actions(expect.get("actions"), decision)
    if "errors" in expect and bool(decision.errors) != bool(expect["errors"]):
        failures.append(f"expected errors: {bool(expect['errors'])}, got {list(decision.errors)}")
    if decision.errors and not expect.get("errors"):
        failures.append("evaluation errors: " + "; ".join(decision.errors))
    return failures


def _check_lines(want: Any, decision: Decision) -> list[str]:
    """``lines: [{sku, outcome, amount}, ...]``, in the request's order; keys left out are not
    checked."""
    if want is None:
        return []
    got = [line.to_dict() for line in decision.lines]
    if len(want) != len(got):
        return [f"expected {len(want)} lines, got {len(got)}"]
    failures = []
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        for key, value in (w or {}).items():
            seen = g.get(key)
            if str(value) != str(seen):
                failures.append(f"line {i + 1}: expected {key} `{value}`, got `{seen}`")
    return failures


def _check_actions(want: Any, decision: Decision) -> list[str]:
    """``actions: {provisional_credit: {amount, due}}``; ``null`` for a type: must be absent."""
    failures = []
    got = {a.type: a.to_dict() for a in decision.actions}
    for kind, spec in (want or {}).items():
        if spec is None:
            if kind in got:
                failures.append(f"expected no action `{kind}`, got {got[kind]}")
            continue
        if kind not in got:
            failures.append(f"expected action `{kind}`, got none")
            continue
        for key, value in spec.items():
            if str(value) != str(got[kind].get(key)):
                failures.append(f"action `{kind}`: expected {key} `{value}`, got `{got[kind].get(key)}`")
    return failures


_Case = tuple[int, str, str, dict[str, Any], Any, dict[str, Any]]


def _load_suite(path: Path, engine: Engine, report: Report) -> list[_Case]:
    read = read_yaml(path, report)
    if read is None:
        return []
    _, data = read
    shown = str(path)
    if not isinstance(data, LocDict) or not isinstance(data.get("cases"), list):
        report.add("a test file needs `ruleset` and a list of `cases`", shown)
        return []
    suite = data.get("ruleset")
    known = {r.id for r in engine.rulesets}
    if suite not in known:
        report.add(f"tests name ruleset `{suite}`, which is not loaded{did_you_mean(suite, known)}",
                   shown, data.vpos("ruleset") if "ruleset" in data else (1, 1))
        return []
    defaults = (data.get("defaults") or {}).get("request") or {}
    cases = []
    for i, case in enumerate(data["cases"]):
        pos = data["cases"].pos(i)
        if not isinstance(case, Mapping) or not isinstance(case.get("expect"), Mapping):
            report.add("a case needs `name`, `request` and `expect`", shown, pos)
            continue
        if not _case_ok(cast(LocDict, case), shown, report):
            continue
        request = _plain(deep_merge(defaults, case.get("request") or {}))
        cases.append((pos[0], str(case.get("name", f"case {i + 1}")), suite, request,
                      case.get("as_of"), case["expect"]))
    return cases


def _case_ok(case: LocDict, shown: str, report: Report) -> bool:
    """Unknown keys and outcomes, at the line and column where they are written."""
    expect = case["expect"]
    for where, keys in ((case, _CASE_KEYS), (expect, _EXPECT_KEYS)):
        for key in where:
            if key not in keys:
                report.add(f"unknown key `{key}` in a case{did_you_mean(key, keys)}", shown,
                           positions_of(where, key, False))
                return False
    outcome = expect.get("outcome", OUTCOMES[0])
    if outcome not in OUTCOMES:
        report.add(f"`{outcome}` is not an outcome; expected one of: {', '.join(OUTCOMES)}"
                   f"{did_you_mean(outcome, OUTCOMES)}", shown, positions_of(expect, "outcome", True))
        return False
    return True


def test_sources(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """The rulesets to load and the test files to run for the paths given to `refundry test`:
    a folder is both; a test file runs against the rulesets next to it; a ruleset file runs
    the test file of the same name next to it."""
    rulesets: list[Path] = []
    tests: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            rulesets.append(p)
            tests.append(p)
        elif is_test_file(p):
            rulesets.append(p.parent)
            tests.append(p)
        else:
            rulesets.append(p)
            stem = p.name.rsplit(".", 1)[0]
            tests.extend(t for t in (p.with_name(stem + suffix) for suffix in TEST_SUFFIXES)
                         if t.is_file())
    return rulesets, tests


def run_tests(engine: Engine, paths: Iterable[str | Path], *, pattern: str | None = None,
              own: Iterable[str | Path] | None = None, conditions: bool = False) -> TestReport:
    """Run the cases in the test files under ``paths``; ``pattern`` (a regular expression)
    keeps the cases whose name it matches. Coverage counts the rules of the rulesets under
    ``own`` (default: every ruleset loaded), not of baselines added under them; with
    ``conditions``, each case is also explained to see each condition's outcome."""
    report = Report()
    results: list[CaseResult] = []
    matched: set[tuple[str, str]] = set()
    seen = _Conditions(engine)
    wanted = re.compile(pattern) if pattern else None
    for path in discover(paths, tests=True):
        if not is_test_file(path):
            continue
        for line, name, suite, request, as_of, expect in _load_suite(path, engine, report):
            if wanted is not None and not wanted.search(name):
                continue
            try:
                when = _parse_as_of(as_of)
            except ValueError:
                report.add(f"`as_of` `{as_of}` is not an RFC 3339 time", str(path), (line, 1))
                continue
            started = time.perf_counter()
            decision = engine.evaluate(request, as_of=when, ruleset=suite)
            seconds = time.perf_counter() - started
            if conditions:
                seen.record(request, when, suite)
            for reason in decision.reasons:
                matched.add((reason.ruleset, reason.rule_id))
            results.append(CaseResult(str(path), line, suite, name,
                                      tuple(_check(expect, decision)), decision, seconds))
    named = {suite for path in paths if Path(path).is_file()
             for _, _, suite, *_ in _load_suite(Path(path), engine, Report())}
    docs = _own_docs(engine, own, named)
    uncovered = [(doc.id, raw["id"], doc.path, doc.data["rules"].pos(i)[0])
                 for doc in docs for i, raw in enumerate(doc.data.get("rules") or ())
                 if (doc.id, raw["id"]) not in matched]
    total = sum(len(doc.data.get("rules") or ()) for doc in docs)
    return TestReport(tuple(results), tuple(uncovered), total, tuple(report.errors),
                      tuple(seen.coverage(docs)) if conditions else ())


def _own_docs(engine: Engine, own: Iterable[str | Path] | None,
              suites: set[str]) -> list[RulesetDoc]:
    """The rulesets coverage is about: those under ``own`` and those a named test file tests."""
    docs = [doc for versions in engine.library.versions.values() for doc in versions]
    if own is None:
        return docs
    mine = {str(p) for p in discover(own)}
    return [doc for doc in docs if doc.path in mine or doc.id in suites]


class _Conditions:
    """Condition coverage: each leaf condition of each rule, and whether some case made it true
    and some case made it false (a condition only one outcome was seen for is untested)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: dict[tuple[str, str, int], set[bool]] = {}

    def record(self, request: Any, when: dt.datetime | None, suite: str) -> None:
        explanation = self.engine.explain(request, as_of=when, ruleset=suite)
        for rule in explanation.rules:
            for index, result in enumerate(_leaf_results(rule["when"])):
                self.seen.setdefault((rule["layer"], rule["rule_id"], index), set()).add(result)

    def coverage(self, docs: Iterable[RulesetDoc]) -> Iterator[ConditionCoverage]:
        for doc in docs:
            for raw in doc.data.get("rules") or ():
                if "when" not in raw:
                    continue
                for index, (text, (line, col)) in enumerate(_leaf_sources(raw["when"], raw, "when")):
                    seen = self.seen.get((doc.id, raw["id"], index), set())
                    yield ConditionCoverage(doc.id, raw["id"], doc.path, line, col, text,
                                            True in seen, False in seen)


_BRANCHES = ("all", "any")
_WHOLE = ("any_item", "all_items")  # an item condition counts as one condition of the rule


def _leaf_results(node: Mapping[str, Any]) -> Iterator[bool]:
    for head in _BRANCHES:
        if head in node:
            for child in node[head]:
                yield from _leaf_results(child)
            return
    if "not" in node:
        yield from _leaf_results(node["not"])
        return
    yield bool(node["result"])


def _leaf_sources(raw: Any, parent: Any, key: Any) -> Iterator[tuple[str, tuple[int, int]]]:
    """The leaves of a condition as written, in the order ``_leaf_results`` walks them."""
    for head in _BRANCHES:
        if head in raw:
            for i, child in enumerate(raw[head]):
                yield from _leaf_sources(child, raw[head], i)
            return
    if "not" in raw:
        yield from _leaf_sources(raw["not"], raw, "not")
        return
    yield _condition_text(raw), positions_of(parent, key, True)


def _condition_text(raw: Mapping[str, Any]) -> str:
    for head in (*_WHOLE, "within", "after"):
        if head in raw:
            return f"{head} {_plain(raw[head])}" if head not in _WHOLE else f"{head} ..."
    op = next((k for k in raw if k != "field"), "")
    return f"{raw.get('field')} {op} {_shown(raw.get(op))}"


def _shown(value: Any) -> str:
    """A condition's value as it is written in YAML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    return str(_plain(value))
