"""``refundry review list|approve|deny``: the manual-review queue, with maker-checker."""

from __future__ import annotations

import argparse
from typing import Any

from refundry.cli.common import (
    EXIT_OK,
    ID_HELP,
    add_db_option,
    add_identity_option,
    case_line,
    open_db,
    print_cases,
)


def cmd_review_list(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        cases = store.cases("manual_review")
    return print_cases(args, cases)


def cmd_review(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        case = store.review(args.request_id, actor=args.by, approve=args.approve,
                            reason=args.reason)
    print(case_line(case))
    return EXIT_OK


def register(sub: Any) -> None:
    rev = sub.add_parser("review", help="the manual-review queue (maker-checker)")
    vsub = rev.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    p = vsub.add_parser("list", help="cases waiting for review")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review_list)
    for name, approve in (("approve", True), ("deny", False)):
        p = vsub.add_parser(name, help=f"{name} a case in manual_review")
        p.add_argument("request_id", metavar="ID", help=ID_HELP)
        p.add_argument("--by", required=True, metavar="WHO")
        p.add_argument("--reason", help="the justification" + ("" if approve else " (required)"))
        p.set_defaults(func=cmd_review, approve=approve)
    for parser in vsub.choices.values():
        add_db_option(parser)
        add_identity_option(parser)
