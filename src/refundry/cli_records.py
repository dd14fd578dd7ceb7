"""The ``records``, ``review`` and ``dispute`` commands, and ``evaluate --record``.

A thin layer over ``refundry.records``: parse arguments, call the store, print. Exit codes follow
the CLI's: 2 when the chain is broken or a replay differs, 1 for a refused step or a usage
error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .models import Decision
from .records import RESOLUTIONS, STATUSES, Case, RecordError, RecordStore
from .anchors import Signer, open_anchor
from .stores import DEFAULT_PATH, open_store

EXIT_OK, EXIT_FAILED = 0, 2


def _default_db() -> str:
    return os.environ.get("REFUNDRY_DB") or DEFAULT_PATH


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, metavar="URL",
                        help=f"records store: a file path or postgresql://... (default: "
                             f"$REFUNDRY_DB or ./{DEFAULT_PATH})")


def anchoring_from_env() -> dict[str, Any]:
    """``$REFUNDRY_SIGNING_KEY`` (an Ed25519 PEM file: events are signed with it) and
    ``$REFUNDRY_ANCHOR`` (a file or postgresql:// URL: signed checkpoints are written there),
    as ``open_store`` keyword arguments; every command that writes to a store uses them."""
    out: dict[str, Any] = {}
    if os.environ.get("REFUNDRY_SIGNING_KEY"):
        out["signer"] = Signer.from_file(os.environ["REFUNDRY_SIGNING_KEY"])
    if os.environ.get("REFUNDRY_ANCHOR"):
        if "signer" not in out:
            raise RecordError("$REFUNDRY_ANCHOR needs $REFUNDRY_SIGNING_KEY to sign checkpoints")
        out["anchor"] = open_anchor(os.environ["REFUNDRY_ANCHOR"])
    return out


def _store(args: argparse.Namespace, *, create: bool = False) -> RecordStore:
    return open_store(args.db or _default_db(), create=create, **anchoring_from_env())


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _line(case: Case) -> str:
    s = case.summary()
    need = ""
    if case.status == "manual_review":
        need = f"  approvals {len(case.approvals)}/{case.required_approvals}"
    return (f"{s['request_id']}  {s['status']}  {s['amount']} {s['currency']}  "
            f"{s['events']} events  by {s['submitted_by']}{need}")


# --- evaluate --record ---------------------------------------------------------------------


def add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", action="store_true",
                        help="append the decision to the records store")
    _db_option(parser)
    parser.add_argument("--by", default=None, metavar="WHO",
                        help="who submits the request (default: the login name)")


def record_decision(args: argparse.Namespace, request: Any, decision: Decision, engine: Any) -> None:
    """Called by ``evaluate`` after printing the decision when ``--record`` is given."""
    if not args.record:
        return
    actor = args.by or getpass.getuser()
    with _store(args, create=True) as store:
        case, created = store.record(request, decision, engine=engine, actor=actor)
    if created:
        print(f"recorded: request `{case.request_id}` is {case.status}", file=sys.stderr)
    else:
        print(f"already recorded: request `{case.request_id}` is {case.status}; nothing appended",
              file=sys.stderr)


# --- records -------------------------------------------------------------------------------


def _print_cases(args: argparse.Namespace, cases: list[Any]) -> int:
    if args.json:
        _print([c.summary() for c in cases])
    else:
        for case in cases:
            print(_line(case))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        cases = store.cases(args.status)
    return _print_cases(args, cases)


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        _print(store.case(args.request_id).to_dict())
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    target = args.anchor or os.environ.get("REFUNDRY_ANCHOR")
    trusted = [k for k in (args.trusted_key or os.environ.get("REFUNDRY_TRUSTED_KEYS", "").split(","))
               if k.strip()]
    anchor = open_anchor(target) if target else None
    try:
        with open_store(args.db or _default_db(), create=False) as store:
            result = store.verify(expect_head=args.expect_head, anchor=anchor, trusted_keys=trusted)
    finally:
        if anchor is not None:
            anchor.close()
    if args.json:
        _print({**result.to_dict(), "anchor": target})
    elif result.ok:
        print(f"ok: {result.count} events, {result.texts} ruleset texts, head {result.head}")
        print(_anchor_line(result, target))
    else:
        where = f"event {result.broken_seq}: " if result.broken_seq else ""
        print(f"broken: {where}{result.problem} ({result.count} events verified before it)")
    return EXIT_OK if result.ok else EXIT_FAILED


def _anchor_line(result: Any, target: str | None) -> str:
    if target is None:
        return ("not anchored: no anchor given (--anchor or $REFUNDRY_ANCHOR), so a cut at the "
                "end or an older copy restored would not show")
    if not result.anchored:
        return f"not anchored: `{target}` holds no signed checkpoint of this store"
    return (f"anchored: the signed checkpoint of {result.anchored_count} events in `{target}` "
            f"holds; {result.count - result.anchored_count} events since")


def cmd_keygen(args: argparse.Namespace) -> int:
    signer = Signer.generate(args.path)
    print(signer.key_id)
    return EXIT_OK


def cmd_anchor(args: argparse.Namespace) -> int:
    with _store(args) as store:
        cp = store.anchor_now()
    _print(cp.to_dict() if cp is not None else None)
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _store(args) as store:
        _print(store.checkpoint().to_dict())
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if not args.output or args.output == "-":
            store.export(sys.stdout)
            return EXIT_OK
        target = Path(args.output)
        # Written beside the target and renamed: an interrupted export leaves no half file.
        fd, tmp = tempfile.mkstemp(prefix=".refundry-export-", dir=target.parent or Path("."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                count = store.export(out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    print(f"exported {count} events to {target}", file=sys.stderr)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    with _store(args) as store:
        result = store.replay(args.request_id)
    _print(result.to_dict())
    if not result.same:
        print(f"replay differs in: {', '.join(result.differences)}", file=sys.stderr)
    return EXIT_OK if result.same else EXIT_FAILED


def cmd_note(args: argparse.Namespace) -> int:
    with _store(args) as store:
        print(_line(store.note(args.request_id, args.text, actor=args.by)))
    return EXIT_OK


def cmd_mark(args: argparse.Namespace) -> int:
    with _store(args) as store:
        print(_line(store.mark(args.request_id, args.event, actor=args.by,
                               reference=args.reference)))
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    # A threshold may be set before the first decision is recorded.
    with _store(args, create=args.four_eyes_above is not None) as store:
        if args.four_eyes_above is not None:
            if not args.by:
                raise RecordError("changing a setting needs `--by WHO`")
            store.set_four_eyes_above(args.four_eyes_above, actor=args.by)
        _print({"four_eyes_above": str(store.four_eyes_above())})
    return EXIT_OK


# --- review and dispute --------------------------------------------------------------------


def cmd_review_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        cases = store.cases("manual_review")
    return _print_cases(args, cases)


def cmd_review(args: argparse.Namespace) -> int:
    with _store(args) as store:
        case = store.review(args.request_id, actor=args.by, approve=args.approve,
                            reason=args.reason)
    print(_line(case))
    return EXIT_OK


def cmd_dispute_open(args: argparse.Namespace) -> int:
    from .cli import default_rulesets
    from .engine import Engine

    engine = Engine.from_path([str(args.rulesets or default_rulesets())])
    with _store(args) as store:
        case = store.open_dispute(args.request_id, actor=args.by, reason=args.reason,
                                  engine=engine)
    _print({"request_id": case.request_id, "status": case.status, "dispute": case.dispute})
    return EXIT_OK


def cmd_dispute_resolve(args: argparse.Namespace) -> int:
    with _store(args) as store:
        case = store.resolve_dispute(args.request_id, actor=args.by, resolution=args.resolution,
                                     explanation=args.explanation, amount=args.amount)
    _print({"request_id": case.request_id, "status": case.status, "dispute": case.dispute})
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``records``, ``review`` and ``dispute`` to the ``refundry`` parser."""
    rec = sub.add_parser("records", help="the approval records: list, show, verify, export, replay")
    rsub = rec.add_subparsers(dest="records_command", metavar="ACTION", required=True)

    p = rsub.add_parser("list", help="one line per case")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = rsub.add_parser("show", help="a case: its status and every event (JSON)")
    p.add_argument("request_id", metavar="ID")
    p.set_defaults(func=cmd_show)

    p = rsub.add_parser("verify", help="recompute the hash chain; exit 2 when broken")
    p.add_argument("--expect-head", metavar="HASH",
                   help="a head from `records checkpoint`; a chain without it was truncated")
    p.add_argument("--anchor", metavar="TARGET", help="a file or postgresql:// URL holding "
                   "signed checkpoints (default: $REFUNDRY_ANCHOR); without one verify cannot "
                   "tell a cut at the end")
    p.add_argument("--trusted-key", action="append", metavar="KEY",
                   help="ed25519:... key whose checkpoints count (default: $REFUNDRY_TRUSTED_KEYS; "
                   "any key when none is given)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = rsub.add_parser("keygen", help="make an ed25519 signing key (PEM); prints its key id")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_keygen)

    p = rsub.add_parser("anchor", help="write a signed checkpoint to $REFUNDRY_ANCHOR now")
    p.set_defaults(func=cmd_anchor)

    p = rsub.add_parser("checkpoint", help="print the head hash and count to keep elsewhere")
    p.set_defaults(func=cmd_checkpoint)

    p = rsub.add_parser("export", help="every event as JSON lines")
    p.add_argument("--output", "-o", metavar="FILE", help="default: stdout")
    p.set_defaults(func=cmd_export)

    p = rsub.add_parser("replay", help="re-evaluate a decision with the exact rulesets that made it")
    p.add_argument("request_id", metavar="ID")
    p.set_defaults(func=cmd_replay)

    p = rsub.add_parser("note", help="add a note to a case")
    p.add_argument("request_id", metavar="ID")
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_note)

    p = rsub.add_parser("mark", help="record that an approved refund was processed or refunded")
    p.add_argument("request_id", metavar="ID")
    p.add_argument("event", choices=["processed", "refunded"])
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--reference", help="the payment system's reference")
    p.set_defaults(func=cmd_mark)

    p = rsub.add_parser("settings", help="show or change the store's settings")
    p.add_argument("--four-eyes-above", metavar="AMOUNT",
                   help="above this amount two different reviewers must approve")
    p.add_argument("--by", metavar="WHO")
    p.set_defaults(func=cmd_settings)

    rev = sub.add_parser("review", help="the manual-review queue (maker-checker)")
    vsub = rev.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    p = vsub.add_parser("list", help="cases waiting for review")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review_list)
    for name, approve in (("approve", True), ("deny", False)):
        p = vsub.add_parser(name, help=f"{name} a case in manual_review")
        p.add_argument("request_id", metavar="ID")
        p.add_argument("--by", required=True, metavar="WHO")
        p.add_argument("--reason", help="the justification" + ("" if approve else " (required)"))
        p.set_defaults(func=cmd_review, approve=approve)

    dis = sub.add_parser("dispute", help="open and resolve disputes on decided cases")
    dsub = dis.add_subparsers(dest="dispute_command", metavar="ACTION", required=True)
    p = dsub.add_parser("open", help="re-evaluate with today's rules and the original ones")
    p.add_argument("request_id", metavar="ID")
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--reason", required=True, help="what the customer disputes")
    p.add_argument("--rulesets", help="the rulesets in force now (default: ./rulesets or the "
                   "shipped baselines)")
    p.set_defaults(func=cmd_dispute_open)
    p = dsub.add_parser("resolve", help="uphold or overturn the decision")
    p.add_argument("request_id", metavar="ID")
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--resolution", required=True, choices=RESOLUTIONS)
    p.add_argument("--explanation", required=True, help="what the customer is told")
    p.add_argument("--amount", help="overturned: the amount to refund (default: today's "
                   "re-evaluation)")
    p.set_defaults(func=cmd_dispute_resolve)

    for parser in (*rsub.choices.values(), *vsub.choices.values(), *dsub.choices.values()):
        _db_option(parser)
