"""``refundry publish --source NAME --input PATH``: feed the NATS JetStream requests stream."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from refundry.app.logs import setup
from refundry.app.queue.publisher import publish
from refundry.app.queue.streams import Streams
from refundry.cli.common import EXIT_OK, print_json
from refundry.cli.run import parse_options
from refundry.cli.worker import add_nats_options, nats_url


def cmd_publish(args: argparse.Namespace) -> int:
    setup("warning")  # a broker away is one JSON line per attempt, not a traceback
    done = asyncio.run(publish(nats_url(args), args.source, args.input,
                               streams=Streams(args.prefix), options=parse_options(args.option or []),
                               connect_timeout=args.connect_timeout))
    print_json(done.to_dict())
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("publish", help="feed the NATS JetStream requests stream from a source")
    p.add_argument("--source", required=True, help="a source plugin (see `refundry plugins`)")
    p.add_argument("--input", required=True, metavar="PATH")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a source option")
    add_nats_options(p)
    p.set_defaults(func=cmd_publish)
