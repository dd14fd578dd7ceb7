"""``refundry evaluate --explain``: a short explanation a person reads, built from the engine's
full trace (``Engine.explain``; the whole trace stays available as ``--explain=json``).

It says which rules matched and the values that decided each, and which rules nearly matched:
those one condition away from matching, with the value that kept them out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from refundry.core.engine import Explanation

_SYMBOL = {"eq": "=", "ne": "≠", "lt": "<", "le": "≤", "gt": ">", "ge": "≥", "in": "in",
           "not_in": "not in", "exists": "exists"}


def explain_text(explanation: Explanation) -> str:
    d = explanation.decision
    lines = [f"decision: {d.outcome} {d.amount} {d.currency}" + _ruleset(d)]
    matched = [r for r in explanation.rules if r["matched"]]
    near = [(r, miss) for r in explanation.rules if not r["matched"]
            for miss in [_only_miss(r["when"])] if miss is not None]
    lines.append("matched:" if matched else "matched: no rule")
    for rule in matched:
        held = "; ".join(_leaf(leaf) for leaf in _true_leaves(rule["when"])) or "always"
        lines.append(f"  {_rule(rule)}: {held}")
    for reason in d.reasons:
        if reason.rule_id.startswith("refundry."):
            lines.append(f"  {reason.rule_id}: {reason.message}")
    if near:
        lines.append("nearly matched (one condition away):")
        for rule, miss in near:
            lines.append(f"  {_rule(rule)}: fails only on {_leaf(miss)}")
    for line in d.lines:  # the order's outcome follows from these; say which rules decided each
        lines.append(f"line: {line.sku or '(no sku)'} x{line.quantity} {line.outcome} "
                     f"{line.amount if line.amount is not None else '?'} "
                     f"({', '.join(line.rule_ids) or 'no rule'})")
    for action in d.actions:
        due = action.due.isoformat() if action.due else "?"
        lines.append(f"action: {action.type} {action.amount} {d.currency} by {due} ({action.citation})")
    for deadline in d.deadlines:
        lines.append(f"deadline: {deadline.name} {deadline.due.isoformat()} ({deadline.citation})")
    for error in d.errors:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _ruleset(d: Any) -> str:
    if d.ruleset is None:
        return ""
    as_of = f", as of {d.as_of.isoformat()}" if d.as_of is not None else ""
    return f" (ruleset {d.ruleset.id} {d.ruleset.version}{as_of})"


def _rule(rule: Mapping[str, Any]) -> str:
    floor = ", statutory floor" if rule["floor"] else ""
    return f"{rule['rule_id']} ({rule['effect']}, {rule['layer']}{floor})"


def _true_leaves(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The conditions that made a matched rule match (in an `any`, the branches that held)."""
    for head in ("all", "any"):
        if head in node:
            for child in node[head]:
                if child["result"]:
                    yield from _true_leaves(child)
            return
    yield node


def _only_miss(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The one condition that kept a rule out, when exactly one did."""
    if node["result"]:
        return None
    if "all" in node:
        failed = [c for c in node["all"] if not c["result"]]
        return _only_miss(failed[0]) or failed[0] if len(failed) == 1 else None
    if "any" in node:
        return None  # several branches failed; none alone is "the" value
    return node


def _leaf(node: Mapping[str, Any]) -> str:
    """A condition as written, with the value the request had for it."""
    if "field" in node:
        seen = _value(node["seen"])
        if node["op"] == "exists":
            written = f"{node['field']} {'given' if node['value'] else 'missing'}"
            return written + (f" (was {seen})" if node["seen"] is not None else "")
        written = f"{node['field']} {_SYMBOL.get(node['op'], node['op'])} {_value(node['value'])}"
        obvious = node["op"] == "eq" and node["result"]
        return written if obvious else f"{written} (was {seen})"
    for mode in ("within", "after"):
        if mode in node:
            last = node.get("last_day") or "unknown"
            return f"{mode} {node[mode]} (last day {last}, notice {node.get('notice') or 'unknown'})"
    if "not" in node:
        return f"not ({_leaf(node['not'])})"
    for quantifier in ("any_item", "all_items"):
        if quantifier in node:
            items = node[quantifier]
            hits = sum(1 for item in items if item["result"])
            return f"{quantifier.replace('_', ' ')}: {hits} of {len(items)} item(s) matched"
    if "any" in node:
        return "any of its alternatives (none held)" if not node["result"] else "one alternative"
    return "a group of conditions"


def _value(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if "percent" in value:
            return f"{value['percent']}% of {value['of']}"
        if "plus" in value:
            return f"{value['field']} + {value['plus']}"
        return str(value.get("field", value))
    return str(value)
