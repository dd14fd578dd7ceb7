"""Tenancy for the application: an identity's view of the store and of the rulesets.

The API, the console and the CLI all scope through here (docs/security.md): cases through
``records.access.ScopedStore``, rulesets by their ``client`` (a baseline has none: it is law,
no client's data, so every identity may read it, but only an ``admin`` may change one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refundry.app.service.identity import Identity, TokenError, Tokens
from refundry.core.loader import discover
from refundry.records.access import ScopedStore, ruleset_client
from refundry.records.events import RecordStore


def scoped(store: RecordStore, who: Identity) -> ScopedStore:
    return ScopedStore(store, who.name, who.clients)


def identity_named(tokens: str, name: str) -> Identity:
    """The identity called ``name`` in the token file ``tokens`` (``refundry ... --as``)."""
    found = [who for who in Tokens.load(tokens).by_digest.values() if who.name == name.strip()]
    if not found:
        raise TokenError(f"no identity `{name[:100]}` in `{tokens}`")
    if len({(w.roles, w.clients) for w in found}) > 1:
        raise TokenError(f"`{name[:100]}` has tokens with different roles or clients in "
                         f"`{tokens}`; give each identity one")
    return found[0]


def visible_rulesets(who: Identity, rulesets: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The loaded rulesets ``who`` may see: baselines, and overlays of its own clients."""
    return [r for r in rulesets if r.get("client") is None or who.sees(str(r["client"]))]


def _layer_problem(who: Identity, layer: Any) -> str | None:
    if who.has("admin"):
        return None
    if layer.client is None:
        return f"`{who.name}` may not change baseline `{layer.id}`; only an admin may"
    if not who.sees(str(layer.client)):
        return f"`{who.name}` may not change ruleset `{layer.id}` of client `{layer.client}`"
    return None


def change_problem(who: Identity, old: Iterable[Any], new: Iterable[Any]) -> str | None:
    """Why ``who`` may not put the rulesets ``new`` in force in place of ``old`` (each
    ``engine.rulesets``), or None. A layer counts as changed when a version of it is added,
    removed or has other content."""
    before = {(r.id, r.version, r.digest): r for r in old}
    after = {(r.id, r.version, r.digest): r for r in new}
    for key in sorted(set(before) ^ set(after)):
        problem = _layer_problem(who, after.get(key) or before[key])
        if problem:
            return problem
    return None


def proposal_problem(who: Identity, texts: Iterable[Any]) -> str | None:
    """Why ``who`` may not propose these ruleset texts (``POST /v1/rulesets/diff``): each is
    read for the ``client`` it declares; none declared is a baseline."""
    if who.has("admin"):
        return None
    for text in texts:
        if not isinstance(text, str):
            continue  # not a text: the proposal's own checks say so (400/422)
        client = ruleset_client(text)
        if client is None:
            return f"`{who.name}` may not propose a baseline; only an admin may"
        if not who.sees(client):
            return f"`{who.name}` may not propose a ruleset of client `{client}`"
    return None


def authoring_problem(who: Identity, loaded: Iterable[Any],
                      paths: Iterable[str | Path]) -> str | None:
    """Why ``who`` may not validate or diff the rulesets in the files under ``paths`` (of
    ``loaded``, an engine's rulesets; the baselines merely added under them do not count)."""
    files = {p.resolve() for p in discover(paths)}
    for layer in loaded:
        if layer.path and Path(layer.path).resolve() in files:
            problem = _layer_problem(who, layer)
            if problem:
                return problem
    return None
