"""A request as the API and the workers take it in: decoded once, enriched once, parsed once.

The body is read by the core's ``decode_json`` (size, UTF-8, nesting, digits, surrogates:
docs/limits.md), never by ``json.loads`` directly. History facts come from the store and
replace any the caller sent under the same names (``store_additions``, as ``refundry run --db``
does): the store is the witness of a customer's history, not the caller. The enriched request
is parsed into a ``RefundRequest`` once here and that object is what the engine evaluates and
the store records, so neither parses it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def take_many(datas: Sequence[Mapping[str, Any]],
              history: History) -> list[Intake | InvalidRequest]:
    """``take`` of each of ``datas``, their history looked up together (``facts_each``: a few
    queries for the group, where each request alone made two); an invalid request is its
    ``InvalidRequest`` in the list and the others are taken as if it were not there."""
    parsed: list[RefundRequest | InvalidRequest] = []
    for data in datas:
        try:
            parsed.append(parse_request(data))
        except InvalidRequest as exc:
            parsed.append(exc)
    facts = iter(history.facts_each([p for p in parsed if not isinstance(p, InvalidRequest)]))
    out: list[Intake | InvalidRequest] = []
    for data, request in zip(datas, parsed, strict=True):
        if isinstance(request, InvalidRequest):
            out.append(request)
            continue
        additions = store_additions(data, next(facts))
        try:
            out.append(Intake({**data, **additions}, replace_fields(request, additions)))
        except InvalidRequest as exc:
            out.append(exc)
    return out


def problems(exc: InvalidRequest) -> tuple[str, ...]:
    """Every problem of an invalid request, one line each."""
    return tuple(str(e) for e in exc.errors)
