"""Is a request the one already recorded under its id?

``request_id`` is the idempotency key, and the store refuses a request whose recorded content
differs. But the history facts (``facts.history``, ``facts.anomaly``) are derived by refundry,
from the store, at the moment of deciding: the same submission decided twice at once (two API
replicas, a worker and the API, a client retrying before the first answer) can get different
ones. Those copies are the same submission, and get the case already recorded; only a
difference in what the submitter sent is a conflict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refundry.core.errors import RefundryError
from refundry.core.request import parse_request, request_to_dict
from refundry.records.events import Case, RecordStore
from refundry.records.masking import mask_request

DERIVED_FACTS = ("history", "anomaly")


def _submitted(request: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(request)
    facts = {k: v for k, v in dict(out.get("facts") or {}).items() if k not in DERIVED_FACTS}
    if facts:
        out["facts"] = facts
    else:
        out.pop("facts", None)
    return out


def recorded_as_submitted(store: RecordStore, request: Mapping[str, Any]) -> Case | None:
    """The case recorded under ``request``'s id when it holds the same submission (derived
    facts aside), else None (no case, other content, or a store that cannot be read)."""
    try:
        masked = mask_request(request_to_dict(parse_request(request)), store.salt)
        case = store.case(str(request.get("request_id", "")))
    except RefundryError:
        return None
    return case if _submitted(case.request) == _submitted(masked) else None
