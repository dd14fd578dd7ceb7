"""What every command shares: exit codes, `UsageError`, the default rulesets and store, the
`--db`/`--as-of`/`--backend` options, JSON in and out.

Exit codes: 0 ok, 1 usage or runtime error, 2 failing tests or a broken record chain, 3 invalid
ruleset or request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refundry.core.engine import Engine
from refundry.core.errors import RefundryError
from refundry.core.models import json_default
from refundry.core.request import (
    MAX_REQUEST_BYTES,
    MAX_YEAR,
    MIN_YEAR,
    JsonInputError,
    decode_json,
    parse_time,
    shown,
)
from refundry.core.resources import data_dir

if TYPE_CHECKING:  # the records layer loads when a command opens a store, not per one-shot
    from refundry.records.events import Case, RecordStore

EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INVALID = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
BACKENDS = ("compiled", "durable", "interpreted")
ID_HELP = ("the case: the request_id of the refund request as it was evaluated (see `refundry "
           "records list`)")


class UsageError(RefundryError):
    """A wrong argument or option: exit 1, one line, no traceback."""


def default_rulesets() -> Path:
    """``./rulesets`` when it exists, else the baselines shipped inside the package."""
    local = Path("rulesets")
    return local if local.is_dir() else data_dir("rulesets")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=json_default))


def read_json(path: str) -> Any:
    """A JSON document from a file or ``-`` (stdin), numbers with a fraction as ``Decimal``."""
    try:
        # One byte past the limit is enough to refuse; a 10 GB file is never read whole.
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_REQUEST_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    try:
        return decode_json(raw)
    except JsonInputError as exc:
        raise RefundryError(str(exc), path=path, line=exc.line, column=exc.column) from None


def write_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` all at once: into a private temp file in the same folder
    (created exclusively with a random name, so a planted ``PATH.tmp`` symlink is never written
    through), flushed to disk, then renamed over ``path``. A path that cannot be written is a
    usage error, not a traceback."""
    out = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError(f"cannot write `{out}`: {(exc.strerror or str(exc)).lower()}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(f"cannot write `{out}`: {(exc.strerror or str(exc)).lower()}") from None
    return out


def engine_for(args: argparse.Namespace, paths: Sequence[str] | None = None) -> Engine:
    """The rulesets named (``--rulesets``, default: ./rulesets or the shipped ones), with the
    baselines added under them as `validate` and `test` add them."""
    source = paths or [str(args.rulesets or default_rulesets())]
    # The default folder already holds the baselines; adding them again would only reload them.
    named = bool(paths or args.rulesets)
    return Engine.from_path(source, backend=getattr(args, "backend", "compiled"),
                            baselines=baselines_for(args) if named else None)


def add_baselines_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-baselines", action="store_true",
                        help="do not add the baselines of ./rulesets (or the shipped ones) under "
                             "the rulesets given")


def baselines_for(args: argparse.Namespace, context: str | Path | None = None) -> Path | None:
    """Where the baselines added under the rulesets given come from, or None to add none."""
    if getattr(args, "no_baselines", False):
        return None
    return Path(context) if context else default_rulesets()


def parse_as_of(text: str | None) -> dt.datetime | None:
    """``--as-of``: an RFC 3339 time with its UTC offset (a bare local time is ambiguous), read
    as a request's times are, so year 1 or 9999 is refused here and not overflowed later."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"--as-of: {exc}") from None


def parse_day(text: str | None, what: str) -> dt.date | None:
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or not MIN_YEAR <= day.year <= MAX_YEAR:
        raise UsageError(f"{what} `{shown(text)}` is not a date (YYYY-MM-DD, years {MIN_YEAR} "
                         f"to {MAX_YEAR})")
    return day


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="compiled", choices=BACKENDS)


def default_db() -> str:
    from refundry.records.stores import DEFAULT_PATH

    return os.environ.get("REFUNDRY_DB") or DEFAULT_PATH


def add_db_option(parser: argparse.ArgumentParser) -> None:
    # records.stores.DEFAULT_PATH written out: importing the stores to build a help text cost
    # every one-shot 0.15 s; tests/test_speed.py keeps the two equal.
    parser.add_argument("--db", default=None, metavar="URL",
                        help="records store: a file path or postgresql://... (default: "
                             "$REFUNDRY_DB or ./refundry.db)")


def anchoring_from_env() -> dict[str, Any]:
    """``$REFUNDRY_SIGNING_KEY`` (an Ed25519 PEM file: events are signed with it) and
    ``$REFUNDRY_ANCHOR`` (a file or postgresql:// URL: signed checkpoints are written there),
    as ``open_store`` keyword arguments; every command that writes to a store uses them."""
    from refundry.records.anchors import Signer, open_anchor

    out: dict[str, Any] = {}
    if os.environ.get("REFUNDRY_SIGNING_KEY"):
        out["signer"] = Signer.from_file(os.environ["REFUNDRY_SIGNING_KEY"])
    if os.environ.get("REFUNDRY_ANCHOR"):
        if "signer" not in out:
            raise UsageError("$REFUNDRY_ANCHOR needs $REFUNDRY_SIGNING_KEY to sign checkpoints")
        out["anchor"] = open_anchor(os.environ["REFUNDRY_ANCHOR"])
    return out


TOKENS_DEFAULT = "refundry-tokens.json"  # as `refundry serve`


def add_identity_option(parser: argparse.ArgumentParser) -> None:
    """``--as NAME``: a shared store seen as one identity of the token file, which reads and
    changes only its clients' cases (docs/security.md)."""
    parser.add_argument("--as", dest="as_name", metavar="NAME", help="act as this identity of "
                        "the token file: only its clients' cases are shown or changed, and it "
                        "is the actor")
    parser.add_argument("--tokens", metavar="FILE", help="the token file for --as (default: "
                        f"$REFUNDRY_TOKENS or ./{TOKENS_DEFAULT})")


def identity_of(args: argparse.Namespace) -> Any:
    """The identity ``--as`` names in the token file, or None without ``--as``."""
    name = getattr(args, "as_name", None)
    if not name:
        return None
    from refundry.app.tenancy import identity_named

    return identity_named(args.tokens or os.environ.get("REFUNDRY_TOKENS") or TOKENS_DEFAULT,
                          name)


def open_db(args: argparse.Namespace, *, create: bool = False) -> Any:
    """The store named by ``--db``; with ``--as NAME``, as that identity sees it (a
    ``ScopedStore``), with ``--by``, if given, required to be that name."""
    from refundry.records.stores import open_store

    store = open_store(args.db or default_db(), create=create, **anchoring_from_env())
    if not getattr(args, "as_name", None):
        return store
    from refundry.app.tenancy import scoped

    try:
        who = identity_of(args)
        by = getattr(args, "by", None)
        if by and by.strip() != who.name:
            raise UsageError(f"`--by {shown(by)}` is not `--as {shown(who.name)}`: acting as an "
                             "identity, its name is the actor")
    except RefundryError:
        store.close()
        raise
    if getattr(args, "by", "") is None:
        args.by = who.name
    return scoped(store, who)


def unscoped(store: Any) -> RecordStore:
    """The store under an identity's view, for a step the view has already allowed."""
    from refundry.records.events import RecordStore

    inner = getattr(store, "store", store)
    assert isinstance(inner, RecordStore)
    return inner


def case_line(case: Case) -> str:
    s = case.summary()
    need = ""
    if case.status == "manual_review":
        since, why = waiting(case)
        need = (f"  approvals {len(case.approvals)}/{case.required_approvals}  since {since}  "
                f"why: {'; '.join(why) or 'no reason recorded'}")
    return (f"{s['request_id']}  {s['status']}  {s['amount']} {s['currency']}  "
            f"{s['events']} events  by {s['submitted_by']}{need}")


def waiting(case: Case) -> tuple[str, list[str]]:
    """Since when a case in review has waited and why: only the engine's decision puts a case
    in review (`evaluated`), so it waits since then, for the reasons that gave the review."""
    since = next((e.at for e in case.events if e.type == "evaluated"), case.events[0].at)
    since = since.split(".")[0].rstrip("Z") + "Z"  # to the second: a queue is read by people
    why = [f"{r.get('rule_id')} ({r.get('message')})" for r in case.decision.get("reasons") or ()
           if r.get("effect") == "manual_review" or str(r.get("rule_id", "")).startswith("refundry.")]
    return since, why


def print_cases(args: argparse.Namespace, cases: list[Any]) -> int:
    if args.json:
        out = []
        for case in cases:
            item = case.summary()
            if case.status == "manual_review":
                item["waiting_since"], item["waiting_for"] = waiting(case)
            out.append(item)
        print_json(out)
    else:
        for case in cases:
            print(case_line(case))
    return EXIT_OK
