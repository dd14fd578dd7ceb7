"""The durable backend against the compiled one (and the interpreter), on real rulesets and on
random condition trees. The backends share everything but matching, so any difference here is a
matching bug: in lowering (checked on its own through ``lowering.holds``) or in durable-rules."""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refundry
from refundry.core import fields as fieldreg
from refundry.core.backends import CompiledBackend, InterpretedBackend
from refundry.core.durable import MAX_TERMS_PER_RULE, DurableBackend
from refundry.core.jurisdictions import EU_MEMBERS
from refundry.core.language import ParseContext, parse_condition
from refundry.core.lowering import holds, lower

ROOT = Path(__file__).resolve().parent.parent
RULESETS = ROOT / "rulesets"
LONG = os.environ.get("REFUNDRY_LONG") == "1"


def slow(test: Any) -> Any:
    """The `slow` marker, and skipped unless REFUNDRY_LONG=1 (whether or not a conftest does it)."""
    return pytest.mark.slow(pytest.mark.skipif(not LONG, reason="long run: set REFUNDRY_LONG=1")(test))


@pytest.fixture(scope="module")
def engines() -> tuple[refundry.Engine, refundry.Engine]:
    return (refundry.Engine.from_path(RULESETS),
            refundry.Engine.from_path(RULESETS, backend="durable"))


# --- random condition trees --------------------------------------------------------------

REQ_PATHS = ["amount", "transaction.amount", "transaction.express_shipping_amount",
             "items.count", "prior_refunds.count", "reason", "refund_to.type",
             "disclosures.withdrawal_info_given", "evidence.proof_of_dispatch",
             "transaction.delivered_at", "disclosures.withdrawal_info_given_at",
             "jurisdiction.country", "disclosures.refund_policy", "facts.tier", "facts.score"]
ITEM_PATHS = ["condition", "failure", "quantity", "unit_price", "final_sale", "personalized", "sku"]
WINDOWS = ("w1", "w2")
MONEY = [Decimal(0), Decimal("10"), Decimal("99.99"), Decimal(100), Decimal("500.00"), 7]
COUNTS = [0, 1, 2, 5]
DATES = [dt.date(2024, 3, 1), dt.date(2024, 3, 15), dt.date(2024, 2, 29)]
TEXTS = ["DE", "FR", "original", "SKU-1", ""]
ANY = [1, 0, "gold", "1", Decimal("2.5"), True, False, dt.date(2024, 3, 1), "DE"]


def _info(path: str, item: bool) -> fieldreg.FieldInfo:
    info = fieldreg.lookup(path, item=item)
    assert info is not None, path
    return info


def _literal(rng: random.Random, info: fieldreg.FieldInfo) -> Any:
    kind = info.kind
    if kind == "money":
        return rng.choice(MONEY)
    if kind == "count":
        return rng.choice(COUNTS)
    if kind in ("instant", "date"):
        return rng.choice(DATES)
    if kind == "flag":
        return rng.choice([True, False])
    if kind == "enum":
        return rng.choice(info.values)
    if kind == "text":
        return rng.choice(TEXTS)
    return rng.choice(ANY)


def _raw_leaf(rng: random.Random, item: bool) -> dict[str, Any]:
    path = rng.choice(ITEM_PATHS if item else REQ_PATHS)
    info = _info(path, item)
    ops = ["eq", "ne", "in", "not_in", "exists"]
    if info.ordered:
        ops += ["lt", "le", "gt", "ge"] * 2
    op = rng.choice(ops)
    if op == "exists":
        return {"field": path, "exists": rng.choice([True, False])}
    if op in ("in", "not_in"):
        n = rng.choice([1, 2, 3, 12])  # 12: longer than lowering's MAX_IN, so precomputed
        values = [_literal(rng, info) for _ in range(n)]
        if info.kind == "flag":
            values = values[:2]
        return {"field": path, op: values}
    r = rng.random()
    if r < 0.15:
        same = [p for p in (ITEM_PATHS if item else REQ_PATHS)
                if _family(_info(p, item).kind) == _family(info.kind) or "any" in (info.kind, _info(p, item).kind)]
        return {"field": path, op: {"field": rng.choice(same)}}
    if r < 0.25 and info.kind in ("money", "count", "any"):
        base = rng.choice(["unit_price", "quantity"] if item else
                          ["amount", "transaction.amount", "facts.score", "items.count"])
        return {"field": path, op: {"percent": rng.choice([0, 10, 50, Decimal("12.5"), 100, 200]),
                                    "of": base}}
    return {"field": path, op: _literal(rng, info)}


def _family(kind: str) -> str:
    return {"money": "number", "count": "number", "instant": "date", "date": "date"}.get(kind, kind)


def _raw_tree(rng: random.Random, depth: int, item: bool = False) -> dict[str, Any]:
    r = rng.random()
    if depth <= 0 or r < 0.35:
        if not item and r < 0.08:
            return {rng.choice(["within", "after"]): rng.choice(WINDOWS)}
        return _raw_leaf(rng, item)
    if r < 0.55:
        return {rng.choice(["all", "any"]): [_raw_tree(rng, depth - 1, item)
                                             for _ in range(rng.randint(1, 3))]}
    if r < 0.75:
        return {"not": _raw_tree(rng, depth - 1, item)}
    if not item:
        return {rng.choice(["any_item", "all_items"]): _raw_tree(rng, min(depth - 1, 2), True)}
    return _raw_tree(rng, depth - 1, item)


def _parse(raw: dict[str, Any]) -> Any:
    errors: list[str] = []
    ctx = ParseContext(lambda message, *a, **k: errors.append(message), {w: None for w in WINDOWS}, "g")
    node = parse_condition(raw, ctx)
    return None if errors else node


def _random_trees(rng: random.Random, n: int) -> list[Any]:
    out = []
    while len(out) < n:
        node = _parse(_raw_tree(rng, rng.randint(1, 4)))
        if node is not None:
            out.append(node)
    return out


def _value(rng: random.Random, info: fieldreg.FieldInfo) -> Any:
    kind = info.kind
    if kind == "money":
        base = Decimal(rng.choice(MONEY))
        return base + rng.choice([Decimal(0), Decimal("0.01"), Decimal("-0.01"),
                                  Decimal("0.000000001"), Decimal("-0.000000001"), Decimal(0)])
    if kind == "count":
        return max(0, rng.choice(COUNTS) + rng.choice([-1, 0, 0, 1]))
    if kind in ("instant", "date"):
        return rng.choice(DATES) + dt.timedelta(days=rng.choice([-1, 0, 0, 1]))
    if kind == "any":
        return rng.choice(ANY + [Decimal("7.000"), 2, (1, 2), {"a": 1}])
    return _literal(rng, info)


def _random_facts(rng: random.Random) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    facts: dict[str, Any] = {}
    for path in REQ_PATHS:
        if rng.random() < 0.75:
            facts[path] = _value(rng, _info(path, False))
    for w in WINDOWS:
        if rng.random() < 0.8:
            facts[f"window.{w}.within"] = rng.choice([True, False])
    items = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        items.append({p: (_value(rng, _info(p, True)) if rng.random() < 0.8 else None)
                      for p in fieldreg.item_fields()})
    return facts, items


@pytest.fixture(scope="module")
def base_ruleset(engines: Any) -> Any:
    return next(iter(engines[0].library.composites.values()))


def _with_conditions(base: Any, nodes: list[Any]) -> Any:
    template = base.rules[0]
    rules = tuple(attrs.evolve(template, id=f"g{i}", when=n) for i, n in enumerate(nodes))
    return attrs.evolve(base, rules=rules)


@pytest.mark.parametrize("seed", range(4))
def test_random_condition_trees_match_on_all_backends(base_ruleset: Any, seed: int) -> None:
    rng = random.Random(seed)
    checked = 0
    for _batch in range(12):
        nodes = _random_trees(rng, 25)
        # keep only rules the durable backend accepts; refusal is tested on its own below
        lowered = []
        for n in nodes:
            try:
                lower([n], max_terms=MAX_TERMS_PER_RULE)
                lowered.append(n)
            except Exception:  # noqa: BLE001 - TooComplex
                pass
        assert len(lowered) >= 20
        ruleset = _with_conditions(base_ruleset, lowered)
        low = lower([r.when for r in ruleset.rules], max_terms=MAX_TERMS_PER_RULE)
        interp = InterpretedBackend().compile(ruleset)
        compiled = CompiledBackend().compile(ruleset)
        durable = DurableBackend().compile(ruleset)
        for _ in range(60):
            facts, items = _random_facts(rng)
            expected = interp(facts, items)
            coded, coded_items = low.encoder.encode(facts, items)
            by_lowering = [i for i, t in enumerate(low.rules) if holds(t, coded, coded_items)]
            assert by_lowering == expected, (facts, items, [ruleset.rules[i].when for i in
                                                            set(expected) ^ set(by_lowering)])
            assert compiled(facts, items) == expected
            assert durable(facts, items) == expected, (
                facts, items, [ruleset.rules[i].when for i in set(expected) ^ set(durable(facts, items))])
            checked += 1
        assert durable.leftovers() == 0
        durable.close()
    assert checked == 12 * 60


def test_many_rules_split_over_several_durable_rulesets(base_ruleset: Any) -> None:
    rng = random.Random(99)
    nodes = []
    while len(nodes) < 150:
        n = _random_trees(rng, 1)[0]
        try:
            lower([n], max_terms=MAX_TERMS_PER_RULE)
        except Exception:  # noqa: BLE001 - TooComplex
            continue
        nodes.append(n)
    ruleset = _with_conditions(base_ruleset, nodes)
    durable = DurableBackend().compile(ruleset)
    interp = InterpretedBackend().compile(ruleset)
    assert len(durable.shards) > 1
    for _ in range(300):
        facts, items = _random_facts(rng)
        assert durable(facts, items) == interp(facts, items)
    assert durable.leftovers() == 0


# --- generated requests over every shipped ruleset ---------------------------------------

REASONS = _info("reason", False).values
CURRENCIES = ["EUR", "EUR", "GBP", "JPY", "USD", "AUD"]  # AUD: au-consumer compares its threshold in AUD only


def _walk(node: Any, item: bool, out: dict[tuple[bool, str], set[Any]]) -> None:
    from refundry.core.language import All, AnyOf, Compare, Items, Literal, Not

    if isinstance(node, (All, AnyOf)):
        for c in node.children:
            _walk(c, item, out)
    elif isinstance(node, Not):
        _walk(node.child, item, out)
    elif isinstance(node, Items):
        _walk(node.child, True, out)
    elif isinstance(node, Compare):
        values = out.setdefault((item, node.path), set())
        if isinstance(node.operand, Literal) and node.op != "exists":
            v = node.operand.value
            values.update(v if isinstance(v, frozenset) else (v,))


class RequestGen:
    """Boundary-heavy requests for one composed ruleset: every literal the rules compare with,
    one cent either side, every enum value, missing fields, and notice dates around each
    window's last day at local times near midnight."""

    def __init__(self, comp: Any) -> None:
        from refundry.core import jurisdictions

        self.comp = comp
        self.literals: dict[tuple[bool, str], set[Any]] = {}
        for rule in comp.rules:
            _walk(rule.when, False, self.literals)
        # sets of strings iterate in a per-process order: sort, so a seed means one sequence
        self.literals = {k: sorted(v, key=lambda x: (type(x).__name__, repr(x)))  # type: ignore[misc]
                         for k, v in self.literals.items()}
        self.paths = sorted(p for p in comp.paths() if fieldreg.lookup(p) is not None)
        codes = set()
        for scope in comp.jurisdictions:
            if scope == "EU":
                codes |= set(jurisdictions.EU_MEMBERS)
            elif scope == "*":
                codes |= {"DE", "US-CA", "GB", "AU"}
            else:
                codes.add(scope)
        self.codes = sorted(c for c in codes if jurisdictions.default_timezone(c))
        self.day0 = max(layer.effective_from for layer in comp.layers)
        self.as_of = dt.datetime.combine(self.day0, dt.time(12), dt.UTC)

    def money(self, rng: random.Random, path: str, item: bool = False) -> str:
        lits = [v for v in self.literals.get((item, path), ()) if isinstance(v, (int, Decimal))]
        r = rng.random()
        if lits and r < 0.6:
            v = Decimal(rng.choice(lits)) + rng.choice([Decimal("-0.01"), Decimal(0), Decimal("0.01")])
            return str(max(v, Decimal(0)))
        if r < 0.7:
            return rng.choice(["0", "0.00", "0.001", "999999999999.99", "119.990000001"])
        return f"{rng.randint(0, 2000)}.{rng.randint(0, 99):02d}"

    def reason(self, rng: random.Random) -> str:
        # half the time a reason the ruleset names: rules that need a rare mix of facts (the FTC
        # refund rules: not_received, not shipped, no stated date, past a window) still match
        named = sorted(v for v in self.literals.get((False, "reason"), ()) if isinstance(v, str))
        return rng.choice(named) if named and rng.random() < 0.5 else rng.choice(REASONS)

    def instant(self, rng: random.Random, day: dt.date, zone: str) -> str:
        import zoneinfo

        t = rng.choice([dt.time(0, 30), dt.time(12), dt.time(23, 30), dt.time(9, 15)])
        local = dt.datetime.combine(day, t, zoneinfo.ZoneInfo(zone))
        if rng.random() < 0.3:
            local = local.astimezone(dt.UTC)
        return local.isoformat()

    def _edge(self, rng: random.Random, window: Any, start: dt.date) -> dt.date:
        """A day around the window's last day (before any roll-forward to a working day)."""
        from dateutil.relativedelta import relativedelta

        end = start
        for n, unit in window.period.steps:
            if unit == "days":
                end += dt.timedelta(days=n)
            elif unit == "weeks":
                end += dt.timedelta(weeks=n)
            elif unit in ("months", "billing_cycles"):
                end += relativedelta(months=n)
            else:
                end += dt.timedelta(days=n * 7 // 5)
        return end + dt.timedelta(days=rng.randint(-2, 5))

    def request(self, rng: random.Random, i: int) -> dict[str, Any]:
        from refundry.core import jurisdictions

        code = rng.choice(self.codes)
        zone = jurisdictions.default_timezone(code)
        assert zone
        start = self.day0 + dt.timedelta(days=rng.randint(0, 500))
        req: dict[str, Any] = {
            "request_id": f"gen-{i}", "client_id": self.comp.client or rng.choice(["any-shop", "acme"]),
            "industry": self.comp.industry or "ecommerce", "jurisdiction": code,
            "currency": rng.choice(CURRENCIES), "reason": self.reason(rng),
            "customer": {"id": "c-1"}, "transaction": {"id": "t-1"},
        }
        req["amount"] = self.money(rng, "amount")
        req["transaction"]["amount"] = self.money(rng, "transaction.amount")
        days: dict[str, dt.date] = {}  # one window's start and notice, around its last day
        if self.comp.windows:
            window = rng.choice(self.comp.windows)
            days[window.start] = start
            days[window.notice] = self._edge(rng, window, start)
        for path in self.paths:
            info = fieldreg.lookup(path)
            assert info is not None
            if path in ("amount", "transaction.amount", "reason", "jurisdiction", "requested_at",
                        "currency", "client_id", "industry", "request_id") or path in {
                            d.path for d in fieldreg.DERIVED}:
                continue
            if rng.random() < 0.2:
                continue  # missing
            if info.kind == "money":
                value: Any = self.money(rng, path)
            elif info.kind == "count":
                lits = [v for v in self.literals.get((False, path), ()) if isinstance(v, int)]
                # without literals, a mid-month value: counts such as a billing closing day
                # (1-31) are otherwise generated as 0 a third of the time, an invalid request
                value = max(0, rng.choice(lits or [15]) + rng.choice([-1, 0, 1]))
            elif info.kind in ("instant", "date"):
                day = days.get(path) or (start if rng.random() < 0.5 else
                                         start + dt.timedelta(days=rng.randint(-3, 20)))
                value = day.isoformat() if info.kind == "date" else self.instant(rng, day, zone)
            elif info.kind == "flag":
                value = rng.choice([True, False])
            elif info.kind == "enum":
                value = rng.choice(info.values)
            elif info.kind == "any":
                lits = list(self.literals.get((False, path), ())) or [1, "x"]
                value = rng.choice(lits + ["other", 0, True])
                value = str(value) if isinstance(value, Decimal) else value
                value = value.isoformat() if isinstance(value, dt.date) else value
            else:
                lits = [v for v in self.literals.get((False, path), ()) if isinstance(v, str)]
                value = rng.choice(lits + ["other-value", "original"])
            _put(req, path, value)
        cycles = any(unit == "billing_cycles" for w in self.comp.windows for _n, unit in w.period.steps)
        if cycles and rng.random() < 0.8:
            _put(req, "finance.billing_cycle_closing_day", rng.choice([1, 15, 28, 30, 31]))
        if "payment_method" in req["transaction"]:  # its `type` is required
            req["transaction"]["payment_method"].setdefault("type", "card")
        if isinstance(req.get("refund_to"), dict):
            req["refund_to"].setdefault("type", rng.choice(["card", "store_credit"]))
        notice_day = days.get("requested_at") or start + dt.timedelta(days=rng.randint(0, 30))
        req["requested_at"] = self.instant(rng, notice_day, zone)
        req["items"] = [self.item(rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        if rng.random() < 0.3:
            req["prior_refunds"] = [{"amount": self.money(rng, "prior_refunds.total"),
                                     "refunded_at": self.instant(rng, start, zone)}]
            if rng.random() < 0.2:  # a retry of an executed refund: the engine's duplicate check
                req["prior_refunds"][0]["request_id"] = rng.choice([f"gen-{i}", "other"])
        return req

    def item(self, rng: random.Random) -> dict[str, Any]:
        it: dict[str, Any] = {"sku": rng.choice(["SKU-1", "SHOE-1"]), "quantity": rng.randint(1, 3),
                              "unit_price": self.money(rng, "unit_price", True)}
        for name, info in fieldreg.item_fields().items():
            if name in it or rng.random() < 0.3:
                continue
            if info.kind == "flag":
                it[name] = rng.random() < 0.3
            elif info.kind == "enum":
                it[name] = rng.choice(info.values)
        return it


def _put(req: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target = req
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = value


def _differential(engines: Any, n: int, seed: int) -> tuple[int, int]:
    compiled, durable = engines
    comps = list(compiled.library.composites.values())
    assert comps, "no shipped rulesets were loaded"
    rng = random.Random(seed)
    invalid = checked = 0
    for i in range(n):
        comp = comps[i % len(comps)]
        gen = _GENS.setdefault(comp.ref.digest, RequestGen(comp))
        raw = gen.request(rng, i)
        try:
            req = refundry.parse_request(raw)
        except refundry.InvalidRequest:
            invalid += 1
            continue
        a = compiled.evaluate(req, as_of=gen.as_of, ruleset=comp.id)
        b = durable.evaluate(req, as_of=gen.as_of, ruleset=comp.id)
        assert a.to_dict() == b.to_dict(), raw
        assert not a.errors, a.errors
        checked += 1
    return checked, invalid


_GENS: dict[str, RequestGen] = {}


def test_generated_requests_decide_identically(engines: Any) -> None:
    checked, invalid = _differential(engines, 10_000, seed=1)
    assert checked >= 9_500 and invalid <= 500


def test_generated_requests_reach_every_outcome_and_rule(engines: Any) -> None:
    """The generator is worth something only if it makes every rule match somewhere."""
    compiled = engines[0]
    rng = random.Random(2)
    for comp in compiled.library.composites.values():
        gen = RequestGen(comp)
        seen_rules: set[str] = set()
        outcomes: set[str] = set()
        for i in range(1500):
            d = compiled.evaluate(gen.request(rng, i), as_of=gen.as_of, ruleset=comp.id)
            seen_rules.update(d.rule_ids)
            outcomes.add(d.outcome)
        missed = {r.id for r in comp.rules} - seen_rules
        # rulesets added later may hold rules only rare combinations reach; most must be hit
        assert len(missed) <= len(comp.rules) // 4, (comp.id, sorted(missed))
        assert len(outcomes) >= 2, (comp.id, outcomes)


@slow
def test_generated_requests_long(engines: Any) -> None:
    checked, _ = _differential(engines, 200_000, seed=3)
    assert checked > 190_000


# --- the CLI -----------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "refundry.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_test_passes_on_durable_with_the_same_report() -> None:
    default = _cli("test", "rulesets", "--json")
    durable = _cli("test", "rulesets", "--json", "--backend", "durable")
    assert default.returncode == 0, default.stderr
    assert durable.returncode == 0, durable.stderr
    assert json.loads(durable.stdout) == json.loads(default.stdout)
    assert json.loads(durable.stdout)["passed"] > 0 and json.loads(durable.stdout)["failed"] == 0


def test_cli_evaluate_with_durable_prints_the_same_decision() -> None:
    args = ("evaluate", "examples/request.json", "--rulesets", "rulesets")
    default = _cli(*args)
    durable = _cli(*args, "--backend", "durable")
    assert durable.returncode == 0, durable.stderr
    assert json.loads(durable.stdout) == json.loads(default.stdout)
    assert json.loads(durable.stdout)["outcome"] == "approve"


TOO_COMPLEX = """\
ruleset: too-complex
version: 1.0.0
effective_from: 2024-01-01
industry: ecommerce
jurisdictions: [DE]
rules:
  - id: small
    when: {field: amount, gt: 10}
    effect: manual_review
    code: small
    message: m
    customer_message: c
  - id: every-combination
    when:
      all:
        - {field: reason, in: [defective, changed_mind, wrong_item, not_received, other, overpayment]}
        - {field: currency, in: [EUR, GBP, USD, CHF, SEK, DKK]}
    effect: manual_review
    code: big
    message: m
    customer_message: c
"""


def test_a_rule_beyond_the_safe_limit_is_refused_at_load_naming_it(tmp_path: Path) -> None:
    (tmp_path / "too-complex.yaml").write_text(TOO_COMPLEX)
    refundry.Engine.from_path(tmp_path)  # fine for the compiled backend
    with pytest.raises(refundry.RulesetError) as info:
        refundry.Engine.from_path(tmp_path, backend="durable")
    err = info.value
    assert err.rule_id == "every-combination" and err.line == 13  # the rule's `- id:` line
    assert err.path and err.path.endswith("too-complex.yaml")
    assert "durable" in str(err) and "\n" not in str(err)
    result = _cli("test", str(tmp_path), "--backend", "durable")
    assert result.returncode == 3
    assert "rule `every-combination`" in result.stderr and "Traceback" not in result.stderr


# --- what reaches the engine -------------------------------------------------------------


def _leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, k)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v, key)]
    return [(key, value)]


def test_only_integers_reach_the_engine_and_no_trap_operator_is_used(engines: Any) -> None:
    """No user string (so no regex, no text comparison), no decimal, no date, no division."""
    rng = random.Random(4)
    backend = DurableBackend()
    for comp in engines[0].library.composites.values():
        matcher = backend.compile(comp)
        for definition in matcher.definitions:
            text = json.dumps(json.loads(definition))
            for trap in ("$mt", "$imt", "$div", "$add", "$sub", "$mul", "$nex", "$or", '"$s"', '"sid"'):
                assert trap not in text
            for key, value in _leaves(json.loads(definition)):
                assert isinstance(value, int) or (key == "_t" and value == "refund_request")
        gen = RequestGen(comp)
        for i in range(200):
            req = refundry.parse_request(gen.request(rng, i))
            prepared = engines[0]._prepared[comp.ref.digest]  # the facts every backend gets
            facts, items = prepared.facts.build(req, prepared.facts.context(req))
            for payload in matcher.payloads(facts, items):
                for key, value in _leaves(json.loads(payload)):
                    if key in ("_t", "id", "sid"):
                        continue
                    assert type(value) is int, (key, value)
    backend.close()


# --- threads, sessions, swaps, memory ----------------------------------------------------


def _requests(engines: Any, n: int, seed: int) -> list[tuple[Any, Any, dict[str, Any]]]:
    compiled = engines[0]
    comps = list(compiled.library.composites.values())
    rng = random.Random(seed)
    out = []
    for i in range(n):
        comp = comps[i % len(comps)]
        gen = _GENS.setdefault(comp.ref.digest, RequestGen(comp))
        req = refundry.parse_request(gen.request(rng, i))
        expected = compiled.evaluate(req, as_of=gen.as_of, ruleset=comp.id).to_dict()
        out.append((req, (gen.as_of, comp.id), expected))
    return out


def _threads_agree(engines: Any, per_thread: int, threads: int = 4) -> None:
    durable = engines[1]
    work = _requests(engines, min(per_thread, 2000), seed=10)
    wrong: list[Any] = []
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            for k in range(per_thread):
                req, (as_of, rid), expected = work[(k + offset) % len(work)]
                got = durable.evaluate(req, as_of=as_of, ruleset=rid).to_dict()
                if got != expected:
                    wrong.append((req.request_id, got, expected))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads as much as possible
    try:
        pool = [threading.Thread(target=run, args=(t * 7919,)) for t in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors and not wrong, (errors[:1], wrong[:1], len(wrong))
    for prepared in durable._prepared.values():
        assert prepared.matcher.leftovers() == 0


def test_four_threads_agree_with_compiled(engines: Any) -> None:
    _threads_agree(engines, per_thread=1_000)


@slow
def test_four_threads_times_ten_thousand_agree_with_compiled(engines: Any) -> None:
    _threads_agree(engines, per_thread=10_000)


def test_more_threads_than_the_engine_has_sessions(engines: Any) -> None:
    """durable-rules allows 1024 sessions per ruleset; one shared session under a lock means
    any number of threads, one after the other, never reach that."""
    work = _requests(engines, 20, seed=11)
    durable = engines[1]
    results: list[bool] = []
    for n in range(1100):
        req, (as_of, rid), expected = work[n % len(work)]

        def one(req: Any = req, as_of: Any = as_of, rid: str = rid, expected: Any = expected) -> None:
            results.append(durable.evaluate(req, as_of=as_of, ruleset=rid).to_dict() == expected)
        t = threading.Thread(target=one)
        t.start()
        t.join()
    assert len(results) == 1100 and all(results)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def test_swapping_in_a_new_version_at_run_time(tmp_path: Path) -> None:
    shutil.copytree(RULESETS, tmp_path / "rulesets")
    old = refundry.Engine.from_path(tmp_path / "rulesets", backend="durable")
    acme = (tmp_path / "rulesets/ecommerce/acme-eu.yaml").read_text()
    newer = acme.replace("version: 1.0.0", "version: 1.1.0").replace(
        "effective_from: 2024-01-01", "effective_from: 2024-06-01").replace("gt: 500", "gt: 300")
    (tmp_path / "rulesets/ecommerce/acme-eu-1.1.yaml").write_text(newer)
    new = refundry.Engine.from_path(tmp_path / "rulesets", backend="durable")
    request = json.loads((ROOT / "examples/request.json").read_text())
    request.update(client_id="acme", amount="400.00", requested_at="2024-07-10T10:00:00+02:00")
    request["transaction"].update(amount="420.00", delivered_at="2024-07-01T10:00:00+02:00")
    assert "acme-large-refund-review" not in old.evaluate(request).rule_ids
    current = new  # what a service would do: swap the reference, then free the old one
    old.close()
    decision = current.evaluate(request)
    assert "acme-large-refund-review" in decision.rule_ids
    assert decision.ruleset and decision.ruleset.version == "1.1.0"
    stale = old.evaluate(request)
    assert stale.outcome == "manual_review" and "closed" in stale.errors[0]
    compiled = refundry.Engine.from_path(tmp_path / "rulesets")
    assert compiled.evaluate(request).to_dict() == decision.to_dict()


def test_many_swaps_reuse_handles_and_keep_memory_flat(engines: Any) -> None:
    comp = next(iter(engines[0].library.composites.values()))
    work = _requests(engines, 5, seed=12)
    prepared = engines[0]._prepared[comp.ref.digest]
    facts, items = prepared.facts.build(work[0][0], prepared.facts.context(work[0][0]))
    expected = InterpretedBackend().compile(comp)(facts, items)

    def swaps(n: int, close: bool) -> list[int]:
        seen = []
        for _ in range(n):
            matcher = DurableBackend().compile(comp)
            assert matcher(facts, items) == expected
            seen += matcher.handles
            if close:
                matcher.close()
            del matcher  # without close(), garbage collection frees the handles
        return seen

    swaps(100, True)
    gc.collect()
    before = _rss_mb()
    handles = swaps(600, True) + swaps(600, False)
    gc.collect()
    grown = _rss_mb() - before
    live = [h for h in handles if _alive(h)]
    assert not live, f"{len(live)} of {len(handles)} durable rulesets were never freed"
    assert grown < 8, f"rss grew {grown:.1f} MB over 1200 swaps"


def _alive(handle: int) -> bool:
    import durable_rules_engine

    try:
        durable_rules_engine.get_facts(handle, "s")
    except durable_rules_engine.error as exc:
        return "error code: 111" not in str(exc)  # 111: no ruleset has this handle
    return True


def test_alive_probe_tells_live_from_freed_handles(base_ruleset: Any) -> None:
    matcher = DurableBackend().compile(base_ruleset)
    assert all(_alive(h) for h in matcher.handles)
    matcher.close()
    assert not any(_alive(h) for h in matcher.handles)


@slow
def test_memory_stays_flat_over_a_million_evaluations(engines: Any) -> None:
    durable = engines[1]
    work = _requests(engines, 1000, seed=13)
    for k in range(50_000):
        req, (as_of, rid), _ = work[k % len(work)]
        durable.evaluate(req, as_of=as_of, ruleset=rid)
    gc.collect()
    before = _rss_mb()
    for k in range(1_000_000):
        req, (as_of, rid), _ = work[k % len(work)]
        durable.evaluate(req, as_of=as_of, ruleset=rid)
    gc.collect()
    assert _rss_mb() - before < 5


# --- a shrinking property test -----------------------------------------------------------

_EU = sorted(EU_MEMBERS)
_money = st.decimals(min_value=0, max_value=2000, places=2).map(str)
_flag = st.one_of(st.none(), st.booleans())


@st.composite
def eu_requests(draw: Any) -> dict[str, Any]:
    delivered = dt.date(2024, 1, 1) + dt.timedelta(days=draw(st.integers(0, 400)))
    notice = delivered + dt.timedelta(days=draw(st.integers(-1, 420)))
    hour = draw(st.sampled_from([0, 12, 23]))
    offset = draw(st.sampled_from(["+01:00", "+02:00", "Z"]))

    def at(day: dt.date) -> str:
        return f"{day.isoformat()}T{hour:02d}:30:00{offset}"

    req: dict[str, Any] = {
        "request_id": "h-1", "client_id": draw(st.sampled_from(["acme", "any-shop"])),
        "industry": "ecommerce", "jurisdiction": draw(st.sampled_from(_EU)),
        "requested_at": at(notice), "amount": draw(_money), "currency": "EUR",
        "reason": draw(st.sampled_from(["changed_mind"] * 4 + list(REASONS))), "customer": {"id": "c"},
        "transaction": {"id": "t", "amount": draw(_money)},
    }
    if draw(st.booleans()):
        req["transaction"]["delivered_at"] = at(delivered)
    if draw(st.booleans()):
        req["transaction"]["express_shipping_amount"] = draw(_money)
    if draw(st.booleans()):
        req["diminished_value"] = draw(_money)
    if (refund_to := draw(st.sampled_from([None, "original", "store_credit"]))) is not None:
        req["refund_to"] = refund_to
    for section, name in (("disclosures", "withdrawal_info_given"), ("evidence", "goods_received_back"),
                          ("evidence", "proof_of_dispatch"), ("consents", "other_refund_method")):
        if (value := draw(_flag)) is not None:
            req.setdefault(section, {})[name] = value
    if draw(st.booleans()):
        req.setdefault("disclosures", {})["withdrawal_info_given_at"] = at(
            delivered + dt.timedelta(days=draw(st.integers(0, 60))))
    item = st.fixed_dictionaries({"sku": st.just("S"), "quantity": st.integers(1, 3),
                                  "unit_price": _money},
                                 optional={"personalized": st.booleans(), "perishable": st.booleans(),
                                           "sealed_hygiene_opened": st.booleans(),
                                           "condition": st.sampled_from(_info("condition", True).values)})
    req["items"] = draw(st.lists(item, max_size=3))
    return req


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=eu_requests())
def test_property_durable_decides_like_compiled(engines: Any, request: dict[str, Any]) -> None:
    compiled, durable = engines
    a = compiled.evaluate(request)
    assert a.to_dict() == durable.evaluate(request).to_dict()
    assert a.outcome in ("approve", "deny", "manual_review")


# --- the semantics that are easy to get wrong, spelled out -------------------------------

_CASES = [
    # (condition, facts, items, expected)
    ({"field": "amount", "eq": 10}, {}, [], False),
    ({"not": {"field": "amount", "eq": 10}}, {}, [], True),  # negation of a missing field
    ({"field": "refund_to.type", "ne": "original"}, {}, [], False),  # ne on missing is false
    ({"not": {"field": "refund_to.type", "ne": "original"}}, {}, [], True),
    ({"field": "refund_to.type", "not_in": ["original"]}, {}, [], False),
    ({"not": {"field": "amount", "lt": 10}}, {}, [], True),
    ({"not": {"field": "amount", "gt": 10}}, {}, [], True),
    ({"field": "amount", "gt": "99.99"}, {"amount": Decimal("99.990000001")}, [], None),
    ({"field": "amount", "gt": 100}, {"amount": Decimal("100.000000001")}, [], True),
    ({"field": "amount", "le": 100}, {"amount": Decimal("100.00")}, [], True),
    ({"field": "amount", "gt": 5}, {"amount": Decimal("999999999999999.99")}, [], True),
    ({"field": "amount", "gt": {"percent": 50, "of": "transaction.amount"}},
     {"amount": Decimal("50.01"), "transaction.amount": Decimal("100.02")}, [], False),
    ({"field": "amount", "ge": {"field": "transaction.amount"}},
     {"amount": Decimal("7"), "transaction.amount": 7}, [], True),
    ({"field": "facts.tier", "gt": 3}, {"facts.tier": "gold"}, [], False),  # type mismatch
    ({"not": {"field": "facts.tier", "gt": 3}}, {"facts.tier": "gold"}, [], True),
    ({"field": "facts.tier", "eq": "99"}, {"facts.tier": 99}, [], False),  # never as text
    ({"field": "facts.tier", "exists": True}, {"facts.tier": {"a": 1}}, [], True),
    ({"all_items": {"field": "final_sale", "eq": True}}, {}, [], False),  # none: false
    ({"not": {"all_items": {"field": "final_sale", "eq": True}}}, {}, [], True),
    ({"not": {"any_item": {"field": "final_sale", "eq": True}}}, {}, [], True),
    ({"any_item": {"field": "final_sale", "eq": True}}, {},
     [{"final_sale": None}, {"final_sale": True}], True),
    ({"all_items": {"any": [{"field": "condition", "eq": "new"}, {"field": "quantity", "gt": 1}]}},
     {}, [{"condition": "new", "quantity": 1}, {"condition": "used", "quantity": 2}], True),
    ({"all_items": {"any": [{"field": "condition", "eq": "new"}, {"field": "quantity", "gt": 1}]}},
     {}, [{"condition": "new", "quantity": 1}, {"condition": None, "quantity": 1}], False),
    ({"within": "w1"}, {}, [], False),
    ({"not": {"within": "w1"}}, {}, [], True),
    ({"after": "w1"}, {"window.w1.within": True}, [], False),
]


@pytest.mark.parametrize("raw, facts, items, expected", _CASES)
def test_semantics_spelled_out(base_ruleset: Any, raw: Any, facts: Any, items: Any, expected: Any) -> None:
    node = _parse(raw)
    if expected is None:  # a string literal for an amount is refused at load
        assert node is None
        return
    assert node is not None, raw
    full_items = [{p: it.get(p) for p in fieldreg.item_fields()} for it in items]
    ruleset = _with_conditions(base_ruleset, [node])
    want = [0] if expected else []
    for backend in (InterpretedBackend(), CompiledBackend(), DurableBackend()):
        assert backend.compile(ruleset)(facts, full_items) == want, backend.name


def test_closing_while_threads_evaluate_never_crashes_or_approves_wrongly(engines: Any) -> None:
    durable = refundry.Engine.from_path(RULESETS, backend="durable")
    work = _requests(engines, 200, seed=14)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    underway = threading.Event()

    def run() -> None:
        try:
            for k in range(600):
                if k == 50:
                    underway.set()
                req, (as_of, rid), expected = work[k % len(work)]
                got = durable.evaluate(req, as_of=as_of, ruleset=rid).to_dict()
                if got != expected:
                    assert got["outcome"] == "manual_review" and "closed" in got["errors"][0]
                    outcomes.append("closed")
                else:
                    outcomes.append("same")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(4)]
    for t in pool:
        t.start()
    underway.wait()
    durable.close()  # while the threads are mid-way
    for t in pool:
        t.join()
    assert not errors, errors[:1]
    assert outcomes.count("same") + outcomes.count("closed") == 2400
    assert outcomes.count("closed") > 0 and outcomes.count("same") >= 50


DATA = Path(__file__).resolve().parent / "data" / "durable"


def test_a_ruleset_with_every_feature_decides_identically() -> None:
    """The shipped rulesets use few features; this made-up one uses business days, billing
    cycles, received notices, field references, percentages, client facts, long `in` lists
    and `or` inside `all_items`, through the same generator."""
    engines = (refundry.Engine.from_path(DATA), refundry.Engine.from_path(DATA, backend="durable"))
    (comp,) = engines[0].library.composites.values()
    matcher = engines[1]._prepared[comp.ref.digest].matcher
    assert matcher.encoder.pre and matcher.encoder.item_pre  # precomputation is exercised
    checked, invalid = _differential(engines, 4000, seed=21)
    assert checked >= 3800, invalid
    rng = random.Random(22)
    gen = RequestGen(comp)
    seen: set[str] = set()
    for i in range(3000):
        seen.update(engines[0].evaluate(gen.request(rng, i), as_of=gen.as_of, ruleset=comp.id).rule_ids)
    assert {r.id for r in comp.rules} <= seen


def test_equal_looking_literals_of_different_types_stay_apart(base_ruleset: Any) -> None:
    """`True == 1` in Python, but `gt: true` and `gt: 1` on a client fact are different rules."""
    nodes = [_parse({"field": "facts.tier", "gt": True}), _parse({"field": "facts.tier", "gt": 1}),
             _parse({"field": "facts.tier", "eq": Decimal("2.0")}), _parse({"field": "facts.tier", "eq": 2})]
    ruleset = _with_conditions(base_ruleset, nodes)
    for facts in ({"facts.tier": 2}, {"facts.tier": True}, {"facts.tier": Decimal("2.00")}):
        expected = InterpretedBackend().compile(ruleset)(facts, [])
        assert DurableBackend().compile(ruleset)(facts, []) == expected, facts


def test_engine_limits_are_kept_by_splitting(base_ruleset: Any) -> None:
    """durable-rules fails (error 303) when more than 64 conditions hold at once and hangs with
    512 sibling conditions; 600 thresholds that all hold are split into small durable rulesets."""
    nodes = [_parse({"field": "amount", "gt": i}) for i in range(600)]
    ruleset = _with_conditions(base_ruleset, nodes)
    durable = DurableBackend().compile(ruleset)
    assert len(durable.shards) >= 600 // 48
    assert durable({"amount": Decimal("1000")}, []) == list(range(600))
    assert durable({"amount": Decimal("300")}, []) == list(range(300))
    assert durable({}, []) == []
    durable.close()
