"""A request as the API and the workers take it in: decoded once, enriched once, parsed once.

The body is read by the core's ``decode_json`` (size, UTF-8, nesting, digits, surrogates:
docs/limits.md), never by ``json.loads`` directly. History facts come from the store and
replace any the caller sent under the same names (``store_additions``, as ``refundry run --db``
does): the store is the witness of a customer's history, not the caller. The enriched request
is parsed into a ``RefundRequest`` once here and that object is what the engine evaluates and
the store records, so neither parses it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from refundry.core.errors import InvalidRequest
from refundry.core.models import RefundRequest
from refundry.core.request import parse_request, replace_fields
from refundry.records.history import History, store_additions


@attrs.frozen
class Intake:
    """One request ready to decide: ``data`` as enriched (what the store compares a retry
    against) and ``request``, the same parsed."""

    data: dict[str, Any]
    request: RefundRequest


def take(data: Mapping[str, Any], history: History | None) -> Intake:
    """``data`` enriched from ``history`` (when given) and parsed; ``InvalidRequest`` with
    every problem when it is not a valid request."""
    # The whole request is validated before the store is asked anything, and the parsed
    # object is what the lookup reads: parsing it again there, and once more after the facts
    # were added, cost the API a full parse per request each.
    request = parse_request(data)
    if history is None:
        return Intake(dict(data), request)
    # Synced by whoever commits (the group committer, the worker's batch), not per request.
    additions = store_additions(data, history.facts(request, sync=False))
    # Only the fields the store replaced are parsed (and the whole checked) again.
    return Intake({**data, **additions}, replace_fields(request, additions))


def problems(exc: InvalidRequest) -> tuple[str, ...]:
    """Every problem of an invalid request, one line each."""
    return tuple(str(e) for e in exc.errors)
