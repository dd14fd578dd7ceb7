"""``refundry dispute open|resolve``: disputes re-evaluated with today's and the original rules."""

from __future__ import annotations

import argparse
from typing import Any

from refundry.cli.common import (
    EXIT_OK,
    ID_HELP,
    add_db_option,
    add_identity_option,
    default_rulesets,
    open_db,
    print_json,
)
from refundry.core.engine import Engine
from refundry.records.events import RESOLUTIONS


def cmd_dispute_open(args: argparse.Namespace) -> int:
    engine = Engine.from_path([str(args.rulesets or default_rulesets())])
    with open_db(args) as store:
        case = store.open_dispute(args.request_id, actor=args.by, reason=args.reason,
                                  engine=engine)
    print_json({"request_id": case.request_id, "status": case.status, "dispute": case.dispute})
    return EXIT_OK


def cmd_dispute_resolve(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        case = store.resolve_dispute(args.request_id, actor=args.by, resolution=args.resolution,
                                     explanation=args.explanation, amount=args.amount)
    print_json({"request_id": case.request_id, "status": case.status, "dispute": case.dispute})
    return EXIT_OK


def register(sub: Any) -> None:
    dis = sub.add_parser("dispute", help="open and resolve disputes on decided cases")
    dsub = dis.add_subparsers(dest="dispute_command", metavar="ACTION", required=True)
    p = dsub.add_parser("open", help="re-evaluate with today's rules and the original ones")
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--reason", required=True, help="what the customer disputes")
    p.add_argument("--rulesets", help="the rulesets in force now (default: ./rulesets or the "
                   "shipped baselines)")
    p.set_defaults(func=cmd_dispute_open)
    p = dsub.add_parser("resolve", help="uphold or overturn the decision")
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--resolution", required=True, choices=RESOLUTIONS)
    p.add_argument("--explanation", required=True, help="what the customer is told")
    p.add_argument("--amount", help="overturned: the amount to refund (default: today's "
                   "re-evaluation)")
    p.set_defaults(func=cmd_dispute_resolve)
    for parser in dsub.choices.values():
        add_db_option(parser)
        add_identity_option(parser)
