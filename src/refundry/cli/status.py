"""``refundry status ID``: what the customer is told (status, next step, due date), recorded on
the case as given."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from refundry.app.customer import LANGUAGES, communicate, status
from refundry.cli.common import (
    EXIT_OK,
    ID_HELP,
    add_db_option,
    add_identity_option,
    open_db,
    unscoped,
)


def cmd_status(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        msg = status(store, args.request_id, args.lang)
        if not args.preview:
            communicate(unscoped(store), args.request_id, channel=args.channel, template=msg.template,
                        language=msg.language, text=msg.plain(), actor=args.by or getpass.getuser())
    if args.json:
        print(json.dumps(msg.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"{msg.title}: {msg.text}")
        print(msg.next_step)
    return EXIT_OK


def add_customer_options(p: argparse.ArgumentParser) -> None:
    """The options ``status`` and ``receipt`` share: the case, language, channel and giver."""
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    add_db_option(p)
    add_identity_option(p)
    p.add_argument("--lang", default="en", choices=LANGUAGES)
    p.add_argument("--channel", default="cli", help="how it reaches the customer "
                   "(email, portal, letter, ...), as recorded on the case")
    p.add_argument("--by", default=None, metavar="WHO", help="who gives it (default: the "
                   "login name)")
    p.add_argument("--preview", action="store_true", help="show it without recording it "
                   "as given to the customer")


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="the customer-safe status, next step and due date of a "
                       "request")
    add_customer_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
