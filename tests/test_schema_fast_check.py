"""The loader checks a ruleset document with jsonschema-rs first and trusts a pass without
asking jsonschema. That is only safe if the Rust checker is never looser than jsonschema on the
ruleset schema: a document it passes must pass jsonschema too. Here both libraries get the
shipped schema (with the condition grammar left to the condition parser, as the loader does)
and every shipped ruleset, then many one- and two-edit mutations of them: values of the wrong
type, texts with a trailing newline or non-ASCII digits (where Python's and Rust's regexes
differ), removed and added keys, from a fixed seed."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "ruleset.schema.json").read_text())


def _plain(value: Any) -> Any:
    """JSON types only: what the loader hands the fast check (dates as ISO text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


DOCS = [_plain(yaml.safe_load(p.read_text())) for p in sorted((ROOT / "rulesets").rglob("*.yaml"))
        if not p.name.endswith((".test.yaml", "_bad.yaml"))]


def _schemas() -> tuple[Any, Any]:
    schema = copy.deepcopy(SCHEMA)
    schema["$defs"]["condition"] = True
    return jsonschema_rs.validator_for(schema), jsonschema.Draft202012Validator(schema)


FAST, REFERENCE = _schemas()


def _places(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _places(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _places(v, (*path, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if path:
        node = doc
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]
    return doc


TEXTS = ["1.0.0\n", "EU\n", "14 days\n", "acme-eu\n", "a\n", "DE-BY\n", "x" * 81,
         "\u0661\u0664 days", "1.0.\u0663", "ab", "AB", "refund_due_by\n", "", " ", "14 days",
         "1.0.0", "EU", "manual_review", "approve", "deny", "request", "\u00e9t\u00e9", "2024-02-30"]


def _value(rng: random.Random) -> Any:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randint(-3, 10**6)
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return None
    if kind == 3:
        return rng.randint(1, 999) + 0.25
    if kind == 4:
        return [rng.choice(TEXTS) for _ in range(rng.randrange(3))]
    if kind == 5:
        return {rng.choice(TEXTS): rng.choice(TEXTS) for _ in range(rng.randrange(3))}
    return rng.choice(TEXTS)


def _mutated(rng: random.Random) -> Any:
    doc = copy.deepcopy(rng.choice(DOCS))
    for _ in range(rng.randint(1, 2)):
        path = rng.choice(_places(doc))
        how = rng.choice(["set", "drop", "add"])
        node = doc
        for step in path:
            node = node[step]
        if how == "drop" and path:
            doc = _drop(doc, path)
        elif how == "add" and isinstance(node, dict):
            node[rng.choice(TEXTS)] = _value(rng)
        else:
            doc = _set(doc, path, _value(rng))
    return doc


def test_every_shipped_ruleset_passes_both_checkers():
    assert DOCS, "no shipped rulesets found"
    for doc in DOCS:
        assert REFERENCE.is_valid(doc) and FAST.is_valid(doc), doc.get("id")


def test_the_rust_checker_is_never_looser_than_jsonschema():
    rng, refused, passed = random.Random(20261201), 0, 0
    for _ in range(3000):
        doc = _mutated(rng)
        try:
            fast = FAST.is_valid(doc)
        except (ValueError, TypeError):
            fast = False  # a value the Rust side cannot take: the loader asks jsonschema
        if fast:
            passed += 1
            assert REFERENCE.is_valid(doc), [e.message for e in REFERENCE.iter_errors(doc)][:3]
        else:
            refused += 1
    # both sides of the implication were exercised, or the property says nothing
    assert refused > 300 and passed > 300, (refused, passed)
