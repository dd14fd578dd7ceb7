"""The impact of a ruleset change on recorded requests: ``refundry diff`` over the store.

Each recorded case decided with the old version is decided again twice, from the ruleset texts
the store kept: once with the layers it was decided with, once with the old version swapped
for the new one, at the time it was decided. The diff library (``diff_decisions``) compares
the two and groups what changed with counts and the request ids behind each.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from typing import Any

from refundry.app.diffing import DiffReport, diff_decisions
from refundry.records.access import ScopedStore
from refundry.records.events import Case, RecordStore

LIMIT = 2_000  # recorded cases read per comparison; the page says when there were more


def _merge(into: DiffReport, part: DiffReport) -> None:
    into.requests += part.requests
    into.changed += part.changed
    for kind, ids in part.by_change.items():
        into.by_change.setdefault(kind, []).extend(ids)
    into.details.update(part.details)


def impact(store: RecordStore | ScopedStore, old: str, new: str, limit: int = LIMIT) -> tuple[DiffReport, bool]:
    """What swapping ruleset text ``old`` for ``new`` changes on the cases decided with ``old``;
    and whether more than ``limit`` cases were decided with it."""
    cases = store.cases_decided_with(old, limit + 1)
    report = DiffReport()
    groups: dict[tuple[str, ...], list[Case]] = {}
    for case in cases[:limit]:
        layers = tuple(layer["digest"] for layer in
                       (case.decision.get("ruleset") or {}).get("layers") or ())
        groups.setdefault(layers, []).append(case)
    with ExitStack() as stack:
        for layers, members in groups.items():
            before = stack.enter_context(store.kept_engine(layers))
            after = stack.enter_context(store.kept_engine(
                [new if d == old else d for d in layers]))
            for case in members:
                _merge(report, diff_decisions(before, after, [(case.request_id, case.request)],
                                              as_of=_as_of(case),
                                              ruleset=_ruleset_id(case)))
    return report, len(cases) > limit


def _as_of(case: Case) -> dt.datetime | None:
    text = case.decision.get("as_of")
    return dt.datetime.fromisoformat(text) if text else None


def _ruleset_id(case: Case) -> Any:
    return (case.decision.get("ruleset") or {}).get("id")
