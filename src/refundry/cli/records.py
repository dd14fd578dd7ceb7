"""``refundry records list|show|verify|checkpoint|export|replay|note|mark|settings``.

Exit codes: 2 when the chain is broken or a replay differs, 1 for a refused step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from refundry.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    ID_HELP,
    add_db_option,
    add_identity_option,
    case_line,
    default_db,
    open_db,
    print_cases,
    print_json,
)
from refundry.records.anchors import Signer, open_anchor
from refundry.records.events import STATUSES, RecordError
from refundry.records.stores import open_store


def cmd_list(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        cases = store.cases(args.status)
    return print_cases(args, cases)


def cmd_show(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        print_json(store.case(args.request_id).to_dict())
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    target = args.anchor or os.environ.get("REFUNDRY_ANCHOR")
    trusted = [k for k in (args.trusted_key or os.environ.get("REFUNDRY_TRUSTED_KEYS", "").split(","))
               if k.strip()]
    anchor = open_anchor(target) if target else None
    try:
        with open_store(args.db or default_db(), create=False) as store:
            result = store.verify(expect_head=args.expect_head, anchor=anchor, trusted_keys=trusted,
                                  workers=args.workers)
    finally:
        if anchor is not None:
            anchor.close()
    if args.json:
        print_json({**result.to_dict(), "anchor": target})
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
    with open_db(args) as store:
        cp = store.anchor_now()
    print_json(cp.to_dict() if cp is not None else None)
    return EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        print_json(store.checkpoint().to_dict())
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    with open_db(args) as store:
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
    with open_db(args) as store:
        result = store.replay(args.request_id)
    print_json(result.to_dict())
    if not result.same:
        print(f"replay differs in: {', '.join(result.differences)}", file=sys.stderr)
    return EXIT_OK if result.same else EXIT_FAILED


def cmd_note(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        print(case_line(store.note(args.request_id, args.text, actor=args.by)))
    return EXIT_OK


def cmd_mark(args: argparse.Namespace) -> int:
    with open_db(args) as store:
        print(case_line(store.mark(args.request_id, args.event, actor=args.by,
                                   reference=args.reference)))
    return EXIT_OK


def cmd_settings(args: argparse.Namespace) -> int:
    # A threshold may be set before the first decision is recorded.
    with open_db(args, create=args.four_eyes_above is not None) as store:
        if args.four_eyes_above is not None:
            if not args.by:
                raise RecordError("changing a setting needs `--by WHO`")
            store.set_four_eyes_above(args.four_eyes_above, actor=args.by)
        print_json({"four_eyes_above": str(store.four_eyes_above())})
    return EXIT_OK


def register(sub: Any) -> None:
    rec = sub.add_parser("records", help="the approval records: list, show, verify, export, replay")
    rsub = rec.add_subparsers(dest="records_command", metavar="ACTION", required=True)

    p = rsub.add_parser("list", help="one line per case")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = rsub.add_parser("show", help="a case: its status and every event (JSON)")
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.set_defaults(func=cmd_show)
    _register_audit(rsub)
    _register_steps(rsub)
    for name, parser in rsub.choices.items():
        add_db_option(parser)
        if name in ("list", "show", "export", "replay", "note", "mark", "settings", "checkpoint"):
            add_identity_option(parser)


def _register_audit(rsub: Any) -> None:
    """The actions that check, sign and copy out the chain."""
    p = rsub.add_parser("verify", help="recompute the hash chain; exit 2 when broken")
    p.add_argument("--expect-head", metavar="HASH",
                   help="a head from `records checkpoint`; a chain without it was truncated")
    p.add_argument("--anchor", metavar="TARGET", help="a file or postgresql:// URL holding "
                   "signed checkpoints (default: $REFUNDRY_ANCHOR); without one verify cannot "
                   "tell a cut at the end")
    p.add_argument("--trusted-key", action="append", metavar="KEY",
                   help="ed25519:... key whose checkpoints count (default: $REFUNDRY_TRUSTED_KEYS; "
                   "any key when none is given)")
    p.add_argument("--workers", type=int, metavar="N", help="processes that read and check "
                   "the events, range by range, while this one joins the ranges (default: one "
                   "per idle core for 20,000 events or more; 1: none); the answer is the same")
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
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.set_defaults(func=cmd_replay)


def _register_steps(rsub: Any) -> None:
    """The actions that append to a case or change the store's settings."""
    p = rsub.add_parser("note", help="add a note to a case")
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_note)

    p = rsub.add_parser("mark", help="record that an approved refund was processed or refunded")
    p.add_argument("request_id", metavar="ID", help=ID_HELP)
    p.add_argument("event", choices=["processed", "refunded"])
    p.add_argument("--by", required=True, metavar="WHO")
    p.add_argument("--reference", help="the payment system's reference")
    p.set_defaults(func=cmd_mark)

    p = rsub.add_parser("settings", help="show or change the store's settings")
    p.add_argument("--four-eyes-above", metavar="AMOUNT",
                   help="above this amount two different reviewers must approve")
    p.add_argument("--by", metavar="WHO")
    p.set_defaults(func=cmd_settings)
