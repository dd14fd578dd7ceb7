"""The ``refundry`` command: a thin shell over the library, one module per command.

Each command module has a ``register(sub)`` that adds its parser and a ``cmd_*`` function that
parses nothing itself: it calls the library, prints, and returns the exit code (see
``refundry.cli.common``). A user error prints one line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from refundry.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, UsageError
from refundry.core.errors import ErrorGroup, RefundryError

# Each is the module refundry.cli.NAME. A one-shot `refundry evaluate` imports only its own
# module: importing every command (records stores, the runner, reports) cost it a third of its
# start-up.
COMMANDS = ("validate", "test", "evaluate", "diff", "records", "review", "dispute", "plugins", "run",
            "status", "receipt", "report", "serve", "worker", "publish")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means failing tests or a broken chain."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser(only: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    from refundry import __version__

    parser = _Parser(prog="refundry", description="Refund-approval policy engine.")
    parser.add_argument("--version", action="version", version=f"refundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in only:
        importlib.import_module(f"refundry.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser((argv[0],) if argv and argv[0] in COMMANDS else COMMANDS)
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
