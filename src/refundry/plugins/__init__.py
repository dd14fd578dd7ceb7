"""Plugins: the hooks (``spec``), what a plugin provides (``types``), helpers for adapters
(``helpers``), the manager and its typed facade (``manager``) and refundry's own built-ins
(``builtin``), registered through the same hooks as any third party's.

An adapter imports what it needs from here::

    from refundry.plugins import Sink, Source, SourceRecord, option
"""

from refundry.plugins.helpers import (
    JsonLinesWriter,
    already_executed,
    day_start,
    epoch_to_rfc3339,
    from_minor_units,
    iter_api_objects,
    iter_json_documents,
    money_text,
    option,
    record_error,
    request_defaults,
    to_minor_units,
    zone_for,
)
from refundry.plugins.manager import Plugins, make_plugin_manager
from refundry.plugins.spec import hookimpl
from refundry.plugins.types import (
    KINDS,
    ExecutedRefund,
    Option,
    PluginError,
    Sink,
    SinkWriter,
    Source,
    SourceError,
    SourceRecord,
    idempotency_key,
)

__all__ = [
    "KINDS", "ExecutedRefund", "Option", "idempotency_key",
    "JsonLinesWriter", "already_executed", "PluginError", "Plugins", "Sink", "SinkWriter", "Source", "SourceError",
    "SourceRecord", "day_start", "epoch_to_rfc3339", "from_minor_units", "hookimpl",
    "iter_api_objects", "iter_json_documents", "make_plugin_manager", "money_text", "option",
    "record_error", "request_defaults", "to_minor_units", "zone_for",
]
