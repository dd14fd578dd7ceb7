"""``refundry serve``: the HTTP API (docs/deployment.md); ``--issue NAME --role R`` adds a token."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from refundry.app.service.identity import ROLES, issue
from refundry.app.service.server import ServiceConfig, first_tokens, serve
from refundry.cli.common import EXIT_OK, add_db_option, default_db, default_rulesets

DEFAULT_TOKENS = "refundry-tokens.json"
DEMO_DB, DEMO_TOKENS = "refundry-demo.db", "refundry-demo-tokens.json"


DEMO_IDENTITIES = (("reviewer-1", "reviewer"), ("reviewer-2", "reviewer"),
                   ("auditor-1", "auditor"), ("analyst-1", "analyst"), ("service-1", "service"))


def _demo(db: str, tokens: str, rulesets: tuple[str, ...]) -> None:
    """``--demo``: tokens for two reviewers (maker-checker needs two) and one per other role,
    shown once, and a few example cases in an empty store."""
    from refundry.app.console.demo import seed
    from refundry.app.service.rulesets import Rulesets
    from refundry.records.stores import open_store

    if not os.path.exists(tokens):
        print(f"demo: sign in at /console/ with one of these tokens (shown this once; only "
              f"their digests are kept in `{tokens}`):", file=sys.stderr)
        for name, role in DEMO_IDENTITIES:
            print(f"  {name:11} {issue(tokens, name, [role, 'admin'])}", file=sys.stderr)
    with open_store(db, create=True) as store:
        made = seed(store, Rulesets(rulesets).engine)
    if made:
        print(f"demo: {made} example cases recorded in `{db}`", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    default = DEMO_TOKENS if args.demo else DEFAULT_TOKENS
    tokens = args.tokens or os.environ.get("REFUNDRY_TOKENS") or default
    if args.issue:
        token = issue(tokens, args.issue, args.role or ["service"],
                      args.client or ["*"])
        print(token)
        print(f"issued to `{args.issue}` ({', '.join(args.role or ['service'])}); only its "
              f"digest is kept in `{tokens}`: store the token now", file=sys.stderr)
        return EXIT_OK
    rulesets = tuple(args.rulesets or [str(default_rulesets())])
    db = args.db or (DEMO_DB if args.demo else default_db())
    if args.demo:
        _demo(db, str(tokens), rulesets)
    made = first_tokens(tokens)
    if made:
        print(f"created `{tokens}` with one token per role; they are shown this once:",
              file=sys.stderr)
        for role, token in made.items():
            print(f"  {role:9} {token}", file=sys.stderr)
    config = ServiceConfig(rulesets, db, str(tokens))
    serve(config, host=args.host, port=args.port, workers=args.workers,
          log_level=args.log_level)
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="the HTTP API under /v1/ (OpenAPI at /v1/openapi.json)")
    p.add_argument("--rulesets", action="append", help="ruleset file or directory, repeatable "
                   "(default: ./rulesets or the shipped baselines)")
    add_db_option(p)
    p.add_argument("--tokens", default=None, metavar="FILE", help="the token digests (default: "
                   f"$REFUNDRY_TOKENS or ./{DEFAULT_TOKENS}, made on first start)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--issue", metavar="NAME", help="add a token for NAME to the token file, "
                   "print it and exit")
    p.add_argument("--role", action="append", choices=ROLES, help="with --issue, repeatable "
                   "(default: service)")
    p.add_argument("--client", action="append", metavar="CLIENT_ID", help="with --issue: "
                   "the clients the token may act on, repeatable (default `*`, every client: "
                   "only with --role admin)")
    p.add_argument("--demo", action="store_true", help="try the console: a store "
                   f"(default ./{DEMO_DB}) with example cases and tokens for two reviewers, "
                   "an auditor and an analyst, printed once")
    p.set_defaults(func=cmd_serve)
