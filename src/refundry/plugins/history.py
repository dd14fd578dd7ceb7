"""The built-in history enricher: history facts from the records store (``facts.history.*``,
``facts.anomaly.*``; docs/fraud.md), registered by ``refundry run --db`` through the same
``refundry_enrich_request`` hook as any third-party enricher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refundry.plugins.manager import Plugins, make_plugin_manager
from refundry.plugins.spec import hookimpl
from refundry.records.events import RecordStore
from refundry.records.history import History, store_additions


class Enricher:
    """The history enricher as a plugin: registered by ``refundry run --db`` through the same
    ``refundry_enrich_request`` hook as any third-party enricher."""

    name = "refundry.history"

    def __init__(self, store: RecordStore, history: History | None = None) -> None:
        self.history = history or History(store)
        # request_id -> (the request as it was looked up, its facts), from ``prefetch``
        self._ready: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {}

    # Fields this enricher's answer replaces rather than fills in: history is what the store
    # witnessed, so a source cannot send its own facts.history or understate prior_refunds.
    replaces = ("facts", "prior_refunds")

    @hookimpl
    def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                options: Mapping[str, str]) -> Mapping[str, Any] | None:
        data = dict(request)
        rid = data.get("request_id")
        ready = self._ready.pop(rid, None) if isinstance(rid, str) else None
        # A prefetched answer only for the very request it was looked up for. (A request
        # without one is looked up now, as of what is recorded; with a group still in flight
        # (``prefetch(ahead=True)``) that is only a request with no request id of its own,
        # which does not parse, so has no facts either.)
        facts = ready[1] if ready is not None and ready[0] == data else self.history.facts(data)
        return store_additions(data, facts) or None

    # ``prefetch`` can look a group up while the one it last answered is still being decided
    # (``Plugins.prefetch(..., ahead=True)``).
    looks_ahead = True

    def prefetch(self, requests: Sequence[Mapping[str, Any]], *, ahead: bool = False) -> int:
        """Look up the facts of a prefix of ``requests`` together (``History.facts_many``),
        for the hook to answer from; returns its length. Each answer holds only while the
        requests before it in the prefix are all that is recorded meanwhile. ``ahead``: the
        requests of the previous call may not be recorded yet (the prefix may be empty)."""
        self._ready.clear()
        answers = self.history.facts_many(requests, ahead=ahead)
        for request, facts in zip(requests, answers, strict=False):
            rid = request.get("request_id")
            if isinstance(rid, str):
                self._ready[rid] = (dict(request), facts)
        return len(answers)


def plugins_with_history(store: RecordStore, history: History | None = None) -> Plugins:
    """The installed plugins plus the history enricher for ``store`` (looking up through
    ``history``, one of ``store``'s, when given: the one that indexes the run's records, so
    the pseudonyms it made for a lookup are at hand when the request is indexed)."""
    enricher = Enricher(store, history)
    return Plugins(make_plugin_manager(extra=[(enricher.name, enricher)]))
