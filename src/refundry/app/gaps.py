"""``refundry validate --gaps``: request shapes no rule decides, the way a decision-table
verifier reports gaps.

For every ruleset (each version, with its layers composed) and every closed-valued field the
rules test (``reason``, ``disclosures.refund_policy``, ...), each value is checked against the
rules that give an outcome: a value that every such rule excludes is a gap. A request with it
matches no rule and goes to a person (``refundry.no-rule-matched``), which may be intended, but
should be a choice, not an accident. The check is per field, a conservative over-approximation:
a rule is taken to admit a value unless a condition it needs (under ``all``, ``any`` or a
``not`` of a plain comparison) rules that value out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping

import attrs

from refundry.core import fields as fieldreg
from refundry.core.engine import Engine
from refundry.core.language import All, AnyOf, Compare, Literal, Node, Not
from refundry.core.loader import CompiledRuleset, Rule

OUTCOME_EFFECTS = ("approve", "deny", "manual_review")


@attrs.frozen
class Gap:
    """The values of one field that no rule of one ruleset version decides."""

    ruleset: str
    version: str
    path: str
    field: str
    values: tuple[str, ...]
    given: tuple[str, str] | None = None  # (field, value) these values are undecided with

    def describe(self) -> str:
        values = ", ".join(f"`{v}`" for v in self.values)
        where = f"`{self.given[0]}` `{self.given[1]}` with " if self.given else ""
        return (f"{self.path}: `{self.ruleset}` {self.version}: no rule decides {where}"
                f"`{self.field}` {values}: such a request matches no rule and goes to manual "
                "review")


def find_gaps(engine: Engine, paths: Collection[str] | None = None) -> list[Gap]:
    """The gaps of every ruleset version loaded, or of those loaded from ``paths``."""
    seen: set[tuple[str, str]] = set()
    out: list[Gap] = []
    for composite in engine.library.composites.values():
        key = (composite.top.id, composite.top.version)
        if key in seen or (paths is not None and composite.top.path not in paths):
            continue
        seen.add(key)
        out.extend(_gaps(composite))
    return out


def _gaps(composite: CompiledRuleset) -> Iterator[Gap]:
    deciding = [r for r in composite.rules if r.effect in OUTCOME_EFFECTS]
    enums = [p for p in sorted({p for r in deciding for p in _compared(r.when)})
             if p != "industry" and (fieldreg.lookup(p) or _NONE).kind == "enum"]
    single: dict[str, tuple[str, ...]] = {}
    for path in enums:
        values = (fieldreg.lookup(path) or _NONE).values
        single[path] = tuple(v for v in values if not _decided(deciding, {path: v}))
        if single[path]:
            yield Gap(composite.top.id, composite.top.version, composite.top.path, path,
                      single[path])
    # Two fields together: a value of each that some rule decides alone, but no rule with both.
    for i, first in enumerate(enums):
        for second in enums[i + 1:]:
            for v1 in (fieldreg.lookup(first) or _NONE).values:
                if v1 in single[first]:
                    continue
                both = tuple(v2 for v2 in (fieldreg.lookup(second) or _NONE).values
                             if v2 not in single[second]
                             and not _decided(deciding, {first: v1, second: v2}))
                if both:
                    yield Gap(composite.top.id, composite.top.version, composite.top.path,
                              second, both, (first, v1))


_NONE = fieldreg.FieldInfo("", "none")


def _decided(rules: Iterable[Rule], values: Mapping[str, str]) -> bool:
    return any(all(_admits(r.when, p, v) for p, v in values.items()) for r in rules)


def _compared(node: Node) -> Iterator[str]:
    if isinstance(node, Compare) and isinstance(node.operand, Literal):
        yield node.path
    elif isinstance(node, (All, AnyOf)):
        for child in node.children:
            yield from _compared(child)
    elif isinstance(node, Not):
        yield from _compared(node.child)


def _admits(node: Node, path: str, value: str) -> bool:
    """False only when ``node`` cannot hold for a request whose ``path`` is ``value``."""
    if isinstance(node, Compare) and node.path == path and isinstance(node.operand, Literal):
        return node.evaluate({path: value}, ())
    if isinstance(node, All):
        return all(_admits(c, path, value) for c in node.children)
    if isinstance(node, AnyOf):
        return any(_admits(c, path, value) for c in node.children)
    if isinstance(node, Not) and isinstance(node.child, Compare) and node.child.path == path \
            and isinstance(node.child.operand, Literal):
        return not node.child.evaluate({path: value}, ())
    return True
