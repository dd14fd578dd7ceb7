"""``refundry worker``: decide requests from the NATS JetStream work queue into the shared store
(docs/deployment.md). SIGTERM or Ctrl-C finishes the batch in hand, then stops."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

import attrs

from refundry.app.logs import setup
from refundry.app.queue.streams import ACK_WAIT_S, CONNECT_DEADLINE_S, Streams
from refundry.app.queue.worker import WorkerConfig, run
from refundry.cli.common import EXIT_OK, add_db_option, default_db, default_rulesets

DEFAULT_NATS = "nats://127.0.0.1:4222"


def nats_url(args: argparse.Namespace) -> str:
    return str(args.nats or os.environ.get("REFUNDRY_NATS_URL") or DEFAULT_NATS)


def add_nats_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", metavar="URL", help=f"the broker (default: $REFUNDRY_NATS_URL or "
                   f"{DEFAULT_NATS})")
    p.add_argument("--prefix", default="REFUNDRY", help="stream names prefix (default: "
                   "REFUNDRY: REFUNDRY_REQUESTS, _DECISIONS, _DEAD)")
    p.add_argument("--connect-timeout", type=float, default=CONNECT_DEADLINE_S, metavar="SECONDS",
                   help="how long the first connection to the broker may take before it is an "
                   f"error (default: {CONNECT_DEADLINE_S:g})")


def cmd_worker(args: argparse.Namespace) -> int:
    setup(args.log_level)
    config = WorkerConfig(nats_url(args), args.db or default_db(),
                          tuple(args.rulesets or [str(default_rulesets())]),
                          Streams(args.prefix), batch=args.batch, ack_wait=args.ack_wait,
                          connect_timeout=args.connect_timeout,
                          **({"name": args.name} if args.name else {}))

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(config, stop)

    stats = asyncio.run(main())
    print(json.dumps(attrs.asdict(stats)), file=sys.stderr)
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="decide requests from the NATS JetStream stream into the "
                       "shared store")
    add_nats_options(p)
    add_db_option(p)
    p.add_argument("--rulesets", action="append", help="ruleset file or directory, repeatable "
                   "(default: ./rulesets or the shipped baselines)")
    p.add_argument("--batch", type=int, default=50, help="messages per fetch and per store "
                   "transaction")
    p.add_argument("--ack-wait", type=float, default=ACK_WAIT_S, metavar="SECONDS",
                   help="redeliver a message not acked within this (when the consumer is made)")
    p.add_argument("--name", help="this worker's name, the actor of what it records")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_worker)
