"""Everything the console reads or changes, for one signed-in identity.

Every page goes through an ``Access``: it checks the identity's roles and then calls the same
functions the HTTP API calls (``refundry.app.service.api``) or the store's queries, so there is
one logic path. Tenancy (docs/security.md) filters here, in one place: cases, the queue,
reports and kept ruleset texts through the identity's ``ScopedStore``, loaded rulesets by
their client.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs

from refundry.app import report
from refundry.app.console.impact import impact
from refundry.app.service.api import (
    ApiError,
    Service,
    dispute_case,
    find_case,
    resolve_case,
    review_case,
)
from refundry.app.service.identity import Identity
from refundry.app.tenancy import visible_rulesets
from refundry.core.errors import RefundryError
from refundry.records.access import ScopedStore
from refundry.records.events import Case, QueuePage

READ_CASES = ("reviewer", "auditor")
ACT_ON_CASES = ("reviewer",)
READ_RULES = ("analyst", "auditor")
PAGE_SIZE = 50


@attrs.frozen
class Access:
    service: Service
    identity: Identity

    def may(self, *roles: str) -> bool:
        return self.identity.has(*roles)

    @property
    def store(self) -> ScopedStore:
        return self.service.scoped(self.identity)

    def _require(self, roles: tuple[str, ...]) -> None:
        if not self.identity.has(*roles):
            raise ApiError(403, f"`{self.identity.name}` may not do this; it needs the role "
                                f"{' or '.join(f'`{r}`' for r in roles)}")

    def queue(self, *, after: int = 0, before: int | None = None, client: str | None = None,
              industry: str | None = None, request_id: str | None = None) -> QueuePage:
        self._require(READ_CASES)
        return self.store.review_queue(after=after, before=before, limit=PAGE_SIZE,
                                               client=client, industry=industry,
                                               request_id=request_id)

    def case(self, request_id: str) -> Case:
        self._require(READ_CASES)
        case: Case = find_case(self.service, request_id, self.identity)
        return case

    def explain(self, request_id: str) -> dict[str, Any] | str:
        """Every rule and the values it saw, from the ruleset texts recorded with the case; a
        one-line reason instead when the store cannot rebuild them."""
        self._require(READ_CASES)
        find_case(self.service, request_id, self.identity)
        try:
            explained: dict[str, Any] = self.store.explain(request_id).to_dict()
        except RefundryError as exc:
            return str(exc)
        return explained

    def review(self, request_id: str, verdict: str, justification: str | None) -> None:
        self._require(ACT_ON_CASES)
        review_case(self.service, self.identity, request_id, verdict, justification)

    def dispute(self, request_id: str, reason: str) -> None:
        self._require(ACT_ON_CASES)
        dispute_case(self.service, self.identity, request_id, reason)

    def resolve(self, request_id: str, resolution: str, explanation: str,
                amount: str | None) -> None:
        self._require(ACT_ON_CASES)
        resolve_case(self.service, self.identity, request_id, resolution, explanation, amount)

    def rulesets(self) -> dict[str, Any]:
        self._require(READ_RULES)
        loaded = dict(self.service.rulesets.current.to_dict())
        return {**loaded, "rulesets": visible_rulesets(self.identity, loaded["rulesets"])}

    def ruleset_versions(self) -> list[tuple[str, str, str]]:
        self._require(READ_RULES)
        return self.store.ruleset_versions()

    def ruleset_text(self, digest: str) -> tuple[str, str, str]:
        self._require(READ_RULES)
        kept = self.store.ruleset_text(digest)
        if kept is None:
            raise ApiError(404, f"no ruleset version `{digest[:80]}` is kept in the store")
        return kept

    def impact(self, old: str, new: str) -> tuple[dict[str, Any] | None, bool]:
        """``refundry diff`` of two kept versions over the recorded cases decided with ``old``;
        None for versions of two different rulesets (one cannot stand in for the other)."""
        self._require(READ_RULES)
        if self.ruleset_text(old)[0] != self.ruleset_text(new)[0]:
            return None, False
        try:
            report, more = impact(self.store, old, new)
        except RefundryError as exc:
            raise ApiError(422, str(exc)) from None
        return report.to_dict(), more

    def report(self, since: dt.date | None, until: dt.date | None,
               client: str | None) -> dict[str, Any]:
        self._require(READ_RULES)
        import json

        store = self.store
        store.ask(client, "report")  # outside its clients: recorded, and the report is empty
        figs, head = report.build(store, since=since, until=until, client=client)
        data: dict[str, Any] = json.loads(report.to_json(figs, head))
        return data
