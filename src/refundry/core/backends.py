"""Backends match a composed ruleset's conditions against one request's facts.

A backend gets the facts already derived (``facts.py``) and returns the indexes of the rules
whose conditions hold. Nothing else differs between backends: combining, amounts and deadlines
are shared, so a differential test of two backends tests only the matching.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import CodeType
from typing import Any, Protocol

from refundry.core.errors import RefundryError
from refundry.core.language import CodeGen
from refundry.core.loader import CompiledRuleset

Matcher = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], list[int]]


class Backend(Protocol):
    name: str

    def compile(self, ruleset: CompiledRuleset) -> Matcher:
        """Prepare a matcher once, at load; it is then called from many threads."""


class CompiledBackend:
    """The default: each ruleset becomes one generated Python function. Pure, so thread-safe."""

    name = "compiled"

    def __init__(self) -> None:
        # code objects by their source's digest: rulesets with the same rules share one compile
        self._codes: dict[bytes, tuple[str, CodeType]] = {}

    def compile(self, ruleset: CompiledRuleset) -> Matcher:
        match = CodeGen().build([rule.when for rule in ruleset.rules], index_on="reason",
                                codes=self._codes)

        def matcher(facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[int]:
            return match(facts.get, items)
        matcher.source = match.__refundry_source__  # type: ignore[attr-defined]
        return matcher


class InterpretedBackend:
    """Walks the condition tree: slow, obviously correct; the reference the others are tested
    against."""

    name = "interpreted"

    def compile(self, ruleset: CompiledRuleset) -> Matcher:
        conditions = [rule.when for rule in ruleset.rules]

        def matcher(facts: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[int]:
            return [i for i, c in enumerate(conditions) if c.evaluate(facts, items)]
        return matcher


def get_backend(name: str) -> Backend:
    if name == "compiled":
        return CompiledBackend()
    if name == "interpreted":
        return InterpretedBackend()
    if name == "durable":
        try:
            from refundry.core.durable import DurableBackend
        except ImportError as exc:  # pragma: no cover - until the durable backend lands
            raise RefundryError(f"backend `durable` is not available: {exc}") from None
        return DurableBackend()
    raise RefundryError(f"unknown backend `{name}`; use compiled or durable")
