"""``refundry validate PATH...``: syntax, schema and semantic checks of rulesets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from refundry.cli.common import EXIT_OK, default_rulesets
from refundry.core.engine import Engine


def cmd_validate(args: argparse.Namespace) -> int:
    paths = list(args.paths)
    context = str(args.rulesets or default_rulesets())
    named = [Path(p) for p in paths]
    # Files named on their own still need the rulesets they extend.
    if any(p.is_file() for p in named) and Path(context).exists():
        paths.append(context)
    engine = Engine.from_path(paths)
    versions = engine.rulesets
    ids = {r.id for r in versions}
    print(f"ok: {len(ids)} ruleset{'s' if len(ids) != 1 else ''}, {len(versions)} "
          f"version{'s' if len(versions) != 1 else ''}, {len(engine.library.composites)} layered "
          "combinations")
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check rulesets: syntax, schema and semantics")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--rulesets", help="rulesets that named files may extend (default: ./rulesets "
                   "or the shipped baselines)")
    p.set_defaults(func=cmd_validate)
