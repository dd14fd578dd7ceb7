"""What a plugin provides: sources and sinks, the records a source yields, the errors it raises.

Third-party adapters import these from ``refundry.plugins``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from refundry.core.errors import RefundryError
from refundry.core.models import Decision, RefundRequest


class PluginError(RefundryError):
    """A plugin failed to load or raised; ``plugin`` names it."""

    def __init__(self, plugin: str, message: str, **kw: Any) -> None:
        self.plugin = plugin
        super().__init__(f"plugin `{plugin}`: {message}", **kw)


class SourceError(RefundryError):
    """A source cannot run at all (a missing option, an unreadable file); not one bad record."""


# --- what plugins provide -------------------------------------------------------------------


@attrs.frozen
class SourceRecord:
    """One record a source read: ``request`` (a canonical request dict) or ``error`` (why the
    record cannot become one; it goes to the dead-letter output), never both."""

    ref: str
    request: dict[str, Any] | None = None
    error: str | None = None


ReadFn = Callable[[Path, Mapping[str, str]], Iterable[SourceRecord]]


@attrs.frozen
class Source:
    """A named reader: ``read(path, options)`` yields a ``SourceRecord`` per input record.

    ``read`` raises ``SourceError`` when it cannot start (e.g. a required option is missing);
    a record it cannot map is a ``SourceRecord`` with ``error``, never an exception.
    ``options`` documents each option the source reads (name -> one-line description).
    """

    name: str
    read: ReadFn
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    plugin: str = ""


class SinkWriter(Protocol):
    """What ``Sink.open`` returns. ``write`` must be idempotent per ``request_id``: a run that
    was killed after writing but before journalling a decision writes it again on resume."""

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None: ...

    def close(self) -> None: ...


OpenFn = Callable[[Path | None, Mapping[str, str]], SinkWriter]


@attrs.frozen
class Sink:
    """A named writer: ``open(path, options)`` (``path`` is ``--out``, ``None`` for stdout)."""

    name: str
    open: OpenFn
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    plugin: str = ""
