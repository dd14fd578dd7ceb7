"""Hostile ruleset files, each as large as the loader's documented limits allow; shared by the
loader tests and ``bench/bench_loader.py``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from refundry.core.yamlsrc import MAX_NODES

HEADER = """ruleset: hostile-{name}
version: 1.0.0
effective_from: 2024-01-01
title: hostile input
industry: ecommerce
jurisdictions: [DE]
"""

RULE = """  - id: r{i}
    title: rule {i}
    when:
      all:
        - {{field: reason, eq: changed_mind}}
        - {{field: amount, lt: {i}.50}}
        - any: [{{field: items.count, gt: 2}}, {{field: facts.tier, eq: gold}}]
    effect: manual_review
    code: c{i}
    message: rule {i} held the request for review
    customer_message: Your request needs a review.
    deadlines:
      - {{name: resolve_by, from: requested_at, period: 14 days, citation: "X{i}"}}
"""


def _values(text: str) -> int:
    """Values in a YAML text, counted as the loader counts them."""
    def count(node: yaml.Node) -> int:
        if isinstance(node, yaml.SequenceNode):
            return 1 + sum(count(c) for c in node.value)
        if isinstance(node, yaml.MappingNode):
            return 1 + sum(count(k) + count(v) for k, v in node.value)
        return 1
    return count(yaml.compose(text))


def _fill(head: str, piece: Callable[[int], str], tail: str, limit: int) -> str:
    """``head`` + as many pieces + ``tail`` as stay within ``limit`` bytes and the loader's
    ``MAX_NODES`` values: the largest input the limits let through."""
    one = _values(head + piece(0) + tail)
    each = _values(head + piece(0) + piece(1) + tail) - one
    budget = MAX_NODES - one + each
    out, size, i = [head], len(head) + len(tail), 0
    while budget >= each and size + len(piece(i)) <= limit:
        out.append(piece(i))
        size += len(piece(i))
        budget -= each
        i += 1
    return "".join(out) + tail


def many_rules(limit: int) -> str:
    """A plain ruleset of as many ordinary rules as the limits allow."""
    return _fill(HEADER.format(name="many") + "rules:\n", lambda i: RULE.format(i=i), "", limit)
def alias_bomb(limit: int) -> str:
    """The billion laughs: nine levels of nine aliases each, 516 bytes."""
    lines = [HEADER.format(name="bomb"), 'a0: &a0 ["lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("rules: [*a9]")
    return "\n".join(lines) + "\n"


def long_period(limit: int) -> str:
    """A ``period`` that backtracks a regex with overlapping repeats."""
    body = "1 " + " " * (limit - 400) + "!"
    return HEADER.format(name="period") + (
        "rules:\n  - id: r\n    when: {field: reason, eq: other}\n    effect: deny\n"
        "    code: c\n    message: m\n    customer_message: m\n"
        f"    deadlines:\n      - {{name: resolve_by, from: requested_at, period: \"{body}\"}}\n")


def many_period_steps(limit: int) -> str:
    steps = " + ".join(["1 day"] * ((limit - 400) // 8)) + " + 1 !"
    return long_period(400).replace('"1 ', f'"{steps} ', 1)


def deep_nesting(limit: int) -> str:
    depth = (limit - 400) // 2
    return HEADER.format(name="deep") + "rules: " + "[" * depth + "]" * depth + "\n"


def deep_conditions(limit: int) -> str:
    unit = "{not: "
    depth = (limit - 500) // (len(unit) + 1)
    cond = unit * depth + "{field: reason, eq: other}" + "}" * depth
    return HEADER.format(name="cond") + (
        "rules:\n  - id: r\n    when: " + cond + "\n    effect: deny\n"
        "    code: c\n    message: m\n    customer_message: m\n")


def long_scalar(limit: int) -> str:
    return HEADER.format(name="scalar") + "title2: " + "x" * (limit - 300) + "\n"


def many_windows(limit: int) -> str:
    rule = ("rules:\n  - id: r\n    when: {after: w0}\n    effect: deny\n"
            "    code: c\n    message: m\n    customer_message: m\n")
    return _fill(HEADER.format(name="windows") + "windows:\n",
                 lambda i: f"  w{i}: {{from: transaction.delivered_at, period: {i % 9000 + 1} days}}\n",
                 rule, limit)


def wide_condition(limit: int) -> str:
    head = HEADER.format(name="wide") + "rules:\n  - id: r\n    when:\n      any:\n"
    tail = ("        - {field: reason, eq: other}\n"
            "    effect: deny\n    code: c\n    message: m\n    customer_message: m\n")
    return _fill(head, lambda i: f"        - {{field: amount, gt: {i}}}\n", tail, limit)


def late_syntax_error(limit: int) -> str:
    """Dense tokens, then a bracket never closed: the largest file parsed twice (libyaml, then
    PyYAML for an analyst's message)."""
    from refundry.core.yamlsrc import FRIENDLY_REPARSE_BYTES

    head = HEADER.format(name="late") + "rules: []\nx: ["
    n = (min(limit, FRIENDLY_REPARSE_BYTES) - len(head) - 20) // 3
    return head + "1, " * n + "\n  {a: 1\n"


CASES: dict[str, Callable[[int], str]] = {
    "many_rules": many_rules, "alias_bomb": alias_bomb, "long_period": long_period,
    "many_period_steps": many_period_steps, "deep_nesting": deep_nesting,
    "deep_conditions": deep_conditions, "long_scalar": long_scalar,
    "many_windows": many_windows, "wide_condition": wide_condition,
    "late_syntax_error": late_syntax_error,
}


def write(folder: Path, name: str, limit: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(CASES[name](limit))
    return path
