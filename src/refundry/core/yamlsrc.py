"""YAML with positions: ``yaml.safe_load`` semantics, plus the line and column of every key and
item, so each error can point at the exact place in the file.

Differences from plain ``safe_load``, each on purpose: a duplicate key is an error (YAML lets the
last one win silently); decimal numbers load as ``Decimal`` from their text, never as floats;
``.inf`` and ``.nan`` are refused.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

Pos = tuple[int, int]  # 1-based line and column


class LocDict(dict):
    """A mapping that remembers where it and each of its keys' values stand."""

    start: Pos = (1, 1)
    key_pos: dict[Any, Pos]
    value_pos: dict[Any, Pos]

    def pos(self, key: Any = None) -> Pos:
        if key is None:
            return self.start
        return getattr(self, "key_pos", {}).get(key, self.start)

    def vpos(self, key: Any) -> Pos:
        return getattr(self, "value_pos", {}).get(key, self.pos(key))


class LocList(list):
    start: Pos = (1, 1)
    item_pos: list[Pos]

    def pos(self, index: int | None = None) -> Pos:
        if index is None:
            return self.start
        items = getattr(self, "item_pos", [])
        return items[index] if 0 <= index < len(items) else self.start


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, mark: yaml.Mark) -> None:
        self.key = key
        self.problem_mark = mark
        super().__init__(f"duplicate key `{key}`")


def _pos(mark: yaml.Mark) -> Pos:
    return (mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    out = LocDict()
    out.start = _pos(node.start_mark)
    out.key_pos = {}
    out.value_pos = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain scalar", key_node.start_mark)
        if key in out:
            raise DuplicateKey(key, key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_pos[key] = _pos(key_node.start_mark)
        out.value_pos[key] = _pos(value_node.start_mark)
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.start = _pos(node.start_mark)
    out.item_pos = [_pos(child.start_mark) for child in node.value]
    return out


def _decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise yaml.constructor.ConstructorError(
            None, None, f"`{text}` is not a finite number", node.start_mark)
    return value


def _timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    # PyYAML raises a bare ValueError (a traceback) for 2024-02-30 or 2024-13-01; make it a
    # YAML error with the value's position like every other bad value.
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"`{node.value}` is not a real date", node.start_mark) from None


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)


def load(text: str) -> Any:
    """Parse one YAML document. Raises ``yaml.YAMLError`` (with ``problem_mark``) on bad YAML."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def error_pos(exc: yaml.YAMLError) -> Pos:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return _pos(mark) if mark is not None else (1, 1)


def error_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, DuplicateKey):
        return f"duplicate key `{exc.key}`"
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    started = getattr(exc, "context_mark", None)
    if context and started is not None:
        context = f"{context} (started at line {started.line + 1})"
    msg = f"{context}: {problem}" if context else str(problem)
    return "invalid yaml: " + " ".join(msg.split())
