"""The combining rule: from the rules that matched to one outcome, amount, lines, deadlines and
actions (documented in docs/ruleset-language.md, "Combining").

1. Every matching rule is reported, in layer order (base layers first).
2. If a statutory floor rule matched, the floor rules decide: the strictest of their effects
   (deny > manual_review > approve). A non-floor ``manual_review`` or ``deny`` can hold a floor
   approval for a person to look at (the outcome becomes ``manual_review``), never deny it.
3. Otherwise the strictest effect of the matching rules wins: deny > manual_review > approve.
4. No rule with an outcome matched: ``manual_review`` (``no_rule_matched``). Never approve.
5. Lines: with items, steps 2-4 run per line over the rules that decide it (a rule with
   ``lines:`` decides the lines its item condition holds for; any other rule, every line). The
   order is ``manual_review`` if any line is, else ``approve`` if any line is, else ``deny``.
6. Amount: each rule's base (``request`` by default, ``transaction``, ``lines``), the largest
   base any contributing rule names, minus every ``deduct`` and ``deduct_percent`` (of that
   base), then at most every ``cap``; never below zero, never above what is left of the
   transaction, never above the lines not denied; rounded once, half-up. Under a floor outcome,
   non-floor rules cannot lower the amount below what the floor rules alone give. A denial
   refunds nothing.
7. Deadlines: one per name; business obligations take the earliest date, the consumer's own
   clocks (``period_ends``, ``goods_back_by``) the latest. Actions: one per type (the earliest
   due, the largest amount), unless the order is denied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from refundry.core.facts import Context, FactBuilder
from refundry.core.loader import Rule
from refundry.core.models import (
    CONSUMER_CLOCKS,
    Action,
    Deadline,
    Item,
    Line,
    Reason,
    RefundRequest,
)
from refundry.core.money import ZERO, round_money

STRICTNESS = {"approve": 0, "manual_review": 1, "deny": 2}
OUTCOME_OF = tuple(STRICTNESS)

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
    floor = other = -1  # the strictest of each kind, -1 while none matched
    for rule in matched:
        rank = STRICTNESS.get(rule.effect, -1)
        if rule.floor:
            floor = max(floor, rank)
        else:
            other = max(other, rank)
    if floor >= 0:
        if floor == 0 and other > 0:
            return "manual_review", (FLOOR_HELD,), True
        return OUTCOME_OF[floor], (), True
    if other >= 0:
        return OUTCOME_OF[other], (), False
    return "manual_review", (NO_RULE_MATCHED,), False


def _amount_rules(rules: Sequence[Rule], floor: bool) -> tuple[tuple[Rule, ...], tuple[Rule, ...] | None]:
    """The rules that can move an amount (a base or an adjustment; a denial moves none), and
    those of them that are floors when floor rules decided the outcome (else ``None``)."""
    moving = tuple([r for r in rules if r.effect != "deny" and (r.base or r.adjustments)])
    return moving, (tuple([r for r in moving if r.floor]) if floor else None)


@attrs.frozen
class Plan:
    """Everything that follows from which rules matched alone, worked out once per set of
    matches of a composed ruleset (the engine keeps them), so a request pays only for what
    depends on its own values: amounts, dates, lines."""

    matched: tuple[Rule, ...]
    outcome: str
    synthetic: tuple[Reason, ...]
    per_line: bool  # some matched rule decides only some lines (`lines:`)
    ids: tuple[str, ...]
    reasons: tuple[Reason, ...]  # of the matched rules; the combined synthetic ones follow
    moving: tuple[Rule, ...]
    floor_moving: tuple[Rule, ...] | None
    priced: tuple[str, ...]  # ids of the rules whose base or actions read the lines they cover
    acting: tuple[Rule, ...]
    dated: tuple[Rule, ...]

    @classmethod
    def of(cls, matched: tuple[Rule, ...]) -> Plan:
        outcome, synthetic, floor = outcome_of(matched)
        moving, floor_moving = _amount_rules(matched, floor)
        return cls(matched, outcome, synthetic, any(r.lines is not None for r in matched),
                   tuple([r.id for r in matched]), tuple([r.reason for r in matched]), moving,
                   floor_moving, tuple([r.id for r in matched if r.base or r.actions]),
                   tuple([r for r in matched if r.actions and r.effect != "deny"]),
                   tuple([r for r in matched if r.deadlines]))


@attrs.frozen
class Money:
    """What the amount bases of one request come to, computed once."""

    requested: Decimal
    refundable: Decimal
    line_values: tuple[Decimal | None, ...]  # per item line: its payments + its share of delivery
    no_lines: Decimal  # the `lines` base without items: the request, at most the order less express

    @classmethod
    def of(cls, req: RefundRequest, refundable: Decimal) -> Money:
        tx = req.transaction
        express = tx.express_shipping_amount or ZERO
        # `shipping_amount` is all delivery paid, express surcharge included; without it the
        # express surcharge is all the delivery we know of.
        delivery = tx.shipping_amount if tx.shipping_amount is not None else express
        standard = max(ZERO, delivery - express)
        goods = [None if it.unit_price is None else it.unit_price * (it.quantity or 1)
                 for it in req.items]
        order_goods = tx.amount - delivery
        if order_goods <= 0:
            order_goods = sum((g for g in goods if g is not None), ZERO)
        values: list[Decimal | None] = goods
        if standard:  # each line gets its share of standard delivery
            values = []
            for g in goods:
                share = min(Decimal(1), g / order_goods) if g is not None and order_goods > 0 else ZERO
                values.append(None if g is None else g + standard * share)
        # Without item lines only the requested amount says what was withdrawn; the whole order
        # less the express surcharge is the most it can come to.
        no_lines = min(req.amount, max(ZERO, refundable - express))
        return cls(req.amount, refundable, tuple(values), no_lines)

    def base(self, kind: str | None, lines: Sequence[int] | None) -> Decimal:
        if kind == "transaction":
            return self.refundable
        if kind == "lines":
            if lines is None:
                return self.no_lines
            known = [v for v in (self.line_values[i] for i in lines) if v is not None]
            return sum(known, ZERO) if known else self.requested
        return self.requested


def _adjust(money: Money, rules: Sequence[Rule], facts: Mapping[str, Any],
            covered: Mapping[str, Sequence[int] | None]) -> Decimal:
    bases = [money.base(r.base, covered.get(r.id)) for r in rules if r.base]
    start = max(bases) if bases else money.requested
    amount = start
    caps: list[Decimal] = []
    for rule in rules:
        for adj in rule.adjustments:
            value = facts.get(adj.path) if adj.path else adj.value
            if not isinstance(value, Decimal) and not isinstance(value, int) or isinstance(value, bool):
                continue  # a missing amount adjusts nothing
            if adj.kind == "deduct":
                amount -= value
            elif adj.kind == "deduct_percent":
                amount -= start * value / 100
            else:
                caps.append(Decimal(value))
    for cap in caps:
        amount = min(amount, cap)
    return amount


def amount_of(outcome: str, money: Money, moving: Sequence[Rule],
              floor_moving: Sequence[Rule] | None, facts: Mapping[str, Any], currency: str,
              covered: Mapping[str, Sequence[int] | None], ceiling: Decimal | None) -> Decimal:
    """``moving``, ``floor_moving``: as ``_amount_rules`` gives them."""
    if outcome == "deny":
        return round_money(ZERO, currency)
    amount = _adjust(money, moving, facts, covered)
    if floor_moving is not None:
        amount = max(amount, _adjust(money, floor_moving, facts, covered))
    amount = min(amount, money.refundable)
    if ceiling is not None:
        amount = min(amount, ceiling)
    return round_money(max(ZERO, amount), currency)


@attrs.frozen
class Combined:
    outcome: str
    synthetic: tuple[Reason, ...]
    amount: Decimal
    lines: tuple[Line, ...]
    actions: tuple[Action, ...]


def _applies(rule: Rule, item: Mapping[str, Any]) -> bool:
    return rule.lines is None or rule.lines.evaluate(item, ())


def combine(req: RefundRequest, plan: Plan, facts: Mapping[str, Any],
            items: Sequence[Mapping[str, Any]], money: Money, ctx: Context,
            builder: FactBuilder) -> Combined:
    currency = req.currency
    if not req.items:
        outcome = plan.outcome
        amount = amount_of(outcome, money, plan.moving, plan.floor_moving, facts, currency, {}, None)
        return Combined(outcome, plan.synthetic, amount, (),
                        actions_of(outcome, plan.acting, money, facts, ctx, builder, currency, {}))
    if not plan.per_line:
        return _same_for_every_line(req, plan, facts, money, ctx, builder)
    matched = plan.matched
    if len(items) != len(req.items):  # defensive: a `lines:` rule always reads item fields
        items = [{} for _ in req.items]
    per_line = [tuple(r for r in matched if _applies(r, it)) for it in items]
    decided = [outcome_of(rules) for rules in per_line]
    open_lines = [i for i, (o, _, _) in enumerate(decided) if o != "deny"]
    outs = {o for o, _, _ in decided}
    outcome = ("manual_review" if "manual_review" in outs else
               "approve" if "approve" in outs else "deny")
    held: dict[str, Reason] = {}
    for _, extra, _ in decided:
        held.update((r.rule_id, r) for r in extra)
    # A rule's `lines` base counts the lines it decides that are not denied.
    ids = [frozenset(r.id for r in rules) for rules in per_line]
    covered = {r.id: [i for i in open_lines if r.id in ids[i]] for r in matched}
    contributing = [r for r in matched if covered[r.id]]
    floor = any(decided[i][2] for i in open_lines)
    known = [money.line_values[i] for i in open_lines]
    ceiling = (sum((v for v in known if v is not None), ZERO)
               if len(open_lines) < len(req.items) else None)
    amount = amount_of(outcome, money, *_amount_rules(contributing, floor), facts, currency,
                       covered, ceiling)
    rule_ids = {id(rules): tuple(r.id for r in rules) for rules in per_line}
    lines = tuple(_line(req.items[i], decided[i][0], rule_ids[id(per_line[i])],
                        money.line_values[i], currency) for i in range(len(req.items)))
    actions = actions_of(outcome, contributing, money, facts, ctx, builder, currency, covered)
    return Combined(outcome, tuple(held.values()), amount, lines, actions)


def _same_for_every_line(req: RefundRequest, plan: Plan, facts: Mapping[str, Any],
                         money: Money, ctx: Context, builder: FactBuilder) -> Combined:
    """The common case, kept cheap: no matched rule has `lines:`, so each decides every line
    and every line gets the order's outcome."""
    outcome = plan.outcome
    every = list(range(len(req.items))) if outcome != "deny" else []
    covered = {rid: every for rid in plan.priced}
    amount = amount_of(outcome, money, plan.moving, plan.floor_moving, facts, req.currency,
                       covered, None)
    ids = plan.ids
    lines = tuple([_line(it, outcome, ids, value, req.currency)
                   for it, value in zip(req.items, money.line_values, strict=True)])
    actions = actions_of(outcome, plan.acting, money, facts, ctx, builder, req.currency, covered)
    return Combined(outcome, plan.synthetic, amount, lines, actions)


def _line(item: Item, outcome: str, rule_ids: tuple[str, ...], value: Decimal | None,
          currency: str) -> Line:
    amount = None if value is None else round_money(value if outcome != "deny" else ZERO, currency)
    return Line(item.sku, item.quantity or 1, outcome, amount, rule_ids)


def actions_of(outcome: str, matched: Sequence[Rule], money: Money, facts: Mapping[str, Any],
               ctx: Context, builder: FactBuilder, currency: str,
               covered: Mapping[str, Sequence[int] | None]) -> tuple[Action, ...]:
    if outcome == "deny" or not matched:  # most requests: no rule with an action matched
        return ()
    best: dict[str, Action] = {}
    for rule in matched:
        if rule.effect == "deny":
            continue
        for spec in rule.actions:
            due = builder.deadline(spec.due, facts, ctx)
            amount = round_money(max(ZERO, min(money.base(spec.base, covered.get(rule.id)),
                                               money.refundable)), currency)
            current = best.get(spec.type)
            if current is None or (due or current.due) and (
                    current.due is None or (due is not None and due < current.due)):
                best[spec.type] = Action(spec.type, max(amount, current.amount) if current else amount,
                                         due, spec.due.citation or rule.reason.citation, rule.id)
            elif amount > current.amount:
                best[spec.type] = attrs.evolve(current, amount=amount)
    return tuple(sorted(best.values(), key=lambda a: a.type))


def deadlines_of(matched: Sequence[Rule], facts: Mapping[str, Any], ctx: Context,
                 builder: FactBuilder) -> tuple[Deadline, ...]:
    if not matched:  # most requests: no rule with a deadline matched
        return ()
    best: dict[str, Deadline] = {}
    for rule in matched:
        for spec in rule.deadlines:
            due = builder.deadline(spec, facts, ctx)
            if due is None:
                continue
            current = best.get(spec.name)
            later_wins = spec.name in CONSUMER_CLOCKS
            if current is None or (due > current.due if later_wins else due < current.due):
                best[spec.name] = Deadline(spec.name, due, spec.citation or rule.reason.citation, rule.id)
    return tuple(sorted(best.values(), key=lambda d: (d.due, d.name)))
