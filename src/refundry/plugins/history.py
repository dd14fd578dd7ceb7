"""The built-in history enricher: history facts from the records store (``facts.history.*``,
``facts.anomaly.*``; docs/fraud.md), registered by ``refundry run --db`` through the same
``refundry_enrich_request`` hook as any third-party enricher."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refundry.plugins.manager import Plugins, make_plugin_manager
from refundry.plugins.spec import hookimpl
from refundry.records.events import RecordStore
from refundry.records.history import History, store_additions


class Enricher:
    """The history enricher as a plugin: registered by ``refundry run --db`` through the same
    ``refundry_enrich_request`` hook as any third-party enricher."""

    name = "refundry.history"

    def __init__(self, store: RecordStore) -> None:
        self.history = History(store)

    # Fields this enricher's answer replaces rather than fills in: history is what the store
    # witnessed, so a source cannot send its own facts.history or understate prior_refunds.
    replaces = ("facts", "prior_refunds")

    @hookimpl
    def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                options: Mapping[str, str]) -> Mapping[str, Any] | None:
        data = dict(request)
        return store_additions(data, self.history.facts(data)) or None


def plugins_with_history(store: RecordStore) -> Plugins:
    """The installed plugins plus the history enricher for ``store``."""
    enricher = Enricher(store)
    return Plugins(make_plugin_manager(extra=[(enricher.name, enricher)]))
