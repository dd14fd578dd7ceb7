"""The ``refundry`` command: a thin shell over the library.

Exit codes: 0 ok, 1 usage or runtime error, 2 failing tests or a broken record chain, 3 invalid
ruleset or request. A user error prints one line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from . import cli_records, history
from .engine import INVALID_REQUEST, Engine
from .errors import ErrorGroup, RefundryError
from .models import json_default
from .resources import data_dir

EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INVALID = 0, 1, 2, 3


class UsageError(RefundryError):
    pass


def default_rulesets() -> Path:
    """``./rulesets`` when it exists, else the baselines shipped inside the package."""
    local = Path("rulesets")
    return local if local.is_dir() else data_dir("rulesets")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=json_default))


def _read_json(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise RefundryError(f"invalid json: {exc.msg.lower()}", path=path, line=exc.lineno,
                            column=exc.colno) from None


def _engine(args: argparse.Namespace, paths: Sequence[str] | None = None) -> Engine:
    source = paths or [str(args.rulesets or default_rulesets())]
    return Engine.from_path(source, backend=getattr(args, "backend", "compiled"))


def cmd_validate(args: argparse.Namespace) -> int:
    paths = list(args.paths)
    context = str(args.rulesets or default_rulesets())
    named = [Path(p) for p in paths]
    # Files named on their own still need the rulesets they extend.
    if any(p.is_file() for p in named) and Path(context).exists():
        paths.append(context)
    engine = Engine.from_path(paths)
    versions = engine.rulesets
    ids = {r.id for r in versions}
    print(f"ok: {len(ids)} ruleset{'s' if len(ids) != 1 else ''}, {len(versions)} "
          f"version{'s' if len(versions) != 1 else ''}, {len(engine.library.composites)} layered "
          "combinations")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    from .testing import run_tests

    engine = Engine.from_path(args.paths, backend=args.backend)
    report = run_tests(engine, args.paths)
    for err in report.errors:
        print(err, file=sys.stderr)
    if args.json:
        _print_json(report.to_dict())
    else:
        for result in report.results:
            if not result.passed:
                print("FAIL " + result.describe())
        if args.coverage:
            covered = report.total_rules - len(report.uncovered)
            print(f"coverage: {covered}/{report.total_rules} rules")
            for rs, rid, path, line in report.uncovered:
                print(f"not covered: {path}:{line}: `{rs}` rule `{rid}`")
        print(report.summary())
    if report.errors:
        return EXIT_INVALID
    return EXIT_OK if report.ok else EXIT_FAILED


def parse_as_of(text: str | None) -> dt.datetime | None:
    """``--as-of``: an RFC 3339 time with its UTC offset (a bare local time is ambiguous)."""
    if not text:
        return None
    try:
        as_of = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of `{text}` is not an RFC 3339 time") from None
    if as_of.tzinfo is None:
        raise UsageError(f"--as-of `{text}` needs a UTC offset")
    return as_of


def cmd_evaluate(args: argparse.Namespace) -> int:
    request = _read_json(args.request)
    as_of = parse_as_of(args.as_of)
    request = history.enrich_for_cli(args, request)  # before evaluate, which does no I/O
    engine = _engine(args)
    if args.explain:
        explanation = engine.explain(request, as_of=as_of)
        _print_json(explanation.to_dict())
        decision = explanation.decision
    else:
        decision = engine.evaluate(request, as_of=as_of)
        _print_json(decision.to_dict())
    if decision.rule_ids and decision.rule_ids[0] == INVALID_REQUEST:
        for err in decision.errors:
            print(f"{args.request}: {err}", file=sys.stderr)
        return EXIT_INVALID
    cli_records.record_decision(args, request, decision, engine)
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means failing tests or a broken chain."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refundry", description="Refund-approval policy engine.")
    parser.add_argument("--version", action="version", version=f"refundry {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check rulesets: syntax, schema and semantics")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--rulesets", help="rulesets that named files may extend (default: ./rulesets "
                   "or the shipped baselines)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("test", help="run the YAML tests next to the rules")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--coverage", action="store_true", help="list rules no test exercises")
    p.add_argument("--backend", default="compiled", choices=["compiled", "durable", "interpreted"])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("evaluate", help="decide one request and print the decision as JSON")
    p.add_argument("request", metavar="REQUEST.json", help="a canonical request; - for stdin")
    p.add_argument("--rulesets", help="a ruleset file or directory (default: ./rulesets or the "
                   "shipped baselines)")
    p.add_argument("--as-of", help="RFC 3339 time that chooses the ruleset versions in force")
    p.add_argument("--explain", action="store_true", help="show each rule and the values it saw")
    p.add_argument("--backend", default="compiled", choices=["compiled", "durable", "interpreted"])
    cli_records.add_record_options(p)
    p.set_defaults(func=cmd_evaluate)

    from .diffing import register as register_diff
    register_diff(sub)
    cli_records.register(sub)
    from . import customer, plugins, report, runner

    plugins.register(sub)
    runner.register(sub)
    customer.register(sub)
    report.register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


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
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
