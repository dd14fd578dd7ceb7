"""refundry's own source and sink, registered through the same hooks as any third party's.

``jsonl`` source: canonical requests, one JSON object per line (blank lines and lines starting
with ``#`` are skipped). ``jsonl`` sink: each decision as ``Decision.to_dict()`` plus ``ref``,
one per line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from refundry.core.models import Decision, RefundRequest
from refundry.core.request import (
    MAX_ITEMS,
    MAX_REQUEST_BYTES,
    JsonInputError,
    decode_json,
    read_lines,
)
from refundry.plugins.helpers import JsonLinesWriter, json_line
from refundry.plugins.spec import hookimpl
from refundry.plugins.types import Sink, SinkWriter, Source, SourceError, SourceRecord


def read_jsonl(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    if path.suffix == ".json":
        yield from _read_json_document(path)
        return
    try:
        fh = path.open("rb", buffering=1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    with fh:
        for number, line in read_lines(fh, MAX_REQUEST_BYTES):
            ref = f"{path.name}:{number}"
            text = line.strip()
            if not text or text.startswith(b"#"):
                continue
            yield _record(ref, text)


def _record(ref: str, text: bytes | str) -> SourceRecord:
    try:
        # Numbers with a fraction are read as Decimal, so "amount": 12.50 keeps its exact value;
        # the request parser holds a Decimal to the same limits as a string.
        data = decode_json(text)
    except JsonInputError as exc:
        where = f":{exc.line}:{exc.column}" if exc.line is not None and ":" not in ref else ""
        at = f" at column {exc.column}" if exc.column is not None and ":" in ref else ""
        return SourceRecord(ref, error=f"{ref}{where}: {exc}{at}")
    if not isinstance(data, dict):
        return SourceRecord(ref, error=f"{ref}: a request must be a json object")
    return SourceRecord(ref, request=data)


def _read_json_document(path: Path) -> Iterator[SourceRecord]:
    """A ``.json`` file: one request, or a list of them (what ``refundry evaluate`` reads)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    try:
        data = decode_json(raw, limit=MAX_REQUEST_BYTES * MAX_ITEMS)
    except JsonInputError as exc:
        where = f":{exc.line}:{exc.column}" if exc.line is not None else ""
        yield SourceRecord(path.name, error=f"{path.name}{where}: {exc}")
        return
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        ref = f"{path.name}[{i}]" if isinstance(data, list) else path.name
        if isinstance(item, dict):
            yield SourceRecord(ref, request=item)
        else:
            yield SourceRecord(ref, error=f"{ref}: a request must be a json object")


def decision_line(decision: Decision, ref: str) -> str:
    """The line the ``jsonl`` sink writes for ``decision`` (without the newline)."""
    return json_line({**decision.to_dict(), "ref": ref})


class DecisionsWriter:
    # The line alone makes the output, so it can be encoded where the decision was made (a
    # worker process of ``run --workers``) and only written here (``write_line``).
    line_for = staticmethod(decision_line)

    def __init__(self, path: Path | None) -> None:
        self._out = JsonLinesWriter(path, "request_id")

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        self._out.write_line(decision.request_id, decision_line(decision, ref))

    def write_line(self, request_id: str, line: str) -> None:
        """``decision_line(decision, ref)`` of a decision of ``request_id``, as ``write``."""
        self._out.write_line(request_id, line)

    def close(self) -> None:
        self._out.close()


def open_decisions(path: Path | None, options: Mapping[str, str]) -> SinkWriter:
    return DecisionsWriter(path)


@hookimpl
def refundry_sources() -> Sequence[Source]:
    return [Source("jsonl", read_jsonl, "canonical refund requests, one JSON object per line (or a .json file: one request "
                   "or a list)")]


@hookimpl
def refundry_sinks() -> Sequence[Sink]:
    return [Sink("jsonl", open_decisions, "every decision as JSON (Decision.to_dict() plus ref), "
                 "one per line")]
