"""The engine: built once from rulesets, then ``evaluate`` from any number of threads.

``evaluate`` does no I/O and keeps no state between calls: request in, ``Decision`` out. Every
failure becomes a decision too (``manual_review`` with the error), never an exception the caller
could mistake for a decision, and never ``approve``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from refundry.core import jurisdictions
from refundry.core.backends import Backend, Matcher, get_backend
from refundry.core.combine import Money, Plan, combine, deadlines_of
from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.facts import Context, FactBuilder, Zones, consumer_timezone
from refundry.core.language import All
from refundry.core.loader import CompiledRuleset, Library, load_library
from refundry.core.models import Decision, Reason, RefundRequest
from refundry.core.money import ZERO, is_currency, round_money
from refundry.core.periods import HolidayCalendars
from refundry.core.request import MAX_YEAR, MIN_YEAR, parse_request, printable_text, shown

PRIOR_REFUNDS_DISAGREE = Reason(
    rule_id="refundry.prior-refunds-disagree", effect="manual_review",
    code="prior_refunds_disagree",
    message="the request's prior_refunds differ from the refunds the records store paid on this "
            "transaction; a person must check what is left to refund",
    customer_message="Your request needs a review by our team.", citation="", ruleset="refundry")
INVALID_REQUEST = "refundry.invalid-request"
NO_RULESET = "refundry.no-ruleset"
DUPLICATE = Reason(
    rule_id="refundry.duplicate", effect="deny", code="duplicate_request",
    message="a prior refund already executed this request_id; this is a retry, not a new refund",
    customer_message="This refund has already been paid.", citation="", ruleset="refundry")
EVALUATION_ERROR = "refundry.evaluation-error"


@attrs.frozen
class RulesetInfo:
    """What ``engine.rulesets`` lists: one loaded version of one ruleset."""

    id: str
    version: str
    effective_from: dt.date
    digest: str
    path: str
    client: str | None
    industry: str | None
    jurisdictions: tuple[str, ...] | None
    extends: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version,
                "effective_from": self.effective_from.isoformat(), "digest": self.digest,
                "path": self.path, "client": self.client, "industry": self.industry,
                "jurisdictions": list(self.jurisdictions or ()), "extends": self.extends}


MAX_PLANS = 1024  # per composed ruleset; a stream of odd combinations of matches cannot grow it


@attrs.frozen
class _Prepared:
    ruleset: CompiledRuleset
    matcher: Matcher
    facts: FactBuilder
    # The combining plan of each set of matches seen, shared between threads: a plan is
    # immutable and the same whoever makes it, so a race only makes one twice.
    plans: dict[tuple[int, ...], Plan] = attrs.field(factory=dict, eq=False, repr=False)

    def plan(self, hits: list[int]) -> Plan:
        key = tuple(hits)
        found = self.plans.get(key)
        if found is None:
            rules = self.ruleset.rules
            found = Plan.of(tuple([rules[i] for i in key]))
            if len(self.plans) < MAX_PLANS:
                self.plans[key] = found
        return found


@attrs.frozen
class Explanation:
    """``--explain``: the decision and, per rule, whether it matched and the values it saw."""

    decision: Decision
    facts: dict[str, Any]
    rules: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        from refundry.core.language import jsonable

        return {"decision": self.decision.to_dict(),
                "facts": {k: jsonable(v) for k, v in sorted(self.facts.items())},
                "rules": self.rules}


def _error_decision(request_id: str, currency: str, rule_id: str, code: str, message: str,
                    errors: Iterable[str], as_of: dt.datetime | None) -> Decision:
    reason = Reason(rule_id=rule_id, effect="manual_review", code=code, message=message,
                    customer_message="Your request needs a review by our team.", citation="",
                    ruleset="refundry")
    amount = round_money(ZERO, currency) if is_currency(currency) else ZERO
    return Decision(outcome="manual_review", amount=amount, currency=currency,
                    request_id=request_id, as_of=as_of, reasons=(reason,),
                    errors=tuple(errors))


def _id_and_currency(request: object) -> tuple[str, str]:
    """What an error decision can safely say of a request that did not parse."""
    try:
        rid = request.get("request_id") if isinstance(request, Mapping) else None
        cur = request.get("currency") if isinstance(request, Mapping) else None
    except Exception:  # noqa: BLE001 - a caller's mapping may raise on get
        rid = cur = None
    return printable_text(rid) or "", cur if isinstance(cur, str) and is_currency(cur) else "XXX"


def _prior_refunds_disputed(req: RefundRequest) -> bool:
    """The records store's history enricher found that the request's ``prior_refunds`` differ
    from what the store paid (docs/fraud.md); an approval then waits for a person."""
    if req.facts is None:  # the usual request: no ABC isinstance check on the way
        return False
    history = req.facts.get("history") if isinstance(req.facts, Mapping) else None
    return isinstance(history, Mapping) and history.get("prior_refunds_disagree") is True


def _as_of(value: dt.datetime | str | None) -> tuple[dt.datetime | None, str | None]:
    """``as_of`` as an aware datetime, from a datetime or an RFC 3339 string (as `--as-of`)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        text = value
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            return None, f"`{shown(text, 60)}` is not an RFC 3339 time"
    if not isinstance(value, dt.datetime) or value.utcoffset() is None:
        return None, "needs a UTC offset"
    if not MIN_YEAR <= value.year <= MAX_YEAR:  # date arithmetic would overflow near year 1/9999
        return None, f"is outside the years {MIN_YEAR} to {MAX_YEAR}"
    return value, None


class Engine:
    """Evaluates refund requests against loaded rulesets.

    Build it with ``Engine.from_path``; it is immutable afterwards and safe to share between
    threads. ``backend`` is ``compiled`` (default) or ``durable``.
    """

    def __init__(self, library: Library, *, backend: str | Backend = "compiled") -> None:
        self._library = library
        self._backend = get_backend(backend) if isinstance(backend, str) else backend
        self._holidays = HolidayCalendars()
        self._zones = Zones()
        self._prepared: dict[str, _Prepared] = {}
        for composite in library.composites.values():
            self._prepared[composite.ref.digest] = _Prepared(
                composite, self._backend.compile(composite),
                FactBuilder(composite, self._holidays, self._zones))
        self._resolved: dict[tuple[Any, ...], _Prepared | None] = {}
        self._resolve_lock = threading.Lock()
        self._clients = frozenset(
            c.client for c in library.composites.values() if c.client is not None)
        self._epochs = sorted({d.effective_from for v in library.versions.values() for d in v})

    @classmethod
    def from_path(cls, path: str | Path | Iterable[str | Path], *, backend: str = "compiled",
                  baselines: str | Path | None = None) -> Engine:
        """Load every ruleset under ``path`` (a file, a directory, or several).

        ``baselines``: a folder whose baselines are added under the rulesets given (a client
        layer extends them); those given win by id and by scope.
        Raises ``InvalidRulesets`` listing every problem, each with file, line and column.
        """
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        return cls(load_library(paths, baselines=baselines), backend=backend)

    @property
    def backend(self) -> str:
        return self._backend.name

    def close(self) -> None:
        """Free what the backend holds outside Python (the durable engine's rulesets), e.g.
        after swapping in an engine with new ruleset versions. With such a backend, later calls
        to ``evaluate`` return an error decision (``manual_review``)."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()

    @property
    def rulesets(self) -> list[RulesetInfo]:
        out = []
        for rid in sorted(self._library.versions):
            for doc in self._library.versions[rid]:
                ext = None
                if doc.extends:
                    ext = doc.extends[0] + (f"@{doc.extends[1]}" if doc.extends[1] else "")
                out.append(RulesetInfo(doc.id, doc.version, doc.effective_from, doc.digest,
                                       doc.path, doc.client, doc.industry, doc.jurisdictions, ext))
        return out

    @property
    def library(self) -> Library:
        return self._library

    # --- resolution ----------------------------------------------------------------------

    def _resolve(self, req: RefundRequest, day: dt.date, ruleset: str | None) -> _Prepared | None:
        if ruleset is not None:
            return self._forced(req, day, ruleset)
        epoch = bisect.bisect_right(self._epochs, day)
        client = req.client_id if req.client_id in self._clients else None
        key = (client, req.industry, req.jurisdiction, epoch)
        if key in self._resolved:
            return self._resolved[key]
        comp = self._library.resolve(client, req.industry, req.jurisdiction, day)
        found = self._prepare(comp) if comp is not None else None
        with self._resolve_lock:
            self._resolved[key] = found
        return found

    def _forced(self, req: RefundRequest, day: dt.date, ruleset: str) -> _Prepared | None:
        """One named ruleset (``refundry test``): a client's lands on the law of the request's
        place, as in production; a baseline is taken with the layers it extends only."""
        doc = self._library.in_force(ruleset, day)
        comp = self._library.chain(doc, day) if doc else None
        if comp is None:
            return None
        if comp.client is not None and any(
                jurisdictions.matches(s, req.jurisdiction) for s in comp.jurisdictions):
            layers = self._library.overlay_layers(comp, req.industry, req.jurisdiction, day)
            comp = self._library.resolve_layers(layers, req.jurisdiction)
        return self._prepare(comp)

    def _prepare(self, comp: CompiledRuleset) -> _Prepared:
        found = self._prepared.get(comp.ref.digest)
        if found is None:  # a stack no load-time check composed (a rare jurisdiction)
            found = _Prepared(comp, self._backend.compile(comp),
                              FactBuilder(comp, self._holidays, self._zones))
            with self._resolve_lock:
                found = self._prepared.setdefault(comp.ref.digest, found)
        return found

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, request: Mapping[str, Any] | RefundRequest, *,
                 as_of: dt.datetime | str | None = None, ruleset: str | None = None) -> Decision:
        """Decide one request. ``as_of`` (default: the request's ``requested_at``) chooses the
        ruleset versions in force: an aware ``datetime`` or an RFC 3339 string with its UTC
        offset (``"2024-08-05T10:00:00-07:00"``); without an offset, or unparseable, the
        decision is an invalid-request review. ``ruleset`` forces one ruleset id instead of
        resolution."""
        return self._evaluate(request, as_of, ruleset, explain=False)[0]

    def explain(self, request: Mapping[str, Any] | RefundRequest, *,
                as_of: dt.datetime | str | None = None, ruleset: str | None = None) -> Explanation:
        decision, facts, rules = self._evaluate(request, as_of, ruleset, explain=True)
        return Explanation(decision, facts, rules)

    def evaluate_many(self, requests: Iterable[Mapping[str, Any] | RefundRequest], *,
                      as_of: dt.datetime | str | None = None) -> Iterator[Decision]:
        """Decide each request in turn; a bad one yields its error decision and the rest go on."""
        for request in requests:
            yield self.evaluate(request, as_of=as_of)

    def _evaluate(self, request: Mapping[str, Any] | RefundRequest, as_of: dt.datetime | str | None,
                  ruleset: str | None, *, explain: bool) -> tuple[Decision, dict[str, Any], list[dict[str, Any]]]:
        as_of, problem = _as_of(as_of)
        try:
            req = parse_request(request)
        except Exception as exc:  # noqa: BLE001 - InvalidRequest, or a caller's odd mapping
            errors = [str(e) for e in exc.errors] if isinstance(exc, InvalidRequest) else [
                f"the request could not be read: {type(exc).__name__}"]
            return _error_decision(
                *_id_and_currency(request), INVALID_REQUEST, "invalid_request",
                "the request is not valid; nothing was evaluated", errors, as_of), {}, []
        if problem:
            return _error_decision(req.request_id, req.currency, INVALID_REQUEST, "invalid_request",
                                   f"as_of {problem}", [f"as_of: {problem}"], None), {}, []
        when = as_of or req.requested_at
        try:
            return self._decide(req, when, ruleset, explain)
        except Exception as exc:  # noqa: BLE001 - fail closed: any failure is a manual review
            message = str(exc) if isinstance(exc, RefundryError) else f"{type(exc).__name__}: {exc}"
            return _error_decision(req.request_id, req.currency, EVALUATION_ERROR,
                                   "evaluation_error", "the rules could not be evaluated",
                                   [" ".join(message.split())[:500]], when), {}, []

    def _decide(self, req: RefundRequest, when: dt.datetime, ruleset: str | None,
                explain: bool) -> tuple[Decision, dict[str, Any], list[dict[str, Any]]]:
        tz = self._zones.get(consumer_timezone(req))
        day = when.astimezone(tz).date()
        prepared = self._resolve(req, day, ruleset)
        if prepared is None:
            what = f"ruleset `{ruleset}`" if ruleset else (
                f"ruleset for client `{req.client_id}`, {req.industry} in `{req.jurisdiction}`")
            return _error_decision(req.request_id, req.currency, NO_RULESET, "no_ruleset",
                                   f"no {what} is in force on {day.isoformat()}",
                                   [f"no {what} in force on {day.isoformat()}"], when), {}, []
        comp = prepared.ruleset
        if req.prior_refunds and any(p.request_id == req.request_id for p in req.prior_refunds):
            # An engine invariant before any rule: paying a retry would pay the refund twice.
            return Decision(outcome="deny", amount=round_money(ZERO, req.currency),
                            currency=req.currency, request_id=req.request_id, as_of=when,
                            reasons=(DUPLICATE,), ruleset=comp.ref), {}, []
        builder = prepared.facts
        ctx: Context = builder.context(req, tz)
        facts, items = builder.build(req, ctx)
        plan = prepared.plan(prepared.matcher(facts, items))
        refundable = facts.get("transaction.refundable")
        if refundable is None:
            refundable = req.transaction.amount - sum((p.amount for p in req.prior_refunds), ZERO)
        got = combine(req, plan, facts, items, Money.of(req, refundable), ctx, builder)
        outcome, synthetic = got.outcome, got.synthetic
        if outcome == "approve" and _prior_refunds_disputed(req):
            outcome, synthetic = "manual_review", (*synthetic, PRIOR_REFUNDS_DISAGREE)
        decision = Decision(
            outcome=outcome, amount=got.amount, currency=req.currency,
            request_id=req.request_id, as_of=when, reasons=plan.reasons + synthetic,
            deadlines=deadlines_of(plan.dated, facts, ctx, builder), ruleset=comp.ref,
            lines=got.lines, actions=got.actions)
        trace: list[dict[str, Any]] = []
        if explain:
            for rule in comp.rules:
                entry = {"rule_id": rule.id, "effect": rule.effect, "floor": rule.floor,
                         "layer": rule.layer, "matched": rule.id in decision.rule_ids}
                if rule.lines is not None and isinstance(rule.when, All):
                    # `lines:` is folded into the condition at load; show the two apart
                    entry["when"] = rule.when.children[0].explain(facts, items)
                    entry["lines"] = rule.when.children[1].explain(facts, items)
                else:
                    entry["when"] = rule.when.explain(facts, items)
                trace.append(entry)
        return decision, facts, trace

