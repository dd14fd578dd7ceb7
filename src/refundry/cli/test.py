"""``refundry test PATH... [--coverage] [-v] [--run PATTERN]``: the YAML test cases next to the
rules. A PATH is a folder, a ``.test.yaml`` file (run against the rulesets next to it) or a
ruleset file (run with the test file of its name); the shipped baselines are added under them
as ``validate`` adds them, unless ``--no-baselines``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from refundry.app.testing import CaseResult, TestReport, run_tests, test_sources
from refundry.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_baselines_option,
    baselines_for,
    print_json,
)
from refundry.core.engine import Engine
from refundry.core.loader import is_test_file


def cmd_test(args: argparse.Namespace) -> int:
    if args.run is not None:
        try:
            re.compile(args.run)
        except re.error as exc:
            raise UsageError(f"--run `{args.run}` is not a regular expression: {exc}") from None
    rulesets, tests = test_sources(args.paths)
    engine = Engine.from_path(rulesets, backend=args.backend, baselines=baselines_for(args))
    own = [p for p in args.paths if not is_test_file(Path(p))]
    report = run_tests(engine, tests, pattern=args.run, own=own,
                       conditions=args.coverage)
    for err in report.errors:
        print(err, file=sys.stderr)
    if not tests:
        print("refundry: no test file found (a ruleset file runs the FILE.test.yaml next to it)",
              file=sys.stderr)
    if args.json:
        print_json(report.to_dict())
    else:
        for result in report.results:
            if args.verbose:
                print(_case_line(result))
            elif not result.passed:
                print("FAIL " + result.describe())
        if args.coverage:
            _print_coverage(report)
        print(report.summary())
    if report.errors:
        return EXIT_INVALID
    return EXIT_OK if report.ok else EXIT_FAILED


def _case_line(result: CaseResult) -> str:
    status = "PASS" if result.passed else "FAIL"
    line = (f"{status} {result.seconds * 1000:7.2f} ms  {result.path}:{result.line}: "
            f"`{result.suite}` case `{result.name}`")
    return line if result.passed else line + ": " + "; ".join(result.failures)


def _print_coverage(report: TestReport) -> None:
    covered = report.total_rules - len(report.uncovered)
    conds = report.conditions
    done = sum(1 for c in conds if c.covered)
    print(f"coverage: {covered}/{report.total_rules} rules, {done}/{len(conds)} conditions "
          "seen both true and false")
    for rs, rid, path, line in report.uncovered:
        print(f"not covered: {path}:{line}: `{rs}` rule `{rid}`")
    for cond in conds:
        if not cond.covered:
            print(f"condition: {cond.describe()}")


def register(sub: Any) -> None:
    p = sub.add_parser("test", help="run the YAML tests next to the rules",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a folder, a FILE.test.yaml or a ruleset file")
    p.add_argument("--coverage", action="store_true",
                   help="list rules no case matched and conditions not seen both true and false")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every case with PASS or FAIL and its time")
    p.add_argument("--run", metavar="PATTERN",
                   help="run only the cases whose name matches this regular expression")
    add_baselines_option(p)
    add_backend_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_test)
