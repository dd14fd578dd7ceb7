"""The combining rule: from the rules that matched to one outcome, amount and set of deadlines.

1. Every matching rule is reported, in ruleset order.
2. If a statutory floor rule matched, the floor rules decide: the strictest of their effects
   (deny > manual_review > approve). A non-floor ``manual_review`` or ``deny`` can hold a floor
   approval for a person to look at (the outcome becomes ``manual_review``), never deny it.
3. Otherwise the strictest effect of the matching rules wins: deny > manual_review > approve.
4. No rule with an outcome matched: ``manual_review`` (``no_rule_matched``). Never approve.
5. Amount: the requested amount, minus every ``deduct`` and ``deduct_percent`` (a percentage of
   the requested amount), then at most every ``cap``, never below zero, never above what is
   left of the transaction after prior refunds; rounded once, half-up, to the currency's minor
   unit. Under a floor outcome, non-floor adjustments cannot lower the amount below what the
   floor rules alone give. A denial refunds nothing.
6. Deadlines: one per name. Business obligations (``refund_due_by``, ...) take the earliest date
   any matching rule gives; ``period_ends`` (the consumer's last day) takes the latest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from refundry.core.facts import Context, FactBuilder
from refundry.core.loader import Rule
from refundry.core.models import Deadline, Reason
from refundry.core.money import ZERO, round_money

STRICTNESS = {"approve": 0, "manual_review": 1, "deny": 2}

NO_RULE_MATCHED = Reason(
    rule_id="refundry.no-rule-matched", effect="manual_review", code="no_rule_matched",
    message="no rule with an outcome matched this request; a person must decide",
    customer_message="Your request needs a review by our team.", citation="", floor=False,
    ruleset="refundry")
FLOOR_HELD = Reason(
    rule_id="refundry.floor-held", effect="manual_review", code="floor_held_for_review",
    message="a statutory floor grants this refund but a client rule objects; a person must "
            "review it and may not deny the statutory right",
    customer_message="Your request needs a review by our team.", citation="", floor=False,
    ruleset="refundry")


def outcome_of(matched: Sequence[Rule]) -> tuple[str, tuple[Reason, ...], bool]:
    """The outcome, the synthetic reasons to add, and whether floor rules decided it."""
    floor = [r.effect for r in matched if r.floor and r.effect in STRICTNESS]
    other = [r.effect for r in matched if not r.floor and r.effect in STRICTNESS]
    if floor:
        outcome = max(floor, key=STRICTNESS.__getitem__)
        if outcome == "approve" and other and max(STRICTNESS[e] for e in other) > 0:
            return "manual_review", (FLOOR_HELD,), True
        return outcome, (), True
    if other:
        return max(other, key=STRICTNESS.__getitem__), (), False
    return "manual_review", (NO_RULE_MATCHED,), False


def _adjust(requested: Decimal, rules: Sequence[Rule], facts: Mapping[str, Any]) -> Decimal:
    amount = requested
    caps: list[Decimal] = []
    for rule in rules:
        for adj in rule.adjustments:
            value = facts.get(adj.path) if adj.path else adj.value
            if not isinstance(value, Decimal) and not isinstance(value, int) or isinstance(value, bool):
                continue  # a missing amount adjusts nothing
            if adj.kind == "deduct":
                amount -= value
            elif adj.kind == "deduct_percent":
                amount -= requested * value / 100
            else:
                caps.append(Decimal(value))
    for cap in caps:
        amount = min(amount, cap)
    return amount


def amount_of(outcome: str, floor_decided: bool, requested: Decimal, refundable: Decimal,
              matched: Sequence[Rule], facts: Mapping[str, Any], currency: str) -> Decimal:
    if outcome == "deny":
        return round_money(ZERO, currency)
    contributing = [r for r in matched if r.effect != "deny"]
    amount = _adjust(requested, contributing, facts)
    if floor_decided:
        floor_only = _adjust(requested, [r for r in contributing if r.floor], facts)
        amount = max(amount, floor_only)
    amount = max(ZERO, min(amount, refundable))
    return round_money(amount, currency)


def deadlines_of(matched: Sequence[Rule], facts: Mapping[str, Any], ctx: Context,
                 builder: FactBuilder) -> tuple[Deadline, ...]:
    best: dict[str, Deadline] = {}
    for rule in matched:
        for spec in rule.deadlines:
            due = builder.deadline(spec, facts, ctx)
            if due is None:
                continue
            current = best.get(spec.name)
            later_wins = spec.name == "period_ends"
            if current is None or (due > current.due if later_wins else due < current.due):
                best[spec.name] = Deadline(spec.name, due, spec.citation or rule.reason.citation, rule.id)
    return tuple(sorted(best.values(), key=lambda d: (d.due, d.name)))
