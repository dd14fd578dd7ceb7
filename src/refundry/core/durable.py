"""The ``durable`` backend: rules matched by the durable-rules Rete engine, used the safe way.

durable-rules 2.0.28 has traps (docs/backends.md and the reference notes list them): it compares
strings with numbers as text, loops forever on rules its own session state satisfies, drops
firings when threads share a session, fires an ``or`` once per true branch, gets ``or`` inside
item lists wrong, overflows a 64-entry stack, hangs at 512 sibling conditions and limits a
ruleset to 1024 sessions. So:

- conditions reach it already lowered (``lowering.py``): conjunctions of integer comparisons on
  keys this module names; no user string, decimal or date is ever sent, so nothing is compared
  as text and nothing becomes a regular expression; each rule's alternatives become separate
  durable rules (``r<rule>_<n>``), and a rule with too many is refused at load;
- every condition is AND-ed with a guard key the engine's own state fact never has;
- one request is one fact: asserted, every activation drained, retracted; nothing stays;
- one session per compiled ruleset, used under a lock, so threads never share it unguarded and
  the 1024-session limit is never near;
- rules are split into several durable rulesets when one would hold too many alternatives;
- handles are freed by ``close()`` (or when the matcher is garbage collected), so ruleset
  versions can be replaced at run time without leaking.
"""

from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import durable_rules_engine as _engine

from refundry.core.errors import EvaluationError, RulesetError
from refundry.core.loader import CompiledRuleset
from refundry.core.lowering import ITEMS_KEY, ItemsLit, Lit, Term, TooComplex, lower

GUARD_KEY, GUARD = "_t", "refund_request"
SID, FACT_ID = "s", "r"  # one live fact per session at a time, so fixed names cannot collide
ITEMS_LIST = "it"
# durable-rules leaves a new session's context uninitialised until an action has run in it, and
# delete_state then frees garbage (a segfault, seen under valgrind). So each session is primed
# first: one fact that fires one rule, drained and retracted.
PRIME_KEY, PRIME_RULE = "_p", "prime"
_PRIME_FACT = json.dumps({PRIME_KEY: 1, "id": "p", "sid": SID})
_PRIME_RETRACT = json.dumps({"id": "p", "sid": SID})
RESERVED = (GUARD_KEY, PRIME_KEY, "id", "sid", ITEMS_LIST)
# Safe limits, below the engine's: a 64-entry match stack (so at most 48 alternatives in one
# durable ruleset), 512 sibling conditions, 254 properties per fact.
MAX_TERMS_PER_RULE = 32
MAX_TERMS_PER_SHARD = 48
MAX_KEYS = 200
_OPS = {"ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}
_RETRACT = json.dumps({"id": FACT_ID, "sid": SID})


def _fnv1a(text: str) -> int:
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _check_hashes(keys: Iterable[str], where: str) -> None:
    """The engine tells properties apart by a 32-bit hash of their names only."""
    seen: dict[int, str] = {}
    for k in keys:
        other = seen.setdefault(_fnv1a(k), k)
        if other != k:  # pragma: no cover - our key names are short and checked not to collide
            raise RulesetError(f"durable backend: keys `{other}` and `{k}` collide in {where}")


def _lit_json(lit: Lit, prefix: str = "") -> dict[str, Any]:
    key = prefix + lit.key
    if lit.op == "eq":
        return {key: lit.value}
    return {_OPS[lit.op]: {key: lit.value}}


def _term_json(term: Term) -> dict[str, Any]:
    conds: list[dict[str, Any]] = [{GUARD_KEY: GUARD}]
    for x in term:
        if isinstance(x, ItemsLit):
            inner = [_lit_json(lit, "$i.") for lit in x.term]
            body = inner[0] if len(inner) == 1 else {"$and": inner}
            conds.append({"$iany" if x.quantifier == "any" else "$iall": {ITEMS_LIST: body}})
        else:
            conds.append(_lit_json(x))
    return {"all": [{"m": conds[0] if len(conds) == 1 else {"$and": conds}}]}


def _term_keys(term: Term) -> set[str]:
    return {x.key for x in term if isinstance(x, Lit)}


@attrs.define
class _Shard:
    handle: int
    keys: tuple[str, ...]  # request-level keys its rules read, besides the number of items
    names: dict[str, int]  # durable rule name -> rule index
    items: bool  # whether its rules read items
    template: str = ""  # the fact's JSON with %d for each code: every value is an int we made

    def __attrs_post_init__(self) -> None:
        parts = [f'"{k}":%d' for k in (*self.keys, ITEMS_KEY)]
        if self.items:
            parts.append(f'"{ITEMS_LIST}":[%s]')
        fixed = json.dumps({GUARD_KEY: GUARD, "id": FACT_ID, "sid": SID}, separators=(",", ":"))
        self.template = "{" + ",".join(parts) + "," + fixed[1:]


class DurableMatcher:
    """One composed ruleset on the durable engine; callable like every backend's matcher."""

    def __init__(self, ruleset: CompiledRuleset) -> None:
        try:
            lowered = lower([r.when for r in ruleset.rules], max_terms=MAX_TERMS_PER_RULE)
        except TooComplex as exc:
            rule = ruleset.rules[exc.args[0]]
            raise RulesetError(
                f"too complex for the durable backend: more than {MAX_TERMS_PER_RULE} "
                "alternative paths once `any`, `in` and `not` are expanded; split the rule",
                path=rule.path, line=rule.line, column=rule.column, rule_id=rule.id) from None
        self.encoder = lowered.encoder
        item_keys = {b.key + s for b in self.encoder.item_books.values()
                     for s in (("l", "h") if b.ordered else ("",))}
        item_keys |= {k for k, _ in self.encoder.item_pre}
        if len(item_keys) > MAX_KEYS:
            raise RulesetError(f"too many item fields for the durable backend ({len(item_keys)})",
                               path=ruleset.top.path)
        _check_hashes(list(item_keys), "items")
        self._item_keys = tuple(sorted(item_keys))
        self._item_template = "{" + ",".join(f'"{k}":%d' for k in self._item_keys) + "}"
        self._lock = threading.Lock()
        self._closed = False
        self.shards: list[_Shard] = []
        self.definitions: list[str] = []  # the JSON each durable ruleset was created from
        handles: list[int] = []
        self._finalizer = weakref.finalize(self, _delete_rulesets, handles)
        try:
            for group in self._groups(ruleset, lowered.rules):
                rules: dict[str, Any] = {}
                keys: set[str] = set()
                items = False
                for index, terms in group:
                    for j, term in enumerate(terms):
                        rules[f"r{index}_{j}"] = _term_json(term)
                        keys |= _term_keys(term)
                        items = items or any(isinstance(x, ItemsLit) for x in term)
                _check_hashes([*RESERVED, *keys], "request keys")
                rules[PRIME_RULE] = {"all": [{"m": {PRIME_KEY: 1}}]}
                name = f"refundry-{ruleset.ref.digest[7:19]}-{len(self.shards)}"
                definition = json.dumps(rules)
                handle = _engine.create_ruleset(name, definition)
                handles.append(handle)
                self.definitions.append(definition)
                _prime(handle)
                names = {n: int(n[1:].split("_")[0]) for n in rules if n != PRIME_RULE}
                self.shards.append(_Shard(handle, tuple(sorted(keys - {ITEMS_KEY})), names, items))
        except _engine.error as exc:  # pragma: no cover - lowering emits only forms known to load
            self._finalizer()
            raise RulesetError(f"the durable engine refused the ruleset: {exc}",
                               path=ruleset.top.path) from None
        self.handles = tuple(handles)

    @staticmethod
    def _groups(ruleset: CompiledRuleset, lowered: Sequence[tuple[Term, ...]]
                ) -> list[list[tuple[int, tuple[Term, ...]]]]:
        """Rules packed in order into durable rulesets small enough for the engine's limits."""
        groups: list[list[tuple[int, tuple[Term, ...]]]] = [[]]
        count, keys = 0, set[str]()
        for index, terms in enumerate(lowered):
            if not terms:
                continue  # never true: nothing to match
            rule_keys = set().union(*(_term_keys(t) for t in terms))
            if len(rule_keys) > MAX_KEYS:
                rule = ruleset.rules[index]
                raise RulesetError(f"reads too many fields for the durable backend "
                                   f"({len(rule_keys)}, at most {MAX_KEYS})", path=rule.path,
                                   line=rule.line, column=rule.column, rule_id=rule.id)
            if groups[-1] and (count + len(terms) > MAX_TERMS_PER_SHARD
                               or len(keys | rule_keys) > MAX_KEYS):
                groups.append([])
                count, keys = 0, set()
            groups[-1].append((index, terms))
            count += len(terms)
            keys |= rule_keys
        return [g for g in groups if g]

    def payloads(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[str]:
        """The JSON fact each durable ruleset gets for this request (integers only)."""
        coded, coded_items = self.encoder.encode(facts, items)
        keys, template = self._item_keys, self._item_template
        listed = ",".join([template % tuple([ci[k] for k in keys]) for ci in coded_items])
        out = []
        for shard in self.shards:
            values = [coded[k] for k in shard.keys]
            values.append(coded[ITEMS_KEY])
            if shard.items:
                out.append(shard.template % (*values, listed))
            else:
                out.append(shard.template % tuple(values))
        return out

    def __call__(self, facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[int]:
        payloads = self.payloads(facts, items)
        hits: set[int] = set()
        with self._lock:
            if self._closed:
                raise EvaluationError("this ruleset was closed; use the engine that replaced it")
            for shard, payload in zip(self.shards, payloads, strict=True):
                for name in self._fire(shard.handle, payload):
                    hits.add(shard.names[name])
        return sorted(hits)

    @staticmethod
    def _fire(handle: int, payload: str) -> set[str]:
        """Assert, drain every activation, retract: the safe pattern. Caller holds the lock."""
        fired: set[str] = set()  # a set: the engine may report one rule more than once
        stored = ok = False
        try:
            rc, off = _engine.assert_fact(handle, payload)
            stored = rc == 0  # 1: no rule matched and nothing was stored
            if stored:
                started = _engine.start_action_for_state(handle, off)
                msg = started[1] if started else None
                while msg:  # '{"r3_0":{"m":{...}}}'
                    fired.add(msg[2:msg.index('"', 2)])
                    msg = _engine.complete_and_start_action(handle, off)
            ok = True
        except _engine.error as exc:
            raise EvaluationError(f"the durable engine failed: {exc}") from None
        finally:
            if not ok:
                _engine.delete_state(handle, SID)  # drop the session, whatever it holds
                _prime(handle)
            elif stored:
                _engine.retract_fact(handle, _RETRACT)
        return fired

    def leftovers(self) -> int:
        """Facts still held by the engine's sessions besides its own state: 0 between calls."""
        with self._lock:
            total = 0
            for shard in self.shards:
                try:
                    facts = json.loads(_engine.get_facts(shard.handle, SID))
                except _engine.error:
                    continue  # no session yet
                total += sum(1 for f in facts if GUARD_KEY in f)
            return total

    def close(self) -> None:
        """Free the engine's rulesets; later calls raise ``EvaluationError``."""
        with self._lock:
            self._closed = True
            self._finalizer()


def _prime(handle: int) -> None:
    rc, off = _engine.assert_fact(handle, _PRIME_FACT)
    if rc == 0:
        started = _engine.start_action_for_state(handle, off)
        msg = started[1] if started else None
        while msg:
            msg = _engine.complete_and_start_action(handle, off)
        _engine.retract_fact(handle, _PRIME_RETRACT)


def _delete_rulesets(handles: list[int]) -> None:
    for handle in handles:
        # delete_ruleset alone keeps the session's memory (about 80 KB) for good.
        with contextlib.suppress(_engine.error):  # no session yet
            _engine.delete_state(handle, SID)
        with contextlib.suppress(_engine.error):  # pragma: no cover - already gone
            _engine.delete_ruleset(handle)
    handles.clear()


class DurableBackend:
    """Compiles each composed ruleset to durable-rules rulesets; ``close()`` frees them all."""

    name = "durable"

    def __init__(self) -> None:
        self._matchers: weakref.WeakSet[DurableMatcher] = weakref.WeakSet()

    def compile(self, ruleset: CompiledRuleset) -> DurableMatcher:
        matcher = DurableMatcher(ruleset)
        self._matchers.add(matcher)
        return matcher

    def close(self) -> None:
        for matcher in list(self._matchers):
            matcher.close()
