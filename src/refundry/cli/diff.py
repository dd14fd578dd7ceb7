"""``refundry diff OLD NEW --requests FILE``: what a ruleset change would change."""

from __future__ import annotations

import argparse
from typing import Any

from refundry.app.diffing import diff_decisions, engine_side, read_requests
from refundry.cli.common import (
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_identity_option,
    identity_of,
    parse_as_of,
    print_json,
)


def cmd_diff(args: argparse.Namespace) -> int:
    as_of = parse_as_of(args.as_of)
    shared = list(args.with_ or [])
    old = engine_side(args.old, shared, args.backend)
    new = engine_side(args.new, shared, args.backend)
    from refundry.app.tenancy import authoring_problem  # only here: the CLI starts lean

    who = identity_of(args)
    for side, path in ((old, args.old), (new, args.new)):
        problem = authoring_problem(who, side.rulesets, [path]) if who else None
        if problem:
            raise UsageError(problem)
    errors: list[str] = []
    report = diff_decisions(old, new, read_requests(args.requests, errors), as_of=as_of,
                            ruleset=args.ruleset)
    report.errors = errors
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.table())
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff", help="decide requests under two ruleset versions and report what changes")
    p.add_argument("old", metavar="OLD", help="the current rulesets (a file or a directory)")
    p.add_argument("new", metavar="NEW", help="the proposed rulesets (a file or a directory)")
    p.add_argument("--requests", required=True, metavar="FILE",
                   help="canonical requests, one JSON object per line (- for stdin)")
    p.add_argument("--with", dest="with_", action="append", metavar="PATH",
                   help="rulesets both sides use (e.g. the baselines a client file extends); "
                        "a ruleset that OLD or NEW defines itself is taken from that side")
    p.add_argument("--as-of", help="RFC 3339 time that chooses the versions in force on both "
                   "sides (default: each request's requested_at)")
    p.add_argument("--ruleset", help="decide every request with this ruleset id on both sides")
    add_backend_option(p)
    add_identity_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_diff)
