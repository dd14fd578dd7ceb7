"""``refundry receipt ID``: the receipt of a processed refund (JSON or printable HTML),
recorded on the case as given."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from refundry.app.customer import communicate, receipt, receipt_html, receipt_text
from refundry.cli.common import EXIT_OK, open_db, unscoped, write_file
from refundry.cli.status import add_customer_options


def cmd_receipt(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        data = receipt(store, args.request_id, args.lang)
        out = (json.dumps(data, indent=2, ensure_ascii=False) + "\n" if args.format == "json"
               else receipt_html(data))
        if args.out and args.out != "-":
            write_file(args.out, out)
        else:
            sys.stdout.write(out)
        if not args.preview:
            communicate(unscoped(store), args.request_id, channel=args.channel,
                        template=f"receipt.{args.format}", language=data["language"],
                        text=receipt_text(data), actor=args.by or getpass.getuser())
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("receipt", help="the receipt of a processed refund (JSON or printable "
                       "HTML)")
    add_customer_options(p)
    p.add_argument("--format", default="json", choices=["json", "html"])
    p.add_argument("--out", metavar="PATH", help="write here instead of stdout")
    p.set_defaults(func=cmd_receipt)
