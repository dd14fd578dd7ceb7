"""Every hook a refundry plugin can implement, in one module.

A plugin is a module or object with functions marked ``@refundry.hookimpl`` whose names are the
hook names below; it is found through the ``refundry`` entry point group (see
``docs/plugins.md``). The built-in ``jsonl`` source and sink register through these same hooks.

Call them through ``refundry.plugins.Plugins`` (the typed facade), not through ``pm.hook``: the
facade calls each implementation on its own so that a failure names the plugin that raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from refundry.core.models import Decision, RefundRequest
    from refundry.plugins.types import Option, Sink, Source

NAME = "refundry"
hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


@hookspec
def refundry_sources() -> Sequence[Source]:
    """Register the sources this plugin provides.

    A source turns one input file into ``SourceRecord``s, each a record reference and either a
    canonical request dict or the reason it cannot become one; see ``refundry.plugins.Source``.

    :return: the plugin's sources; each ``name`` must be unique among all installed plugins.
    """
    raise NotImplementedError


@hookspec
def refundry_sinks() -> Sequence[Sink]:
    """Register the sinks this plugin provides.

    A sink writes each decision (with the request it was made for) in some system's format, e.g.
    a refund to create on a payment platform; see ``refundry.plugins.Sink``.

    :return: the plugin's sinks; each ``name`` must be unique among all installed plugins.
    """
    raise NotImplementedError


@hookspec
def refundry_options() -> Sequence[Option]:
    """Declare the ``--option``s this plugin's enrichers and listeners read.

    Sources and sinks declare theirs on ``Source.options`` / ``Sink.options``; this hook is for
    the rest of a plugin. ``refundry plugins`` lists them, and ``refundry run`` refuses an
    option that nothing declares (naming the nearest declared one) before it reads a record.

    :return: the plugin's ``refundry.plugins.Option``s.
    """
    raise NotImplementedError


@hookspec
def refundry_enrich_request(
    request: Mapping[str, Any], ref: str, options: Mapping[str, str]
) -> Mapping[str, Any] | None:
    """Add facts to a canonical request before it is evaluated (never during evaluation).

    Called once per request, in the runner's process, after the source produced it and before
    it is validated and evaluated. Enrichers are how history (prior refunds, velocity) reaches
    an engine that does no I/O of its own.

    :param request: the canonical request as the source (and earlier enrichers) produced it;
        read-only.
    :param ref: the record reference the source gave, e.g. ``refunds.jsonl:12``.
    :param options: the run's ``--option K=V`` pairs.
    :return: canonical fields to add, or ``None``. ``facts`` is merged key by key; any other
        field is only added when the request does not have it yet (what the source read wins,
        then the first enricher). Raising sends the request to the dead-letter output with the
        plugin named; it is never evaluated.
    """
    raise NotImplementedError


@hookspec
def refundry_decision_written(
    decision: Decision, request: RefundRequest, ref: str, sinks: Sequence[str]
) -> None:
    """Be told of a decision after every sink wrote it and the run journal recorded it.

    :param decision: the decision as the engine returned it.
    :param request: the validated request it was made for.
    :param ref: the record reference the source gave.
    :param sinks: the names of the sinks that wrote it.
    :return: nothing. Raising is reported with the plugin named and changes no output.
    """
    raise NotImplementedError


@hookspec
def refundry_dead_letter_written(ref: str, reason: str, request_id: str | None) -> None:
    """Be told of a record that went to the dead-letter output instead of being evaluated.

    :param ref: the record reference the source gave.
    :param reason: the one-line reason written to the dead-letter file.
    :param request_id: the record's ``request_id`` when it had one, else ``None``.
    :return: nothing. Raising is reported with the plugin named and changes no output.
    """
    raise NotImplementedError


@hookspec
def refundry_record_written(event: Mapping[str, Any]) -> None:
    """Be told of an approval-record event after the record store appended it.

    Only called when the runner was given a ``record`` callback (the records store) and that
    callback returned the event it appended.

    :param event: the appended event as the store returned it (JSON-safe; the request in it is
        already masked).
    :return: nothing. Raising is reported with the plugin named and changes no output.
    """
    raise NotImplementedError
