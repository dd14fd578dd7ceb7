"""``POST /v1/rulesets/diff``: what a proposed ruleset change would do, before it is released.

An analyst sends the proposed files as text and the requests to try. The proposal is loaded
beside the files in force, as ``refundry diff --with`` does (a ruleset the proposal defines is
taken from it, every other one from the files in force), and each request is decided under
the engine in force and under the proposal (``app/diffing.py``). Nothing is written to the
ruleset directory and nothing is recorded: the files live in a temporary directory for the
length of the call.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from refundry.app.diffing import diff_decisions, engine_side
from refundry.app.service.rulesets import Rulesets
from refundry.core.errors import ErrorGroup, RefundryError
from refundry.core.request import parse_time

MAX_FILES = 50
MAX_REQUESTS = 1_000
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.ya?ml$")


class ProposalError(RefundryError):
    """A proposal that cannot be compared: ``status`` 400 for its shape, 422 for its rules."""

    def __init__(self, status: int, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.errors = status, errors


def _checked(files: Mapping[str, Any], requests: Sequence[Any]) -> None:
    if not files or len(files) > MAX_FILES:
        raise ProposalError(400, f"`rulesets` must name 1 to {MAX_FILES} files")
    for name, text in files.items():
        if not _FILE_NAME.match(name):
            raise ProposalError(400, f"`{name[:100]}` is not a ruleset file name (name.yaml)")
        if not isinstance(text, str):
            raise ProposalError(400, f"`rulesets.{name}` must be the file's yaml text")
    if not 0 < len(requests) <= MAX_REQUESTS:
        raise ProposalError(400, f"`requests` must hold 1 to {MAX_REQUESTS} requests")
    if not all(isinstance(r, dict) for r in requests):
        raise ProposalError(400, "each of `requests` must be a json object (a refund request)")


def _as_of(text: Any) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return parse_time(str(text))
    except ValueError as exc:
        raise ProposalError(400, f"`as_of`: {exc}") from None


def diff_proposal(rulesets: Rulesets, files: Mapping[str, Any], requests: Sequence[Any],
                  as_of: Any = None) -> dict[str, Any]:
    """The ``refundry diff --json`` report of the rulesets in force against ``files``
    (file name -> YAML text) on ``requests``."""
    _checked(files, requests)
    when = _as_of(as_of)
    engine = rulesets.engine  # the version in force now, taken once
    with tempfile.TemporaryDirectory(prefix="refundry-proposal-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        try:
            proposed = engine_side(tmp, rulesets.paths, rulesets.backend)
        except ErrorGroup as exc:
            raise ProposalError(422, "the proposal does not validate",
                                tuple(_local(str(e), tmp) for e in exc.errors)) from None
        except RefundryError as exc:
            raise ProposalError(422, "the proposal does not validate",
                                (_local(str(exc), tmp),)) from None
    report = diff_decisions(engine, proposed, ((f"request {i + 1}", r)
                                               for i, r in enumerate(requests)), as_of=when)
    return report.to_dict()


def _local(message: str, tmp: str) -> str:
    """An error as the analyst's own file names (not the temporary directory's path)."""
    return message.replace(tmp + "/", "")
