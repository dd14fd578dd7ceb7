"""``refundry evaluate REQUEST.json``: decide one request and print the decision as JSON;
with ``--record``, enrich it from the records store and append the decision there."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Mapping
from typing import Any

from refundry.app.explain import explain_text
from refundry.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_baselines_option,
    add_db_option,
    engine_for,
    open_db,
    parse_as_of,
    print_json,
    read_json,
)
from refundry.core.engine import INVALID_REQUEST, Engine
from refundry.core.errors import RefundryError
from refundry.core.models import Decision
from refundry.core.request import parse_request
from refundry.records.masking import scrub_request


class _Store:
    """``--record``'s store, opened on first use and then once for the whole command (for the
    id tag's key, the history facts and the append); never for a request that is invalid."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store: Any = None

    def get(self) -> Any:
        if self.store is None:
            self.store = open_db(self.args, create=True)
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def cmd_evaluate(args: argparse.Namespace) -> int:
    args.request = _request_path(args)
    store = _Store(args)
    try:
        return _evaluate(args, store)
    finally:
        store.close()


def _evaluate(args: argparse.Namespace, store: _Store) -> int:
    request = _scrubbed(args, read_json(args.request), store)
    as_of = parse_as_of(args.as_of)
    request = _with_history(args, request, store)  # before evaluate, which does no I/O
    engine = engine_for(args)
    if args.explain:
        explanation = engine.explain(request, as_of=as_of)
        if args.explain == "json":
            print_json(explanation.to_dict())
        else:
            print(explain_text(explanation))
        decision = explanation.decision
    else:
        decision = engine.evaluate(request, as_of=as_of)
        print_json(decision.to_dict())
    if decision.rule_ids and decision.rule_ids[0] == INVALID_REQUEST:
        for err in decision.errors:
            print(f"{args.request}: {err}", file=sys.stderr)
        return EXIT_INVALID
    _record(args, request, decision, engine, store)
    return EXIT_OK


def _scrubbed(args: argparse.Namespace, request: Any, store: _Store) -> Any:
    """The request with card data scrubbed out before anything prints or records it (PCI DSS
    3.3/3.4). An id holding a card number is tagged with the store's key under ``--record``
    (as the store would tag it), else with a throw-away one: only this output shows it."""
    def key() -> bytes:
        return store.get().salt if args.record else secrets.token_bytes(32)

    return scrub_request(request, key)


def _with_history(args: argparse.Namespace, request: Any, store: _Store) -> Any:
    """``--record``: history facts from the store the decision goes to."""
    if not args.record or not isinstance(request, Mapping):
        return request
    try:
        parse_request(request)
    except RefundryError:
        return request  # evaluate reports it and records nothing; no store is opened for it
    from refundry.records.history import enrich

    return enrich(store.get(), request)


def _record(args: argparse.Namespace, request: Any, decision: Decision, engine: Engine,
            store: _Store) -> None:
    if not args.record:
        return
    actor = args.by or getpass.getuser()
    case, created = store.get().record(request, decision, engine=engine, actor=actor)
    if created:
        print(f"recorded: request `{case.request_id}` is {case.status}", file=sys.stderr)
    else:
        print(f"already recorded: request `{case.request_id}` is {case.status}; nothing appended",
              file=sys.stderr)


class _Explain(argparse.Action):
    """``--explain [text|json]``. Any other word after it is the request file (``evaluate
    --explain req.json`` reads as a person means it, where argparse would take the file for the
    format and then miss the request)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values not in (None, "text", "json"):
            namespace.request_after_explain = values
        setattr(namespace, self.dest, values if values in ("text", "json") else "text")


def _request_path(args: argparse.Namespace) -> str:
    after = getattr(args, "request_after_explain", None)
    if args.request is not None and after is not None:
        raise UsageError(f"--explain takes `text` or `json`, not `{after}`")
    if args.request is None and after is None:
        raise UsageError("evaluate needs a request: refundry evaluate REQUEST.json")
    return str(args.request if args.request is not None else after)


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="decide one request and print the decision as JSON")
    p.add_argument("request", metavar="REQUEST.json", nargs="?",
                   help="a canonical request; - for stdin")
    p.add_argument("--rulesets", help="a ruleset file or directory (default: ./rulesets or the "
                   "shipped baselines)")
    p.add_argument("--as-of", help="RFC 3339 time that chooses the ruleset versions in force")
    p.add_argument("--explain", nargs="?", action=_Explain, metavar="text|json",
                   help="instead of the decision: a short explanation (which rules matched, on "
                        "which values, and which nearly matched); --explain=json: every rule "
                        "and every value it saw")
    add_baselines_option(p)
    add_backend_option(p)
    p.add_argument("--record", action="store_true",
                   help="append the decision to the records store")
    add_db_option(p)
    p.add_argument("--by", default=None, metavar="WHO",
                   help="who submits the request (default: the login name)")
    p.set_defaults(func=cmd_evaluate)
