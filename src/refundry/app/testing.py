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
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from refundry.core.engine import Engine
from refundry.core.errors import RulesetError
from refundry.core.loader import Report, discover, read_yaml
from refundry.core.models import OUTCOMES, Decision
from refundry.core.yamlsrc import LocDict

_CASE_KEYS = {"name", "request", "as_of", "expect", "description"}
_EXPECT_KEYS = {"outcome", "rules", "amount", "deadlines", "errors"}


@attrs.frozen
class CaseResult:
    path: str
    line: int
    suite: str
    name: str
    failures: tuple[str, ...]
    decision: Decision | None

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        return (f"{self.path}:{self.line}: `{self.suite}` case `{self.name}`: "
                + "; ".join(self.failures))


@attrs.frozen
class TestReport:
    results: tuple[CaseResult, ...]
    uncovered: tuple[tuple[str, str, str, int], ...]  # ruleset id, rule id, path, line
    total_rules: int
    errors: tuple[RulesetError, ...] = ()

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
            "coverage": {"rules": self.total_rules, "uncovered": [
                {"ruleset": rs, "rule_id": rid, "path": p, "line": line}
                for rs, rid, p, line in self.uncovered]},
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
    if "errors" in expect and bool(decision.errors) != bool(expect["errors"]):
        failures.append(f"expected errors: {bool(expect['errors'])}, got {list(decision.errors)}")
    if decision.errors and not expect.get("errors"):
        failures.append("evaluation errors: " + "; ".join(decision.errors))
    return failures


def _load_suite(path: Path, engine: Engine, report: Report) -> list[tuple[int, str, str, dict[str, Any], Any, dict[str, Any]]]:
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
        report.add(f"tests name ruleset `{suite}`, which is not loaded", shown,
                   data.vpos("ruleset") if "ruleset" in data else (1, 1))
        return []
    defaults = (data.get("defaults") or {}).get("request") or {}
    cases = []
    for i, case in enumerate(data["cases"]):
        pos = data["cases"].pos(i)
        if not isinstance(case, Mapping) or "expect" not in case:
            report.add("a case needs `name`, `request` and `expect`", shown, pos)
            continue
        unknown = set(case) - _CASE_KEYS
        bad_expect = set(case["expect"] or {}) - _EXPECT_KEYS
        if unknown or bad_expect:
            report.add(f"unknown key `{sorted(unknown or bad_expect)[0]}` in a case", shown, pos)
            continue
        if "outcome" in case["expect"] and case["expect"]["outcome"] not in OUTCOMES:
            report.add(f"`{case['expect']['outcome']}` is not an outcome", shown, pos)
            continue
        request = _plain(deep_merge(defaults, case.get("request") or {}))
        cases.append((pos[0], str(case.get("name", f"case {i + 1}")), suite, request,
                      case.get("as_of"), case["expect"]))
    return cases


def run_tests(engine: Engine, paths: Iterable[str | Path]) -> TestReport:
    report = Report()
    results: list[CaseResult] = []
    matched: set[tuple[str, str]] = set()
    for path in discover(paths, tests=True):
        for line, name, suite, request, as_of, expect in _load_suite(path, engine, report):
            try:
                when = _parse_as_of(as_of)
            except ValueError:
                report.add(f"`as_of` `{as_of}` is not an RFC 3339 time", str(path), (line, 1))
                continue
            decision = engine.evaluate(request, as_of=when, ruleset=suite)
            for reason in decision.reasons:
                matched.add((reason.ruleset, reason.rule_id))
            results.append(CaseResult(str(path), line, suite, name,
                                      tuple(_check(expect, decision)), decision))
    uncovered = []
    total = 0
    for doc_versions in engine.library.versions.values():
        for doc in doc_versions:
            for i, raw in enumerate(doc.data.get("rules") or ()):
                total += 1
                if (doc.id, raw["id"]) not in matched:
                    line = doc.data["rules"].pos(i)[0]
                    uncovered.append((doc.id, raw["id"], doc.path, line))
    return TestReport(tuple(results), tuple(uncovered), total, tuple(report.errors))
