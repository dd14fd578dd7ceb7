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
from typing import Any

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
from refundry.records.events import Case, RecordStore
from refundry.records.stores import DEFAULT_PATH, open_store

EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INVALID = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
BACKENDS = ("compiled", "durable", "interpreted")


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
    source = paths or [str(args.rulesets or default_rulesets())]
    return Engine.from_path(source, backend=getattr(args, "backend", "compiled"))


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
    return os.environ.get("REFUNDRY_DB") or DEFAULT_PATH


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, metavar="URL",
                        help=f"records store: a file path or postgresql://... (default: "
                             f"$REFUNDRY_DB or ./{DEFAULT_PATH})")


def open_db(args: argparse.Namespace, *, create: bool = False) -> RecordStore:
    return open_store(args.db or default_db(), create=create)


def case_line(case: Case) -> str:
    s = case.summary()
    need = ""
    if case.status == "manual_review":
        need = f"  approvals {len(case.approvals)}/{case.required_approvals}"
    return (f"{s['request_id']}  {s['status']}  {s['amount']} {s['currency']}  "
            f"{s['events']} events  by {s['submitted_by']}{need}")


def print_cases(args: argparse.Namespace, cases: list[Any]) -> int:
    if args.json:
        print_json([c.summary() for c in cases])
    else:
        for case in cases:
            print(case_line(case))
    return EXIT_OK
