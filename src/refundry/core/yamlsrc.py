"""YAML with positions: ``yaml.safe_load`` semantics, plus the line and column of every key and
item, so each error can point at the exact place in the file.

Differences from plain ``safe_load``, each on purpose: a duplicate key is an error (YAML lets the
last one win silently); decimal numbers load as ``Decimal`` from their text, never as floats;
``.inf`` and ``.nan`` are refused; a document of more than ``MAX_NODES`` values once its
aliases are expanded (the "billion laughs" is 516 bytes) or that refers to itself is refused
after parsing and before anything is built from it. Parsing uses libyaml when PyYAML has it (ten times faster,
same events and positions).
"""

from __future__ import annotations

from array import array
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

Pos = tuple[int, int]  # 1-based line and column


class LocDict(dict):
    """A mapping that remembers where it and each of its keys' values stand.

    Positions are only read to report an error or a test's coverage, yet a load of 2,000 rules
    kept more of them than of anything else: so they are packed into one array of 1-based
    line and column numbers (the mapping's start, then each key's and its value's), and the
    keys they belong to, instead of two dicts of tuples per mapping."""

    __slots__ = ("_keys", "_marks")
    _keys: tuple[Any, ...]
    _marks: array[int]

    def place(self, marks: array[int]) -> None:
        """Where it stands, once its keys are in: its start, then each key's and value's."""
        self._keys = tuple(self)
        self._marks = marks

    def _at(self, key: Any) -> int | None:
        try:
            return 2 + 4 * getattr(self, "_keys", ()).index(key)
        except ValueError:
            return None

    @property
    def start(self) -> Pos:
        marks = getattr(self, "_marks", _NO_MARKS)
        return (marks[0], marks[1])

    def pos(self, key: Any = None) -> Pos:
        at = None if key is None else self._at(key)
        if at is None:
            return self.start
        return (self._marks[at], self._marks[at + 1])

    def vpos(self, key: Any) -> Pos:
        at = self._at(key)
        if at is None:
            return self.pos(key)
        return (self._marks[at + 2], self._marks[at + 3])


class LocList(list):
    """A list that remembers where it and each of its items stand, packed as ``LocDict``'s."""

    __slots__ = ("_marks",)
    _marks: array[int]

    def place(self, marks: array[int]) -> None:
        """Where it stands: its start, then each item's."""
        self._marks = marks

    @property
    def start(self) -> Pos:
        marks = getattr(self, "_marks", _NO_MARKS)
        return (marks[0], marks[1])

    def pos(self, index: int | None = None) -> Pos:
        marks = getattr(self, "_marks", _NO_MARKS)
        if index is None or not 0 <= index < (len(marks) - 2) // 2:
            return (marks[0], marks[1])
        return (marks[2 + 2 * index], marks[3 + 2 * index])


_NO_MARKS = array("I", (1, 1))


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, mark: yaml.Mark) -> None:
        self.key = key
        self.problem_mark = mark
        super().__init__(f"duplicate key `{key}`")


def _pos(mark: yaml.Mark) -> Pos:
    return (mark.line + 1, mark.column + 1)


# Values in one document once every alias is expanded: 13 times the largest shipped ruleset,
# and small enough that schema validation and compilation of any document stay under a second.
MAX_NODES = 10_000

# A file with a syntax error is parsed again by PyYAML's own parser, whose messages and marks
# ``error_message`` turns into an analyst's terms; up to 32 KiB (2.5 times the largest shipped
# ruleset) that costs under a second, beyond it libyaml's own message (with its place) stands.
FRIENDLY_REPARSE_BYTES = 32_768


class _Loader(yaml.SafeLoader):
    pass


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


class TooLarge(yaml.YAMLError):
    def __init__(self, message: str, mark: yaml.Mark) -> None:
        self.problem = message
        self.problem_mark = mark
        super().__init__(message)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    loader.flatten_mapping(node)
    out = LocDict()
    marks = array("I", _pos(node.start_mark))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain scalar", key_node.start_mark)
        if key in out:
            raise DuplicateKey(key, key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        marks.extend(_pos(key_node.start_mark) + _pos(value_node.start_mark))
    out.place(marks)
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    marks = array("I", _pos(node.start_mark))
    for child in node.value:
        marks.extend(_pos(child.start_mark))
    out.place(marks)
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


def _checked(construct: Any, what: str) -> Any:
    """A scalar constructor whose ``ValueError`` (``2024-02-30``, an integer of 5,000 digits)
    becomes a YAML error at the value's place instead of a traceback."""
    def build(loader: _Loader, node: yaml.ScalarNode) -> Any:
        if len(node.value) > 64:
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} longer than 64 characters", node.start_mark)
        try:
            return construct(loader, node)
        except (ValueError, OverflowError):
            shown = str(node.value)[:40]
            raise yaml.constructor.ConstructorError(
                None, None, f"`{shown}` is not a {'real' if what == 'date' else 'valid'} {what}",
                node.start_mark) from None
    return build


_Loader.add_constructor("tag:yaml.org,2002:int", _checked(yaml.SafeLoader.construct_yaml_int, "integer"))
_Loader.add_constructor("tag:yaml.org,2002:timestamp",
                        _checked(yaml.SafeLoader.construct_yaml_timestamp, "date"))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
_Loader.add_constructor("tag:yaml.org,2002:float", _checked(_decimal, "number"))
_FastLoader.yaml_constructors = _Loader.yaml_constructors  # libyaml parses, the same code builds


def load(text: str) -> Any:
    """Parse one YAML document. Raises ``yaml.YAMLError`` (with ``problem_mark``) on bad YAML,
    ``TooLarge`` for a document that aliases would blow up."""
    try:
        return _load(_FastLoader(text))
    except yaml.MarkedYAMLError:
        if not hasattr(yaml, "CSafeLoader") or len(text) > FRIENDLY_REPARSE_BYTES:
            raise
    return _load(_Loader(text))  # raises the same error, in PyYAML's words


def _load(loader: yaml.SafeLoader) -> Any:
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_expansion(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with every alias expanded, without expanding: each
    node's size is computed once, so the count costs one pass over the distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise TooLarge(f"the yaml holds more than {MAX_NODES} values (aliases "
                               "expanded)", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise TooLarge("an alias refers to a node that contains it", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


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
