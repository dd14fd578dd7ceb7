"""Lowering condition trees to integer comparisons, for matchers that cannot be trusted with more.

The ``durable`` backend hands conditions to a C engine that compares strings with numbers as
text, hashes strings, has no exact decimals, no negation that sees missing fields, and an ``or``
that misbehaves inside item lists. So before a request reaches such a matcher, everything is
turned into small integers whose comparisons mean exactly what ``language._compare`` means:

- every field a ruleset names gets a *code*. For text, enums and flags the code is 0 when the
  field is missing, 1 for a value no rule names, and 2.. for each literal rules name. For
  amounts, counts and dates the code is the value's rank among the literals rules compare it
  with (``2*i`` equal to the i-th literal, odd between them), sent twice: once with a missing
  field as 0 (``lo``, for ``gt``/``ge``) and once as a huge number (``hi``, for ``lt``/``le``),
  so a comparison on a missing field is false and its negation true, with one comparison each;
- what a rank cannot say (a field compared with another field, percentages, client ``facts.*``
  of unknown type, very long ``in`` lists, an ``or`` inside ``all_items``) is evaluated here by
  the interpreter (``Node.evaluate``, the reference semantics) and sent as a 0/1 code;
- negations are pushed down to the comparisons and each rule becomes a disjunction of
  conjunctions (DNF), so the matcher needs no ``or`` at all; item conditions become
  ``any item satisfies this conjunction`` or ``every item satisfies this conjunction``.

No user string, decimal or date ever reaches the matcher: only integers computed here.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from refundry.core import fields as fieldreg
from refundry.core.language import All, AnyOf, Compare, Items, Literal, Node, Not, Window

MISSING_LO = 0
MISSING_HI = 1 << 30  # above every rank: a missing field is never `lt`/`le` anything
MAX_IN = 8  # longer `in` lists would multiply a rule's terms; they are precomputed instead
_ORDERED = ("money", "count", "instant", "date")


class TooComplex(Exception):
    """A rule lowers to more terms than the caller allows."""


@attrs.frozen
class Lit:
    """``coded[key] OP value`` on the request (or, inside ``ItemsLit``, on one item)."""

    key: str
    op: str  # eq ne lt le gt ge
    value: int

    def holds(self, coded: Mapping[str, int]) -> bool:
        v = coded[self.key]
        return {"eq": v == self.value, "ne": v != self.value, "lt": v < self.value,
                "le": v <= self.value, "gt": v > self.value, "ge": v >= self.value}[self.op]


@attrs.frozen
class ItemsLit:
    """``any``/``all`` items satisfy every literal of ``term``."""

    quantifier: str  # any | all
    term: tuple[Lit, ...]

    def holds(self, items: Sequence[Mapping[str, int]]) -> bool:
        test = any if self.quantifier == "any" else all
        return test(all(lit.holds(it) for lit in self.term) for it in items)


Term = tuple[Lit | ItemsLit, ...]
ITEMS_KEY = "n"  # the number of items, always sent


class Codebook:
    """Turns one field's values into codes, for that field's literals."""

    def __init__(self, key: str, ordered: bool, literals: set[Any]) -> None:
        self.key = key
        self.ordered = ordered
        if ordered:
            self.thresholds = sorted(literals)
        else:
            # typed text/enum/flag values are one type per field, so dict equality is Python's.
            self.codes = {v: i + 2 for i, v in enumerate(sorted(literals, key=repr))}

    def code(self, value: Any) -> int:
        if self.ordered:
            i = bisect.bisect_left(self.thresholds, value)
            if i < len(self.thresholds) and self.thresholds[i] == value:
                return 2 * (i + 1)
            return 2 * i + 1
        try:
            return self.codes.get(value, 1)
        except TypeError:  # an unhashable client fact is present, and equal to no literal
            return 1

    def of(self, literal: Any) -> int:
        return self.code(literal)


@attrs.frozen
class Lowered:
    """A ruleset lowered: per rule, its terms (an empty tuple never matches)."""

    rules: tuple[tuple[Term, ...], ...]
    encoder: Encoder


class Encoder:
    """Request facts and items -> the coded dicts the lowered terms are about."""

    def __init__(self) -> None:
        self.books: dict[str, Codebook] = {}  # request path -> codebook
        self.item_books: dict[str, Codebook] = {}
        self.pre: list[tuple[str, Node]] = []  # (key, node) evaluated on the request
        self.item_pre: list[tuple[str, Node]] = []  # (key, node) evaluated on each item
        self._pre_keys: dict[tuple[bool, str], str] = {}

    def precomputed(self, node: Node, item: bool) -> str:
        # By repr, not by equality: `Literal(True) == Literal(1)` in Python, but `gt: true` and
        # `gt: 1` on a client fact are different conditions.
        ident = (item, repr(node))
        found = self._pre_keys.get(ident)
        if found:
            return found
        table = self.item_pre if item else self.pre
        key = f"{'q' if item else 'p'}{len(table)}"
        table.append((key, node))
        self._pre_keys[ident] = key
        return key

    def keys(self) -> list[str]:
        """Every request-level key the coded dict holds."""
        out = [ITEMS_KEY]
        for book in self.books.values():
            out += [book.key + "l", book.key + "h"] if book.ordered else [book.key]
        return out + [k for k, _ in self.pre]

    def encode(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]
               ) -> tuple[dict[str, int], list[dict[str, int]]]:
        coded: dict[str, int] = {ITEMS_KEY: len(items)}
        _encode(self.books, facts, coded)
        for key, node in self.pre:
            coded[key] = 1 if node.evaluate(facts, items) else 0
        coded_items = []
        if self.item_books or self.item_pre:
            for it in items:
                ci: dict[str, int] = {}
                _encode(self.item_books, it, ci)
                for key, node in self.item_pre:
                    ci[key] = 1 if node.evaluate(it, ()) else 0
                coded_items.append(ci)
        else:
            coded_items = [{} for _ in items]
        return coded, coded_items


def _encode(books: Mapping[str, Codebook], values: Mapping[str, Any], out: dict[str, int]) -> None:
    """Each book's code for its value into ``out``; an ordered book has a low and a high key,
    both ``MISSING_*`` when the value is absent (no comparison can then match)."""
    for path, book in books.items():
        value = values.get(path)
        if book.ordered:
            if value is None:
                out[book.key + "l"], out[book.key + "h"] = MISSING_LO, MISSING_HI
            else:
                out[book.key + "l"] = out[book.key + "h"] = book.code(value)
        else:
            out[book.key] = MISSING_LO if value is None else book.code(value)


def _native(node: Compare) -> bool:
    """Whether ranks can say this comparison exactly; everything else is precomputed."""
    if node.op == "exists":
        return True
    if not node.typed or not isinstance(node.operand, Literal):
        return False
    return not (node.op in ("in", "not_in") and len(node.operand.value) > MAX_IN)


def _kind(path: str, item: bool) -> str:
    info = fieldreg.lookup(path, item=item)
    return info.kind if info else "any"


def _collect(node: Node, lits: dict[tuple[bool, str], set[Any]], item: bool) -> None:
    if isinstance(node, (All, AnyOf)):
        for c in node.children:
            _collect(c, lits, item)
    elif isinstance(node, Not):
        _collect(node.child, lits, item)
    elif isinstance(node, Items) and node.collection == "items":
        _collect(node.child, lits, True)
    elif isinstance(node, Window):
        lits.setdefault((False, node.key), set()).update((True, False))
    elif isinstance(node, Compare) and _native(node):
        found = lits.setdefault((item, node.path), set())
        if node.op != "exists":
            value = node.operand.value  # type: ignore[union-attr]
            found.update(value if node.op in ("in", "not_in") else (value,))


def lower(conditions: Sequence[Node], *, max_terms: int) -> Lowered:
    """Lower each rule's condition; raises ``TooComplex(index)`` for a rule with more than
    ``max_terms`` terms."""
    lits: dict[tuple[bool, str], set[Any]] = {}
    for cond in conditions:
        _collect(cond, lits, False)
    enc = Encoder()
    for (item, path), values in sorted(lits.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        books = enc.item_books if item else enc.books
        key = f"{'i' if item else 'a'}{len(books)}"
        books[path] = Codebook(key, _kind(path, item) in _ORDERED, values)
    out = []
    for index, cond in enumerate(conditions):
        try:
            out.append(tuple(_Lowerer(enc, max_terms).dnf(cond, True, False)))
        except TooComplex:
            raise TooComplex(index) from None
    return Lowered(tuple(out), enc)


class _Lowerer:
    def __init__(self, enc: Encoder, max_terms: int) -> None:
        self.enc = enc
        self.max_terms = max_terms

    def _or(self, parts: list[list[Term]]) -> list[Term]:
        seen: dict[Term, None] = {}
        for p in parts:
            for t in p:
                seen.setdefault(t, None)
        if len(seen) > self.max_terms:
            raise TooComplex
        return list(seen)

    def _and(self, parts: list[list[Term]]) -> list[Term]:
        terms: list[Term] = [()]
        for p in parts:
            terms = [a + tuple(x for x in b if x not in a) for a in terms for b in p]
            if len(terms) > self.max_terms:
                raise TooComplex
        return self._or([terms])

    def dnf(self, node: Node, positive: bool, item: bool) -> list[Term]:
        if isinstance(node, Not):
            return self.dnf(node.child, not positive, item)
        if isinstance(node, (All, AnyOf)):
            parts = [self.dnf(c, positive, item) for c in node.children]
            conjunctive = isinstance(node, All) == positive
            return self._and(parts) if conjunctive else self._or(parts)
        if isinstance(node, Window):
            book = self.enc.books[node.key]
            lit = Lit(book.key, "eq" if positive else "ne", book.of(node.mode == "within"))
            return [(lit,)]
        if isinstance(node, Items) and node.collection != "items":
            # Prior-refund entries are not sent to the matcher: the quantifier is precomputed.
            key = self.enc.precomputed(node, item)
            return [(Lit(key, "eq", 1 if positive else 0),)]
        if isinstance(node, Items):
            return self._items(node, positive)
        if isinstance(node, Compare):
            if not _native(node):
                key = self.enc.precomputed(node, item)
                return [(Lit(key, "eq", 1 if positive else 0),)]
            return self._compare(node, positive, item)
        raise TypeError(f"unknown condition node {type(node).__name__}")  # pragma: no cover

    def _compare(self, node: Compare, positive: bool, item: bool) -> list[Term]:
        book = (self.enc.item_books if item else self.enc.books)[node.path]
        lo = book.key + "l" if book.ordered else book.key
        hi = book.key + "h" if book.ordered else book.key
        op = node.op
        if op == "exists":
            present = node.operand.get({}) is positive
            return [(Lit(lo, "gt" if present else "eq", MISSING_LO),)]
        value = node.operand.value  # type: ignore[union-attr]
        if op in ("in", "not_in"):
            codes = sorted({book.of(v) for v in value})
            member: list[Term] = [(Lit(lo, "eq", c),) for c in codes]
            outside: Term = (Lit(lo, "gt", MISSING_LO),) + tuple(Lit(lo, "ne", c) for c in codes)
            if (op == "in") == positive:
                return member if op == "in" else member + [(Lit(lo, "eq", MISSING_LO),)]
            # `in` negated: missing or outside; `not_in` positive: present and outside.
            return [outside[1:]] if op == "in" else [outside]
        c = book.of(value)
        if op == "eq":
            return [(Lit(lo, "eq" if positive else "ne", c),)]
        if op == "ne":
            if positive:
                return [(Lit(lo, "ne", c), Lit(lo, "gt", MISSING_LO))]
            return [(Lit(lo, "eq", c),), (Lit(lo, "eq", MISSING_LO),)]
        # Ordered: `lo` has missing below every rank and `hi` above it, so one comparison
        # is false on a missing field and its negation (`missing or a >= c`) true.
        pos, neg = {"lt": ((hi, "lt"), (hi, "ge")), "le": ((hi, "le"), (hi, "gt")),
                    "gt": ((lo, "gt"), (lo, "le")), "ge": ((lo, "ge"), (lo, "lt"))}[op]
        key, cmp = pos if positive else neg
        return [(Lit(key, cmp, c),)]

    def _items(self, node: Items, positive: bool) -> list[Term]:
        n_pos, n_zero = Lit(ITEMS_KEY, "gt", 0), Lit(ITEMS_KEY, "eq", 0)
        inner = self.dnf(node.child, positive, True)
        if (node.quantifier == "any_item") == positive:
            # some item satisfies the (possibly negated) child: `any` distributes over `or`.
            some: list[Term] = ([(n_pos,)] if () in inner else
                                [(ItemsLit("any", _lits(t)),) for t in inner])
            # `not all_items` is also true when there are no items at all.
            return self._or([some if positive else [(n_zero,), *some]])
        # every item satisfies it: `all_items` is false on no items, its negation true.
        every = self._every(node.child, positive, inner)
        if node.quantifier == "all_items":
            return [] if every is None else [(n_pos,) + every]
        return [(n_zero,)] + ([] if every is None else [(n_pos,) + every])

    def _every(self, child: Node, positive: bool, inner: list[Term]) -> tuple[ItemsLit, ...] | None:
        if not inner:
            return None
        if len(inner) == 1:
            return (ItemsLit("all", _lits(inner[0])),) if inner[0] else ()
        # An `or` inside `every item`: the matcher gets it as one precomputed flag per item.
        key = self.enc.precomputed(child if positive else Not(child), True)
        return (ItemsLit("all", (Lit(key, "eq", 1),)),)


def _lits(term: Term) -> tuple[Lit, ...]:
    """An item condition's term: items cannot nest, so it holds only plain literals."""
    assert all(isinstance(x, Lit) for x in term)
    return term  # type: ignore[return-value]


def holds(terms: Sequence[Term], coded: Mapping[str, int], items: Sequence[Mapping[str, int]]) -> bool:
    """Pure-Python evaluation of lowered terms: lets tests check lowering apart from durable."""
    return any(all(x.holds(items) if isinstance(x, ItemsLit) else x.holds(coded) for x in t)
               for t in terms)
