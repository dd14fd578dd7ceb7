"""The condition language: YAML conditions parsed into a small tree, once, at load.

A condition is one of:

- ``{all: [c, ...]}``, ``{any: [c, ...]}``, ``{not: c}``;
- ``{field: PATH, OP: VALUE}`` with OP one of ``eq ne lt le gt ge in not_in exists``; VALUE is a
  literal, ``{field: PATH}`` (another field) or ``{percent: N, of: PATH}``;
- ``{any_item: c}`` / ``{all_items: c}``: ``c`` is about one item (``condition``, ``final_sale``,
  ...); ``all_items`` is false when there are no items;
- ``{within: WINDOW}`` / ``{after: WINDOW}``: the window's notice date is on or before / after the
  window's last day.

A condition on a missing field is false whatever the operator (``not`` then makes it true); test
for absence with ``exists: false``. The tree is evaluated two ways that must agree: ``evaluate``
(an interpreter, also used by ``--explain``) and ``source`` (Python code generated for the
``compiled`` backend). Every literal reaches generated code as a constant in a table, never as
text, so no ruleset content is ever executed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import operator
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from types import CodeType
from typing import Any, ClassVar

import attrs

from refundry.core import fields as fieldreg
from refundry.core.errors import did_you_mean
from refundry.core.yamlsrc import LocDict, LocList

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "exists")
_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
    "gt": operator.gt, "ge": operator.ge,
}
_PY_SYMBOL = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
MAX_DEPTH = 12


# --- operands ------------------------------------------------------------------------------


@attrs.frozen
class Literal:
    value: Any

    def get(self, facts: Mapping[str, Any]) -> Any:
        return self.value

    def describe(self) -> Any:
        return jsonable(self.value)


@attrs.frozen
class FieldRef:
    path: str

    def get(self, facts: Mapping[str, Any]) -> Any:
        return facts.get(self.path)

    def describe(self) -> Any:
        return {"field": self.path}


@attrs.frozen
class Percent:
    percent: Decimal
    path: str

    def get(self, facts: Mapping[str, Any]) -> Any:
        base = facts.get(self.path)
        if base is None or isinstance(base, bool) or not isinstance(base, (int, Decimal)):
            return None
        return base * self.percent / 100

    def describe(self) -> Any:
        return {"percent": str(self.percent), "of": self.path}


@attrs.frozen
class FieldPlus:
    """``{field: OTHER, plus: N}``: another amount field plus a fixed amount (a threshold over a
    reference amount, e.g. a bill at least 400 over the good-faith estimate)."""

    path: str
    plus: Decimal

    def get(self, facts: Mapping[str, Any]) -> Any:
        return _plus(facts.get(self.path), self.plus)

    def describe(self) -> Any:
        return {"field": self.path, "plus": str(self.plus)}


Operand = Literal | FieldRef | Percent | FieldPlus


# --- nodes ---------------------------------------------------------------------------------


class Node:
    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        raise NotImplementedError

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        raise NotImplementedError

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def paths(self) -> set[str]:
        return set()


@attrs.frozen
class Junction(Node):
    """``all`` or ``any`` of the children: ``All`` and ``AnyOf`` differ only in the word the
    YAML and the explanation use, the Python operator and the fold."""

    children: tuple[Node, ...]
    KEY: ClassVar[str]
    OPERATOR: ClassVar[str]
    FOLD: ClassVar[Callable[[Iterable[bool]], bool]]  # all or any: read off the class, not bound

    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        return type(self).FOLD(c.evaluate(facts, items) for c in self.children)

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        joined = f" {self.OPERATOR} ".join(c.source(gen, getter, items) for c in self.children)
        return "(" + joined + ")"

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        parts = [c.explain(facts, items) for c in self.children]
        return {self.KEY: parts, "result": type(self).FOLD(p["result"] for p in parts)}

    def paths(self) -> set[str]:
        return set().union(*(c.paths() for c in self.children))


@attrs.frozen
class All(Junction):
    KEY = "all"
    OPERATOR = "and"
    FOLD = all


@attrs.frozen
class AnyOf(Junction):
    KEY = "any"
    OPERATOR = "or"
    FOLD = any


@attrs.frozen
class Not(Node):
    child: Node

    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        return not self.child.evaluate(facts, items)

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        return f"(not {self.child.source(gen, getter, items)})"

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        inner = self.child.explain(facts, items)
        return {"not": inner, "result": not inner["result"]}

    def paths(self) -> set[str]:
        return self.child.paths()


def _compare(op: str, seen: Any, expected: Any) -> bool:
    """The one definition of a comparison; the generated code must agree with it."""
    if op == "exists":
        return (seen is not None) is expected
    if seen is None or expected is None:
        return False
    try:
        if op == "in":
            return bool(seen in expected)
        if op == "not_in":
            return bool(seen not in expected)
        if isinstance(seen, bool) != isinstance(expected, bool) and op != "eq" and op != "ne":
            return False
        return bool(_PY_OPS[op](seen, expected))
    except TypeError:  # a client fact of another type than the rule expects
        return False


@attrs.frozen
class Compare(Node):
    path: str
    op: str
    operand: Operand
    typed: bool  # both sides' types were checked at load: generated code can skip the guard

    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        return _compare(self.op, facts.get(self.path), self.operand.get(facts))

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        seen = f"{getter}({gen.const(self.path)})"
        if self.op == "exists":
            return f"(({seen} is not None) is {bool(self.operand.get({}))})"
        if not self.typed:
            return f"_cmp({gen.const(self.op)}, {seen}, {self._expected_src(gen, getter)})"
        if isinstance(self.operand, Literal):
            expected = gen.const(self.operand.value)
            if self.op == "eq":
                return f"({seen} == {expected})"
            var = gen.var()
            if self.op == "in":
                return f"({seen} in {expected})"
            if self.op == "not_in":
                return f"(({var} := {seen}) is not None and {var} not in {expected})"
            return f"(({var} := {seen}) is not None and {var} {_PY_SYMBOL[self.op]} {expected})"
        a, b = gen.var(), gen.var()
        expected = self._expected_src(gen, getter)
        return (f"(({a} := {seen}) is not None and ({b} := {expected}) is not None "
                f"and {a} {_PY_SYMBOL[self.op]} {b})")

    def _expected_src(self, gen: CodeGen, getter: str) -> str:
        operand = self.operand
        if isinstance(operand, Literal):
            return gen.const(operand.value)
        if isinstance(operand, FieldRef):
            return f"{getter}({gen.const(operand.path)})"
        if isinstance(operand, FieldPlus):
            return f"_plus({getter}({gen.const(operand.path)}), {gen.const(operand.plus)})"
        return f"_pct({getter}({gen.const(operand.path)}), {gen.const(operand.percent)})"

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        seen = facts.get(self.path)
        return {"field": self.path, "op": self.op, "value": self.operand.describe(),
                "seen": jsonable(seen), "result": self.evaluate(facts, items)}

    def paths(self) -> set[str]:
        extra = ({self.operand.path} if isinstance(self.operand, (FieldRef, Percent, FieldPlus))
                 else set())
        return {self.path} | extra


PRIOR_REFUNDS = "prior_refunds[]"  # the fact holding the prior refund entries (facts.py)


@attrs.frozen
class Items(Node):
    """A quantifier over the request's item lines, or (``collection`` ``prior_refunds``) over
    its prior refunds, whose entries also carry the request fields the condition names as
    ``request.PATH``."""

    quantifier: str  # any_item | all_items (any / all)
    child: Node
    collection: str = "items"

    def _entries(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Sequence[Any]:
        return items if self.collection == "items" else (facts.get(PRIOR_REFUNDS) or ())

    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        entries = self._entries(facts, items)
        if self.quantifier.startswith("any"):
            return any(self.child.evaluate(it, ()) for it in entries)
        return bool(entries) and all(self.child.evaluate(it, ()) for it in entries)

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        name = gen.item_function(self.child, every=not self.quantifier.startswith("any"))
        entries = items if self.collection == "items" else (
            f"({getter}({gen.const(PRIOR_REFUNDS)}) or ())")
        return f"{name}({entries})"

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        per_item = [self.child.explain(it, ()) for it in self._entries(facts, items)]
        return {self.quantifier: per_item, "result": self.evaluate(facts, items)}

    def paths(self) -> set[str]:
        if self.collection == "items":
            return set()
        # The entries, and the request fields they are compared with (copied into each entry).
        return {PRIOR_REFUNDS} | {p[len("request."):] for p in self.child.paths()
                                  if p.startswith("request.")}


@attrs.frozen
class Window(Node):
    mode: str  # within | after
    name: str

    @property
    def key(self) -> str:
        return f"window.{self.name}.within"

    def evaluate(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        return facts.get(self.key) is (self.mode == "within")

    def source(self, gen: CodeGen, getter: str, items: str) -> str:
        return f"({getter}({gen.const(self.key)}) is {self.mode == 'within'})"

    def explain(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {self.mode: self.name, "last_day": jsonable(facts.get(f"window.{self.name}.end")),
                "notice": jsonable(facts.get(f"window.{self.name}.notice")),
                "result": self.evaluate(facts, items)}


TRUE = All(())


def item_paths(node: Node) -> set[str]:
    """The item fields a condition reads inside ``any_item`` / ``all_items``."""
    if isinstance(node, Items):
        return node.child.paths() if node.collection == "items" else set()
    if isinstance(node, (All, AnyOf)):
        return set().union(*(item_paths(c) for c in node.children))
    if isinstance(node, Not):
        return item_paths(node.child)
    return set()


def jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (frozenset, set, tuple, list)):
        return sorted((jsonable(v) for v in value), key=str)
    return value


# --- code generation -----------------------------------------------------------------------


def _pct(base: Any, percent: Decimal) -> Any:
    if base is None or isinstance(base, bool) or not isinstance(base, (int, Decimal)):
        return None
    return base * percent / 100


def _plus(base: Any, plus: Decimal) -> Any:
    if base is None or isinstance(base, bool) or not isinstance(base, (int, Decimal)):
        return None
    return base + plus


class CodeGen:
    """Turns condition trees into one Python function that returns the indexes of the rules
    whose conditions hold: ``match(get, items) -> list[int]``."""

    def __init__(self) -> None:
        self.consts: list[Any] = []
        self._const_index: dict[tuple[type, Any], int] = {}
        self.lines: list[str] = []
        self.prelude: list[str] = []
        self._vars = 0
        self._funcs = 0

    def const(self, value: Any) -> str:
        try:
            key: Any = (type(value), value)
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in self._const_index:
            return f"_c[{self._const_index[key]}]"
        self.consts.append(value)
        idx = len(self.consts) - 1
        if key is not None:
            self._const_index[key] = idx
        return f"_c[{idx}]"

    def var(self) -> str:
        self._vars += 1
        return f"_v{self._vars}"

    def item_function(self, node: Node, every: bool) -> str:
        """A function of the entries (item lines, prior refunds) that says whether ``node``
        holds for any of them (for every one, and there is one, when ``every``): the loop is
        generated with the condition inline, not a call per entry."""
        self._funcs += 1
        name = f"_item{self._funcs}"
        body = node.source(self, "g", "()")
        if every:
            loop = ["    if not entries:", "        return False", "    for it in entries:",
                    "        g = it.get", f"        if not {body}:", "            return False",
                    "    return True"]
        else:
            loop = ["    for it in entries:", "        g = it.get", f"        if {body}:",
                    "            return True", "    return False"]
        self.prelude.append("\n".join([f"def {name}(entries):", *loop]) + "\n")
        return name

    def build(self, conditions: Sequence[Node], index_on: str | None = None,
              codes: dict[bytes, tuple[str, CodeType]] | None = None,
              ) -> Callable[[Callable[[str], Any], Sequence[Any]], list[int]]:
        """``index_on``: an enum field (``reason``). A rule whose condition requires that field to
        be one of some values is only tested for a request with one of them, so a request's cost
        follows the rules that can match it, not every rule. The full condition is still tested.
        ``codes``: code already compiled for other rulesets, by source (see ``_compiled``)."""
        body = ["def match(g, items):", "    hits = []"]
        groups: dict[Any, list[int]] = {}
        for index, cond in enumerate(conditions):
            values = required_values(cond, index_on) if index_on else None
            if values is not None:
                for value in values:
                    groups.setdefault(value, []).append(index)
                continue
            body.append(f"    if {cond.source(self, 'g', 'items')}:")
            body.append(f"        hits.append({index})")
        if groups:
            body += [f"    group = _groups.get(g({self.const(index_on)}))",
                     "    if group is not None:", "        group(g, items, hits)", "        hits.sort()"]
        body.append("    return hits")
        rest = {i: _rest_of(conditions[i], index_on) for ix in groups.values() for i in ix}
        group_names = {value: self._group(rest, indexes) for value, indexes in groups.items()}
        code = "\n".join(self.prelude) + "\n" + "\n".join(body) + "\n"
        namespace: dict[str, Any] = {"_c": tuple(self.consts), "_pct": _pct, "_plus": _plus,
                                     "_cmp": _compare, "_bl": bisect.bisect_left,
                                     "_br": bisect.bisect_right}
        code, compiled = _compiled(code, codes)
        exec(compiled, namespace)  # noqa: S102
        match = namespace["match"]
        match.__globals__["_groups"] = {value: namespace[name] for value, name in group_names.items()}
        match.__refundry_source__ = code
        return match

    def _group(self, rest: Mapping[int, Node | None], indexes: list[int]) -> str:
        """The rules one value of the index field can match, each tested on the rest of its
        condition (the part the index has not already decided)."""
        self._funcs += 1
        name = f"_group{self._funcs}"
        ranged = _thresholds(rest, indexes)
        lines = []
        for index in indexes:
            cond = rest[index]
            if cond is None:
                lines.append(f"    hits.append({index})")
            elif not any(index in rules for rules in ranged.values()):
                lines.append(f"    if {cond.source(self, 'g', 'items')}:")
                lines.append(f"        hits.append({index})")
        lines += [self._range(path, op, rules) for (path, op), rules in ranged.items()]
        # The rules of a group mostly read the same few facts: each is looked up once (a fact
        # lookup is a pure dict.get, so reading it early changes nothing).
        body = _LOOKUP.sub(lambda m: f"_g{m.group(1)}", "\n".join(lines))
        reads = [f"    _g{n} = g(_c[{n}])" for n in sorted({int(n) for n in _LOOKUP.findall("\n".join(lines))})]
        self.prelude.append("\n".join([f"def {name}(g, items, hits):", *reads, body]) + "\n")
        return name

    def _range(self, path: str, op: str, rules: Mapping[int, Any]) -> str:
        """Many rules that compare one numeric field with a number each (`amount > 1000`): the
        numbers sorted, so one bisection finds every rule that holds (those below the value for
        `gt`/`ge`, above it for `lt`/`le`), whatever their count. Matches appended out of order
        are sorted after the group, as any group's are."""
        order = sorted(rules, key=lambda i: (rules[i], i))
        limits, ids = self.const(tuple(rules[i] for i in order)), self.const(tuple(order))
        var = self.var()
        cut = {"gt": f"[:_bl({limits}, {var})]", "ge": f"[:_br({limits}, {var})]",
               "lt": f"[_br({limits}, {var}):]", "le": f"[_bl({limits}, {var}):]"}[op]
        return (f"    if ({var} := g({self.const(path)})) is not None:\n"
                f"        hits.extend({ids}{cut})")


MIN_RANGE = 8  # fewer threshold rules on one field are tested one by one


def _thresholds(rest: Mapping[int, Node | None], indexes: Sequence[int]) -> dict[tuple[str, str], dict[int, Any]]:
    """The rules of a group whose whole remaining condition is a typed comparison of one field
    with a number by `gt`, `ge`, `lt` or `le`, by field and operator, where there are at least
    ``MIN_RANGE`` of one kind: typed means the loader checked the field holds numbers, so the
    comparisons a bisection makes are the ones the rule would."""
    found: dict[tuple[str, str], dict[int, Any]] = {}
    for index in indexes:
        cond = rest[index]
        if isinstance(cond, All) and len(cond.children) == 1:
            cond = cond.children[0]
        if (isinstance(cond, Compare) and cond.typed and cond.op in ("gt", "ge", "lt", "le")
                and isinstance(cond.operand, Literal) and type(cond.operand.value) in (int, Decimal)):
            found.setdefault((cond.path, cond.op), {})[index] = cond.operand.value
    return {key: rules for key, rules in found.items() if len(rules) >= MIN_RANGE}


_LOOKUP = re.compile(r"\bg\(_c\[(\d+)\]\)")


def _compiled(code: str, codes: dict[bytes, tuple[str, CodeType]] | None) -> tuple[str, CodeType]:
    """The source and its code object, compiled once per ``codes`` (one engine's): stacks with
    the same rules (a client layer per shop over one baseline) generate the same source, which
    differs only in the constants table it is run with, and compiling 2,000 rules' source was
    half of a load. Keyed by digest so the table does not keep a second copy of each source."""
    if codes is None:
        return code, compile(code, "<refundry-compiled-ruleset>", "exec")
    key = hashlib.blake2b(code.encode(), digest_size=20).digest()
    found = codes.get(key)
    if found is None:
        found = codes.setdefault(key, (code, compile(code, "<refundry-compiled-ruleset>", "exec")))
    return found


def _rest_of(cond: Node, path: str | None) -> Node | None:
    """``cond`` without the conjunct ``required_values`` read (None: nothing else to test)."""
    if isinstance(cond, Compare):
        return None
    assert isinstance(cond, All)
    for i, child in enumerate(cond.children):
        if required_values(child, path) is not None:
            inner = _rest_of(child, path)
            others = cond.children[:i] + ((inner,) if inner is not None else ()) + cond.children[i + 1:]
            return All(others) if others else None
    raise AssertionError("no indexed conjunct")  # pragma: no cover - required_values found one


def required_values(cond: Node, path: str | None) -> frozenset[Any] | None:
    """The values ``path`` must have for ``cond`` to hold, when an `eq`/`in` on a literal at the
    top of the condition (or of one of its `all` children) says so; None when nothing does."""
    if isinstance(cond, Compare) and cond.path == path and isinstance(cond.operand, Literal):
        value = cond.operand.value
        if cond.op == "eq" and isinstance(value, str):
            return frozenset((value,))
        if cond.op == "in" and isinstance(value, (tuple, list, frozenset, set)) and all(
                isinstance(v, str) for v in value):
            return frozenset(value)
        return None
    if isinstance(cond, All):
        for child in cond.children:
            found = required_values(child, path)
            if found is not None:
                return found
    return None


# --- parsing -------------------------------------------------------------------------------


class ParseContext:
    """Where a condition stands and how to report an error in it."""

    def __init__(self, report: Callable[..., None], windows: Mapping[str, Any], rule_id: str | None,
                 broken_windows: Collection[str] = ()):
        self.report = report
        self.windows = windows
        self.rule_id = rule_id
        self.broken_windows = broken_windows  # defined, but rejected with an error of their own

    def error(self, message: str, container: Any, key: Any = None, value: bool = False) -> None:
        self.report(message, container, key, rule_id=self.rule_id, value=value)


_KEYS = {"all", "any", "not", "any_item", "all_items", "any_prior_refund", "all_prior_refunds",
         "within", "after", "field"}
ENTRIES = "prior_refunds"  # `item` value while parsing inside a prior-refund quantifier


def parse_condition(raw: Any, ctx: ParseContext, *, item: bool | str = False, depth: int = 0,
                    parent: Any = None, key: Any = None) -> Node:
    """Parse one condition; errors go to ``ctx`` and the result is then a harmless ``TRUE``."""
    if depth > MAX_DEPTH:
        ctx.error(f"conditions nest deeper than {MAX_DEPTH} levels", parent, key)
        return TRUE
    if not isinstance(raw, Mapping) or not raw:
        ctx.error("a condition must be a mapping such as `{field: reason, eq: defective}`",
                  parent, key, value=True)
        return TRUE
    heads = [k for k in raw if k in _KEYS]
    if len(heads) != 1:
        if not heads:
            ctx.error(f"unknown condition `{next(iter(raw))}`; use one of: {', '.join(sorted(_KEYS))}",
                      raw, next(iter(raw)))
        else:
            ctx.error(f"a condition has one of {', '.join(sorted(_KEYS))}, not {' and '.join(heads)}",
                      raw, heads[1])
        return TRUE
    head = heads[0]
    if head in ("all", "any"):
        _no_extra(raw, {head}, ctx)
        children_raw = raw[head]
        if not isinstance(children_raw, list) or not children_raw:
            ctx.error(f"`{head}` takes a non-empty list of conditions", raw, head, value=True)
            return TRUE
        children = tuple(parse_condition(c, ctx, item=item, depth=depth + 1, parent=children_raw, key=i)
                         for i, c in enumerate(children_raw))
        return All(children) if head == "all" else AnyOf(children)
    if head == "not":
        _no_extra(raw, {head}, ctx)
        return Not(parse_condition(raw["not"], ctx, item=item, depth=depth + 1, parent=raw, key="not"))
    if head in ("any_item", "all_items", "any_prior_refund", "all_prior_refunds"):
        _no_extra(raw, {head}, ctx)
        if item:
            ctx.error(f"`{head}` cannot stand inside another item condition", raw, head)
            return TRUE
        entries = head.endswith("prior_refund") or head.endswith("prior_refunds")
        child = parse_condition(raw[head], ctx, item=ENTRIES if entries else True,
                                depth=depth + 1, parent=raw, key=head)
        return Items(head, child, ENTRIES if entries else "items")
    if head in ("within", "after"):
        _no_extra(raw, {head}, ctx)
        name = raw[head]
        if item:
            ctx.error(f"`{head}` is about the request, not an item", raw, head)
            return TRUE
        if not isinstance(name, str) or name not in ctx.windows:
            if isinstance(name, str) and name in ctx.broken_windows:
                return TRUE  # its definition is already reported; one cause, one error
            known = ", ".join(sorted(ctx.windows)) or "none defined"
            ctx.error(f"unknown window `{name}`{did_you_mean(name, ctx.windows)} (windows: {known})",
                      raw, head, value=True)
            return TRUE
        return Window(head, name)
    return _parse_compare(raw, ctx, item)


def _no_extra(raw: Mapping[str, Any], allowed: set[str], ctx: ParseContext) -> None:
    for k in raw:
        if k not in allowed:
            ctx.error(f"unexpected key `{k}` in a `{next(iter(allowed))}` condition", raw, k)


def _parse_compare(raw: Mapping[str, Any], ctx: ParseContext, item: bool | str) -> Node:
    path = raw["field"]
    ops = [k for k in raw if k != "field"]
    unknown = [k for k in ops if k not in OPS]
    if unknown:
        ctx.error(f"unknown operator `{unknown[0]}`; use one of: {', '.join(OPS)}", raw, unknown[0])
        return TRUE
    if len(ops) != 1:
        ctx.error("a field condition needs exactly one operator: " + ", ".join(OPS), raw, "field")
        return TRUE
    op = ops[0]
    if not isinstance(path, str):
        ctx.error("`field` must be a dotted field name", raw, "field", value=True)
        return TRUE
    info = fieldreg.lookup(path, item=item)
    if info is None:
        ctx.error(_unknown_field(path, item), raw, "field", value=True)
        return TRUE
    value = raw[op]
    if op == "exists":
        if not isinstance(value, bool):
            ctx.error("`exists` takes true or false", raw, op, value=True)
            return TRUE
        return Compare(path, op, Literal(value), typed=True)
    if op in ("lt", "le", "gt", "ge") and not info.ordered:
        ctx.error(f"`{path}` is {info.kind}; it cannot be compared with `{op}`", raw, op)
        return TRUE
    if op == "ne" and info.kind == "flag":
        # `ne: true` is false when the flag is missing, which is rarely what an analyst means.
        ctx.error(f"`ne` on true/false field `{path}` is false when the field is missing; write "
                  f"`not: {{field: {path}, eq: {str(value).lower()}}}` or `eq: {str(not value).lower() if isinstance(value, bool) else 'false'}`",
                  raw, op)
        return TRUE
    operand = _parse_operand(value, info, op, ctx, raw, item)
    if operand is None:
        return TRUE
    typed = info.kind != "any" and not (isinstance(operand, FieldRef) and
                                        (fieldreg.lookup(operand.path, item=item) or info).kind == "any")
    return Compare(path, op, operand, typed=typed)


def _unknown_field(path: str, item: bool | str) -> str:
    """The nearest known field first; the `facts.` hint only when nothing known is close, since
    a misspelt request field is far more common than a client fact written without `facts.`."""
    if item == ENTRIES:
        known, scope = fieldreg.prior_refund_fields(), "a prior refund"
    else:
        known = fieldreg.item_fields() if item else fieldreg.request_fields()
        scope = "an item" if item else "a request"
    hint = did_you_mean(path, known)
    if not hint and not item:
        hint = "; a client's own facts are written `facts.NAME`"
    return f"unknown field `{path}` for {scope}{hint}"


def _parse_operand(value: Any, info: fieldreg.FieldInfo, op: str, ctx: ParseContext,
                   raw: Any, item: bool | str) -> Operand | None:
    if isinstance(value, Mapping):
        if op in ("in", "not_in"):
            ctx.error(f"`{op}` takes a list of values", raw, op, value=True)
            return None
        if set(value) == {"request"} and item == ENTRIES and isinstance(value["request"], str):
            return _request_operand(value, info, op, ctx, raw)
        if set(value) == {"field"}:
            other = fieldreg.lookup(value["field"], item=item) if isinstance(value["field"], str) else None
            if other is None:
                ctx.error(_unknown_field(value["field"], item), value, "field", value=True)
                return None
            if "any" not in (info.kind, other.kind) and _family(info.kind) != _family(other.kind):
                ctx.error(f"`{info.path}` ({info.kind}) cannot be compared with "
                          f"`{other.path}` ({other.kind})", raw, op)
                return None
            return FieldRef(other.path)
        if set(value) == {"percent", "of"}:
            return _percent_operand(value, info, op, ctx, raw, item)
        if set(value) == {"field", "plus"}:
            plus = value["plus"]
            other = fieldreg.lookup(value["field"], item=item) if isinstance(value["field"], str) else None
            if other is None or other.kind not in ("money", "count", "any"):
                ctx.error(f"`plus` needs an amount field, not `{value['field']}`", value, "field",
                          value=True)
                return None
            if not isinstance(plus, (int, Decimal)) or isinstance(plus, bool):
                ctx.error("`plus` takes a number", value, "plus", value=True)
                return None
            if info.kind not in ("money", "count", "any"):
                ctx.error(f"`{info.path}` is {info.kind}; `plus` compares with amounts", raw, op)
                return None
            return FieldPlus(other.path, Decimal(str(plus)))
        ctx.error("a value is a literal, `{field: NAME}`, `{field: NAME, plus: N}` or "
                  "`{percent: N, of: NAME}`", raw, op,
                  value=True)
        return None
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            ctx.error(f"`{op}` takes a non-empty list of values", raw, op, value=True)
            return None
        checked = [_check_literal(v, info, ctx, value, i) for i, v in enumerate(value)]
        if any(c is _INVALID for c in checked):
            return None
        try:
            return Literal(frozenset(checked))
        except TypeError:
            ctx.error(f"`{op}` takes a list of plain values", raw, op, value=True)
            return None
    checked = _check_literal(value, info, ctx, raw, op)
    return None if checked is _INVALID else Literal(checked)


def _percent_operand(value: Mapping[str, Any], info: fieldreg.FieldInfo, op: str,
                     ctx: ParseContext, raw: Any, item: bool | str) -> Operand | None:
    pct, of = value["percent"], value["of"]
    other = fieldreg.lookup(of, item=item) if isinstance(of, str) else None
    if not isinstance(pct, (int, Decimal)) or isinstance(pct, bool) or not 0 <= pct <= 1000:
        ctx.error("`percent` takes a number from 0 to 1000", value, "percent", value=True)
        return None
    if other is None or other.kind not in ("money", "count", "any"):
        ctx.error(f"`of` must name an amount field, not `{of}`", value, "of", value=True)
        return None
    if info.kind not in ("money", "count", "any"):
        ctx.error(f"`{info.path}` is {info.kind}; a percentage compares with amounts", raw, op)
        return None
    return Percent(Decimal(pct), other.path)


def _request_operand(value: Mapping[str, Any], info: fieldreg.FieldInfo, op: str,
                     ctx: ParseContext, raw: Any) -> Operand | None:
    """``{request: PATH}`` inside a prior-refund condition: the request's own field, which
    facts.py copies into every entry as ``request.PATH``."""
    other = fieldreg.lookup(value["request"])
    if other is None:
        ctx.error(f"unknown field `{value['request']}` for a request", value, "request", value=True)
        return None
    if "any" not in (info.kind, other.kind) and _family(info.kind) != _family(other.kind):
        ctx.error(f"`{info.path}` ({info.kind}) cannot be compared with `{other.path}` "
                  f"({other.kind})", raw, op)
        return None
    return FieldRef("request." + other.path)


_INVALID = object()


def _family(kind: str) -> str:
    return {"money": "number", "count": "number", "instant": "date", "date": "date"}.get(kind, kind)


def _check_literal(value: Any, info: fieldreg.FieldInfo, ctx: ParseContext, container: Any,
                   key: Any) -> Any:
    kind = info.kind
    shown = str(value)[:40]
    if kind == "any":
        if isinstance(value, (list, dict)) or value is None:
            ctx.error("compare client facts with plain values", container, key, value=True)
            return _INVALID
        return value
    if kind in ("money", "count"):
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            ctx.error(f"`{info.path}` is a number; `{shown}` is not", container, key, value=True)
            return _INVALID
        return value
    if kind in ("instant", "date"):
        if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
            ctx.error(f"`{info.path}` is compared by local date; write a date such as 2024-03-01",
                      container, key, value=True)
            return _INVALID
        return value
    if kind == "flag":
        if not isinstance(value, bool):
            ctx.error(f"`{info.path}` is true or false; `{shown}` is neither", container, key, value=True)
            return _INVALID
        return value
    if kind == "enum":
        if value not in info.values:
            ctx.error(f"`{shown}` is not a value of `{info.path}` ({', '.join(info.values)})"
                      f"{did_you_mean(value, info.values)}",
                      container, key, value=True)
            return _INVALID
        return value
    if not isinstance(value, str):
        ctx.error(f"`{info.path}` is text; write `{shown}` in quotes", container, key, value=True)
        return _INVALID
    return value


def positions_of(container: Any, key: Any, value: bool) -> tuple[int, int]:
    if isinstance(container, LocDict):
        return container.vpos(key) if value else container.pos(key)
    if isinstance(container, LocList):
        return container.pos(key if isinstance(key, int) else None)
    return (1, 1)
