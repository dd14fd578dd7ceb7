"""``refundry validate PATH...``: syntax, schema and semantic checks of rulesets."""

from __future__ import annotations

import argparse
from typing import Any

from refundry.app.gaps import find_gaps
from refundry.cli.common import (
    EXIT_OK,
    UsageError,
    add_baselines_option,
    add_identity_option,
    baselines_for,
    identity_of,
)
from refundry.core.engine import Engine
from refundry.core.loader import discover


def cmd_validate(args: argparse.Namespace) -> int:
    # Rulesets named on their own still need the baselines they extend: the same ones `test`
    # and `evaluate --rulesets` add.
    engine = Engine.from_path(args.paths, baselines=baselines_for(args, args.rulesets))
    versions = engine.rulesets
    from refundry.app.tenancy import authoring_problem  # only here: the CLI starts lean

    who = identity_of(args)
    problem = authoring_problem(who, versions, args.paths) if who else None
    if problem:
        raise UsageError(problem)
    ids = {r.id for r in versions}
    print(f"ok: {len(ids)} ruleset{'s' if len(ids) != 1 else ''}, {len(versions)} "
          f"version{'s' if len(versions) != 1 else ''}, {len(engine.library.composites)} layered "
          "combinations")
    if args.gaps:
        gaps = find_gaps(engine, {str(p) for p in discover(args.paths)})
        for gap in gaps:
            print(f"gap: {gap.describe()}")
        print(f"{len(gaps)} gap{'s' if len(gaps) != 1 else ''}")
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check rulesets: syntax, schema and semantics")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--rulesets", help="where the baselines added under the rulesets given come "
                   "from (default: ./rulesets or the shipped ones)")
    add_baselines_option(p)
    add_identity_option(p)
    p.add_argument("--gaps", action="store_true",
                   help="also list values of the fields the rules test (a reason, a policy) "
                        "that no rule decides")
    p.set_defaults(func=cmd_validate)
