"""``refundry report``: decisions, approval rates, reasons, fraud flags, timings, late refunds
and disputes as HTML with inline SVG charts, CSV or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from refundry.app.report import build, to_csv, to_html, to_json
from refundry.cli.common import (
    EXIT_OK,
    add_db_option,
    add_identity_option,
    open_db,
    parse_day,
    write_file,
)
from refundry.records.access import ScopedStore


def cmd_report(args: argparse.Namespace) -> int:
    since, until = parse_day(args.since, "--since"), parse_day(args.until, "--until")
    with open_db(args) as store:
        if isinstance(store, ScopedStore):  # --as: another client is recorded, shows nothing
            store.ask(args.client, "report")
        figs, head = build(store, since=since, until=until, client=args.client)
    span = f"{since or 'start'} to {until or 'now'}" + (f", client {args.client}" if args.client else "")
    text = {"html": lambda: to_html(figs, head, f"refundry report: {span}"),
            "csv": lambda: to_csv(figs), "json": lambda: to_json(figs, head)}[args.format]()
    out = write_file(args.out, text)  # never a half-written report
    print(f"report: {head['cases']} cases -> {out}")
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="decisions, refunds, fraud flags and disputes as "
                       "a self-contained HTML file with charts, CSV or JSON")
    add_db_option(p)
    add_identity_option(p)
    p.add_argument("--since", metavar="YYYY-MM-DD", help="first request date included")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="last request date included")
    p.add_argument("--client", help="only this client_id")
    p.add_argument("--format", default="html", choices=["html", "csv", "json"])
    p.add_argument("--out", required=True, metavar="PATH")
    p.set_defaults(func=cmd_report)
