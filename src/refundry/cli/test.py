"""``refundry test PATH [--coverage]``: the YAML test cases next to the rules."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from refundry.app.testing import run_tests
from refundry.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    add_backend_option,
    print_json,
)
from refundry.core.engine import Engine


def cmd_test(args: argparse.Namespace) -> int:
    engine = Engine.from_path(args.paths, backend=args.backend)
    report = run_tests(engine, args.paths)
    for err in report.errors:
        print(err, file=sys.stderr)
    if args.json:
        print_json(report.to_dict())
    else:
        for result in report.results:
            if not result.passed:
                print("FAIL " + result.describe())
        if args.coverage:
            covered = report.total_rules - len(report.uncovered)
            print(f"coverage: {covered}/{report.total_rules} rules")
            for rs, rid, path, line in report.uncovered:
                print(f"not covered: {path}:{line}: `{rs}` rule `{rid}`")
        print(report.summary())
    if report.errors:
        return EXIT_INVALID
    return EXIT_OK if report.ok else EXIT_FAILED


def register(sub: Any) -> None:
    p = sub.add_parser("test", help="run the YAML tests next to the rules")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--coverage", action="store_true", help="list rules no test exercises")
    add_backend_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_test)
