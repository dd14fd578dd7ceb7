"""Hostile refund requests for issue 12: the shipped test requests (every case next to every
shipped ruleset) mutated by seeded random operators. Shared by tests/test_hostile_corpus.py
(5,000 in CI, 100,000 with REFUNDRY_LONG=1) and anyone who wants to reproduce a case: request
``i`` of seed ``s`` is always the same."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from typing import Any

import yaml

from refundry.app.testing import _plain, deep_merge

from .conftest import BASE_REQUEST, RULESETS

DEEP = "__refundry_deep__"  # stands for a list nested 1,500 deep (json.dumps cannot write it)

HOSTILE: tuple[Any, ...] = (
    None, "", " ", True, 0, -1, -5, 10**30, 1e308, float("nan"), [], {}, {"$ne": 1},
    "-10", "-0.01", "-10000", "１１９.９９", "1_19.99", "1.1999e2", "119.99\n", " 119.99",
    "1E+999999", "9" * 40, "NaN", "Infinity", Decimal("-5"), Decimal("1e-30"), "0", "0.00",
    "999999999999999", "5000.00", "a\ud800b", "\udfff", "x" * 70_000, "\x00\n`rm -rf`",
    "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-12:00", "9999-12-31", "2024-02-30",
    "2024-03-01", "2024-03-01T10:00:00", "=cmd|' /C calc'!A0", "ref:in.jsonl:1",
    "4111 1111 1111 1111", "Mars/Olympus", "ZZZ", "changed_mind ", DEEP,
)

MONEY = ("amount", "transaction.amount", "transaction.shipping_amount",
         "transaction.express_shipping_amount", "diminished_value", "items.0.unit_price",
         "prior_refunds.0.amount", "healthcare.amount_due", "healthcare.gfe_amount")


@cache
def shipped_requests() -> tuple[str, ...]:
    """Every request in the shipped ``*.test.yaml`` files, as canonical JSON text."""
    out = [json.dumps(BASE_REQUEST)]
    for path in sorted(RULESETS.rglob("*.test.yaml")):
        suite = yaml.safe_load(path.read_text())
        defaults = (suite.get("defaults") or {}).get("request") or {}
        for case in suite.get("cases") or ():
            request = _plain(deep_merge(defaults, case.get("request") or {}))
            out.append(json.dumps(request, default=_text))
    return tuple(out)


def _text(value: Any) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _paths(doc: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, f"{prefix}{key}.")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, f"{prefix}{i}.")
    yield prefix[:-1]


def _put(doc: dict, path: str, value: Any, *, delete: bool = False) -> None:
    """Set (or delete) ``path`` (dotted; digits index lists), creating what is missing; a path
    through a value of the wrong shape is left alone."""
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    target: Any = doc
    for key, nxt in zip(keys, keys[1:], strict=False):
        if isinstance(target, list) and isinstance(key, int):
            while len(target) <= key:
                target.append({})
            child = target[key]
        elif isinstance(target, dict):
            key = str(key)
            child = target.get(key)
        else:
            return
        if not isinstance(child, (dict, list)):
            child = [] if isinstance(nxt, int) else {}
            target[key] = child
        target = child
    last = keys[-1]
    if isinstance(target, list) and isinstance(last, int) and not delete:
        while len(target) <= last:
            target.append({})
        target[last] = value
    elif isinstance(target, dict):
        if delete:
            target.pop(str(last), None)
        else:
            target[str(last)] = value


def _value(rng: random.Random) -> Any:
    value = rng.choice(HOSTILE)
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


def mutate(request: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(request)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        paths = [p for p in _paths(doc) if p]
        if op < 0.2:
            # valid but adversarial: more than the order, a cent, a huge refund, exact limits
            amount = rng.choice(["0", "0.01", "5000.00", "999999999999999", "129.99", "10.00",
                                 f"{rng.randint(0, 100_000)}.{rng.randint(0, 99):02d}"])
            _put(doc, rng.choice(MONEY), amount)
        elif op < 0.35:
            _put(doc, rng.choice(MONEY), _value(rng))
        elif op < 0.7 and paths:
            _put(doc, rng.choice(paths), _value(rng))
        elif op < 0.8 and paths:
            _put(doc, rng.choice(paths), None, delete=True)
        elif op < 0.9:
            amount = rng.choice(["-10000", "-1", "0.01", "5000.00", str(rng.randint(0, 10**6))])
            _put(doc, f"prior_refunds.{rng.randint(0, 2)}.amount", amount)
        else:
            _put(doc, "facts." + rng.choice(["n", "list", "history"]), _value(rng))
    return doc


def corpus(n: int, seed: int = 12) -> Iterator[dict]:
    """``n`` hostile requests: shipped requests, each with 1-4 mutations."""
    rng = random.Random(seed)
    base = [json.loads(t, parse_float=Decimal) for t in shipped_requests()]
    for i in range(n):
        # Each its own request_id (unless a mutation hits it): a batch decides every line.
        yield mutate({**rng.choice(base), "request_id": f"hostile-{seed}-{i}"}, rng)


def parsed_requests(n: int, seed: int = 12) -> list[Any]:
    """The shipped test requests and ``n`` hostile ones (``corpus``), those that parse, parsed."""
    from refundry.core.errors import RefundryError
    from refundry.core.request import parse_request

    docs = [json.loads(text, parse_float=Decimal) for text in shipped_requests()]
    parsed = []
    for doc in [*docs, *corpus(n, seed)]:
        try:
            parsed.append(parse_request(doc))
        except RefundryError:
            continue
    return parsed


def with_deep(doc: Any) -> Any:
    """``doc`` with every ``DEEP`` stand-in replaced by a list nested 1,500 deep."""
    if doc == DEEP:
        nested: list = []
        for _ in range(1_500):
            nested = [nested]
        return nested
    if isinstance(doc, dict):
        return {k: with_deep(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [with_deep(v) for v in doc]
    return doc


def json_line(doc: dict, rng: random.Random) -> bytes:
    """``doc`` as one JSON line, written the way a careless or hostile producer might."""
    text = json.dumps(doc, default=str).replace(json.dumps(DEEP), "[" * 1_500 + "]" * 1_500)
    raw = text.encode()
    roll = rng.random()
    if roll < 0.03:
        cut = rng.randrange(len(raw))
        raw = raw[:cut] + b"\xff\xfe" + raw[cut:]
    elif roll < 0.05:
        raw = raw[: rng.randrange(len(raw))]
    elif roll < 0.06:
        raw = raw.replace(b'"amount": "', b'"amount": "\xef\xbc\x91', 1)  # a fullwidth 1
    return raw.replace(b"\n", b"\\n")


def refundable(request: Any) -> Decimal:
    """What is left of the order: ``transaction.amount`` minus every prior refund, never below
    zero, read from the parsed request (only a request that parses can be approved)."""
    left = request.transaction.amount - sum((p.amount for p in request.prior_refunds), Decimal(0))
    return max(left, Decimal(0))


def refundable_of_line(line: bytes) -> Decimal:
    """``refundable`` of a batch line, from its money fields alone. The run scrubs card numbers
    out of a request before parsing it, so a line whose only fault was a card-number-shaped
    number in a free field may be decided; what it may never get is more than its order has (more
    than it asked for is lawful: a withdrawal refunds every payment for the goods)."""
    from refundry.core.money import parse_money

    doc = json.loads(line, parse_float=Decimal)
    txn = doc["transaction"]
    prior = sum((parse_money(p["amount"]) for p in doc.get("prior_refunds") or ()), Decimal(0))
    return max(parse_money(txn["amount"]) - prior, Decimal(0))
