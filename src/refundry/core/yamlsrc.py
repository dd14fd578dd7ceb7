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


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same constructors on libyaml's parser: a few times faster on large rulesets."""


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


for _cls in (_Loader, _FastLoader):
    _cls.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    _cls.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
    _cls.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
    _cls.add_constructor("tag:yaml.org,2002:float", _decimal)


def load(text: str) -> Any:
    """Parse one YAML document. Raises ``yaml.YAMLError`` (with ``problem_mark``) on bad YAML."""
    try:
        return yaml.load(text, Loader=_FastLoader)  # noqa: S506 - a CSafeLoader
    except yaml.YAMLError:
        # libyaml words its errors (and places some) its own way: the pure-Python parser says
        # what is wrong as the error messages and their tests expect. Only a bad file pays it.
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def error_pos(exc: yaml.YAMLError) -> Pos:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return _pos(mark) if mark is not None else (1, 1)


def error_message(exc: yaml.YAMLError) -> str:
    """One line in an analyst's terms: what is wrong with the indentation or the brackets, not
    which parser state PyYAML was in. Anything not recognised keeps PyYAML's own words."""
    if isinstance(exc, DuplicateKey):
        return f"duplicate key `{exc.key}`"
    problem = str(getattr(exc, "problem", None) or exc)
    mark = getattr(exc, "problem_mark", None)
    started = getattr(exc, "context_mark", None)
    friendly = _explain(problem, mark, started)
    if friendly:
        return friendly
    context = getattr(exc, "context", None)
    if context and started is not None:
        context = f"{context} (started at line {started.line + 1})"
    msg = f"{context}: {problem}" if context else problem
    return "invalid yaml: " + " ".join(msg.split())


def _explain(problem: str, mark: yaml.Mark | None, started: yaml.Mark | None) -> str | None:
    if mark is None:
        return None
    line, column = mark.line + 1, mark.column + 1
    if "'\\t'" in problem or "'\t'" in problem:
        return f"line {line} is indented with a tab; indent with spaces only"
    word = _word_at(mark)
    shown = f"`{word}`" if word else f"line {line}"
    if problem.startswith("expected <block end>"):
        see = f" (see line {started.line + 1})" if started is not None else ""
        return (f"{shown} starts at column {column}, which lines up with no key above it; keys "
                f"of one mapping start in the same column{see}")
    if problem == "mapping values are not allowed here":
        before = _line_before(mark)
        what = f"`{before}:`" if before else f"line {line}"
        return (f"{what} reads as part of the value above it, not as a key: indent it like the "
                "keys around it, or quote a value that contains `: `")
    if problem.startswith(("expected ',' or '}'", "expected ',' or ']'")):
        closer = "}" if "}" in problem else "]"
        opened = f" opened on line {started.line + 1}" if started is not None else ""
        return f"the `{'{' if closer == '}' else '['}`{opened} is not closed with `{closer}` (or a `,` is missing) before line {line}"
    if problem == "could not find expected ':'":
        return f"line {line} needs a `:` after its key"
    if "end of stream" in problem and started is not None:
        return f"the quoted text that starts on line {started.line + 1} is never closed"
    return None


def _word_at(mark: yaml.Mark) -> str:
    """The key or token the parser stopped at, as the analyst typed it."""
    buffer = getattr(mark, "buffer", None)
    if not buffer:
        return ""
    rest = buffer[mark.pointer:mark.pointer + 80].split("\n", 1)[0].strip().lstrip("-? ")
    word = rest.split(":", 1)[0].strip() if ":" in rest else rest
    return word if word and len(word) <= 40 and "`" not in word else ""


def _line_before(mark: yaml.Mark) -> str:
    buffer = getattr(mark, "buffer", None)
    if not buffer:
        return ""
    start = buffer.rfind("\n", 0, mark.pointer) + 1
    text = buffer[start:mark.pointer].strip()
    return text if text and len(text) <= 40 and "`" not in text else ""
