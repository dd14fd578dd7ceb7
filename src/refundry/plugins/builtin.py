"""refundry's own source and sink, registered through the same hooks as any third party's.

``jsonl`` source: canonical requests, one JSON object per line (blank lines and lines starting
with ``#`` are skipped). ``jsonl`` sink: each decision as ``Decision.to_dict()`` plus ``ref``,
one per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from refundry.core.models import Decision, RefundRequest
from refundry.plugins.helpers import JsonLinesWriter
from refundry.plugins.spec import hookimpl
from refundry.plugins.types import Sink, SinkWriter, Source, SourceError, SourceRecord


def read_jsonl(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    if path.suffix == ".json":
        yield from _read_json_document(path)
        return
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    with fh:
        for number, line in enumerate(fh, 1):
            ref = f"{path.name}:{number}"
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                data = json.loads(text, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                yield SourceRecord(ref, error=f"{ref}: invalid json: {exc.msg.lower()} at column {exc.colno}")
                continue
            if not isinstance(data, dict):
                yield SourceRecord(ref, error=f"{ref}: a request must be a json object")
                continue
            # Numbers were read as Decimal, so "amount": 12.50 keeps its exact value; the
            # request parser accepts Decimal where it refuses floats.
            yield SourceRecord(ref, request=data)


def _read_json_document(path: Path) -> Iterator[SourceRecord]:
    """A ``.json`` file: one request, or a list of them (what ``refundry evaluate`` reads)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise SourceError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    except json.JSONDecodeError as exc:
        yield SourceRecord(path.name, error=f"{path.name}:{exc.lineno}:{exc.colno}: invalid json: {exc.msg.lower()}")
        return
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        ref = f"{path.name}[{i}]" if isinstance(data, list) else path.name
        if isinstance(item, dict):
            yield SourceRecord(ref, request=item)
        else:
            yield SourceRecord(ref, error=f"{ref}: a request must be a json object")


class DecisionsWriter:
    def __init__(self, path: Path | None) -> None:
        self._out = JsonLinesWriter(path, "request_id")

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        self._out.write({**decision.to_dict(), "ref": ref})

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
