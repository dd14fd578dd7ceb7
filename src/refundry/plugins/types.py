"""What a plugin provides: sources and sinks, the records a source yields, the errors it raises.

Third-party adapters import these from ``refundry.plugins``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
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


KINDS = ("request", "executed", "context", "broken")
"""The four kinds of source record, in the order the run summary counts them."""


@attrs.frozen
class ExecutedRefund:
    """Money that has already moved back (a Shopify refund with a successful transaction, a
    Stripe refund, a received pacs.004): history, never a new decision.

    ``case`` is the refundry ``request_id`` the refund belongs to when the payload names it
    (the idempotency key a sink wrote, e.g. Stripe ``metadata.refundry_request_id``); it is
    then also the ``request_id`` of the ``prior_refunds`` entry, so the engine denies that
    request as a duplicate if it is ever submitted again.
    """

    refund_id: str
    transaction_id: str
    amount: str
    currency: str
    refunded_at: str | None = None
    case: str | None = None

    def prior_refund(self) -> dict[str, Any]:
        """This refund as a ``prior_refunds`` entry of its transaction."""
        out: dict[str, Any] = {"amount": self.amount, "request_id": self.case or self.refund_id}
        if self.refunded_at:
            out["refunded_at"] = self.refunded_at
        return out


def _single_line(error: str | None) -> str | None:
    """A dead letter's reason is one line whatever the payload put in it: a control or line
    separator character (a `\\n` currency, a U+2028 in a name) is shown escaped, not obeyed."""
    if error is None or error.isprintable():
        return error
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                   for c in error)


def _one_kind(inst: SourceRecord, _attr: Any, _value: Any) -> None:
    given = [k for k, v in (("request", inst.request), ("executed", inst.executed),
                            ("context", inst.context), ("error", inst.error)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"a source record is one kind, not {' and '.join(given)}")


@attrs.frozen
class SourceRecord:
    """One object a source read, and what it is, exactly one of:

    - ``request``: a canonical request dict to decide;
    - ``executed``: an ``ExecutedRefund`` (history: a ``prior_refunds`` entry of its
      transaction and an event on its case, never a new decision);
    - ``context``: a one-line description of an object used to enrich others (a charge, an
      order, a pacs.008): counted, not a dead letter;
    - ``error``: why the object cannot become any of these (a dead letter, with that reason).

    ``state`` is the object's own state when it can change (a dispute's ``status``): a later
    state of an object already decided updates its case instead of being dropped as a
    duplicate.
    """

    ref: str
    request: dict[str, Any] | None = None
    error: str | None = attrs.field(default=None, converter=_single_line, validator=_one_kind)
    executed: ExecutedRefund | None = None
    context: str | None = None
    state: str | None = None

    @property
    def kind(self) -> str:
        if self.request is not None:
            return "request"
        if self.executed is not None:
            return "executed"
        if self.context is not None:
            return "context"
        return "broken"


OPTION_TYPES = ("text", "bool", "int", "decimal", "path", "time")


@attrs.frozen
class Option:
    """An option a source, sink or enricher reads from ``--option NAME=VALUE``.

    ``type`` is one of ``OPTION_TYPES``; the value is checked before the run starts (the
    plugin still receives text). ``default`` is what the plugin uses when the option is not
    given (``None``: nothing); ``required`` options stop the run when missing.
    """

    name: str
    type: str = attrs.field(default="text", validator=attrs.validators.in_(OPTION_TYPES))
    default: str | None = None
    help: str = ""
    required: bool = False

    def check(self, value: str) -> str | None:
        """Why ``value`` is not of this option's type, or ``None``."""
        text = value.strip()
        if self.type == "bool" and text.lower() not in ("true", "false"):
            return f"option `{self.name}`: `{value}` is not `true` or `false`"
        if self.type == "int" and not text.lstrip("-").isdigit():
            return f"option `{self.name}`: `{value}` is not a whole number"
        if self.type == "decimal":
            try:
                if not Decimal(text).is_finite():
                    raise ArithmeticError
            except ArithmeticError:
                return f"option `{self.name}`: `{value}` is not a decimal number"
        if self.type == "time":
            try:
                stamp = dt.datetime.fromisoformat(text)
            except ValueError:
                stamp = None
            if stamp is None or stamp.tzinfo is None:
                return f"option `{self.name}`: `{value}` is not an rfc 3339 time with an offset"
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default,
                "required": self.required, "help": self.help}


def as_options(value: Mapping[str, str] | Iterable[Option] | None) -> tuple[Option, ...]:
    """Typed options from either form a plugin may give: ``Option``s, or the older mapping of
    name -> one-line help (text options; help starting with ``required`` marks them required)."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        return tuple(Option(name, help=str(text), required=str(text).startswith("required"))
                     for name, text in value.items())
    out = tuple(value)
    for item in out:
        if not isinstance(item, Option):
            raise TypeError(f"an option must be a refundry.plugins.Option, not {type(item).__name__}")
    return out


ReadFn = Callable[[Path, Mapping[str, str]], Iterable[SourceRecord]]


@attrs.frozen
class Source:
    """A named reader: ``read(path, options)`` yields a ``SourceRecord`` per input record.

    ``read`` raises ``SourceError`` when it cannot start (e.g. a required option is missing);
    a record it cannot map is a ``SourceRecord`` with ``error``, never an exception.
    ``options`` declares each option the source reads (``Option``s; a mapping of name ->
    help is accepted too). ``history=True``: the source yields executed refunds and can read its
    input twice (files, not a queue): the runner then reads it once more, first, so that an
    executed refund is history of every request of its transaction wherever it stands in the
    input; without it, only of the requests after it.
    """

    name: str
    read: ReadFn
    description: str = ""
    options: tuple[Option, ...] = attrs.field(default=(), converter=as_options)
    plugin: str = ""
    history: bool = False


class SinkWriter(Protocol):
    """What ``Sink.open`` returns. ``write`` must be idempotent per ``request_id``: a run that
    was killed after writing but before journalling a decision writes it again on resume.
    Every instruction it writes carries ``idempotency_key(request)`` (the case id), so a
    platform that receives it twice creates one refund. A sink that delivers returns the id
    of the refund the platform made (``refundry run --db`` records it on the case as
    ``processed``); any other sink returns ``None``.

    A writer whose output is a line made from the decision and ``ref`` alone may also have
    ``line_for`` (a module-level function of (decision, ref), so it pickles by name) and
    ``write_line(request_id, line)``, which writes such a line as ``write`` would: with
    ``refundry run --workers N`` the worker processes make the lines, and the request object
    is not sent back to the parent for such a sink (the built-in ``jsonl`` sink does this)."""

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> str | None: ...

    def close(self) -> None: ...


OpenFn = Callable[[Path | None, Mapping[str, str]], SinkWriter]


@attrs.frozen
class Sink:
    """A named writer: ``open(path, options)`` (``path`` is ``--out``, ``None`` for stdout).

    ``output`` is ``"file"`` (one file, e.g. JSON lines) or ``"dir"`` (a file per record in
    the directory ``path``): with ``refundry run --out DIR`` it writes ``DIR/NAME.jsonl`` or
    ``DIR/NAME/``.
    """

    name: str
    open: OpenFn
    description: str = ""
    options: tuple[Option, ...] = attrs.field(default=(), converter=as_options)
    plugin: str = ""
    output: str = attrs.field(default="file", validator=attrs.validators.in_(("file", "dir")))


def idempotency_key(request_id: str) -> str:
    """The idempotency key of every instruction written for a case: ``refundry-`` and the
    case's ``request_id`` (Stripe's ``Idempotency-Key`` header, Shopify's and ISO's reference
    fields). The same case always gets the same key, on every run and every retry."""
    return f"refundry-{request_id}"
