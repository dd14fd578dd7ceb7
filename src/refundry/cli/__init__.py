"""The ``refundry`` command: a thin shell over the library, one module per command.

Each command module has a ``register(sub)`` that adds its parser and a ``cmd_*`` function that
parses nothing itself: it calls the library, prints, and returns the exit code (see
``refundry.cli.common``). A user error prints one line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from refundry.cli import (
    diff,
    dispute,
    evaluate,
    plugins,
    publish,
    receipt,
    records,
    report,
    review,
    run,
    serve,
    status,
    test,
    validate,
    worker,
)
from refundry.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, UsageError
from refundry.core.errors import ErrorGroup, RefundryError

COMMANDS = (validate, test, evaluate, diff, records, review, dispute, plugins, run, status,
            receipt, report, serve, worker, publish)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means failing tests or a broken chain."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from refundry import __version__

    parser = _Parser(prog="refundry", description="Refund-approval policy engine.")
    parser.add_argument("--version", action="version", version=f"refundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.func(args))
    except ErrorGroup as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"refundry: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RefundryError as exc:
        print(f"refundry: {exc}", file=sys.stderr)
        return EXIT_INVALID if exc.path else EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
