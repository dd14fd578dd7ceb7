"""The layout is the architecture: ``core`` <- ``records`` <- ``plugins`` <- ``app`` <- ``cli``.

A module may import its own layer and the layers before it, never a later one; the imports
between modules form no cycle; and no module reaches into another module's private names.
These checks read the source (``ast``), so they hold for imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "refundry"
LAYERS = ("core", "records", "plugins", "app", "cli")
# The root facade (``import refundry``) re-exports the public API; only its version may be read
# from inside the package, since importing the facade from a lower layer would be a cycle.
ROOT_NAMES_ALLOWED = {"__version__"}
# namedtuple's public API is spelt with a leading underscore.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every refundry import in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("refundry")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("refundry"):
                continue
            names = [a.name for a in node.names]
            # `from refundry.core import engine` imports the module refundry.core.engine.
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if submodules:
                found += [(s, [], node.lineno) for s in submodules]
            else:
                found.append((base, names, node.lineno))
    return found


def test_the_layers_exist_and_hold_every_module() -> None:
    loose = [m for m in MODULES if m != "refundry" and _layer(m) is None]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_dependencies_point_one_way(module: str) -> None:
    mine = _layer(module)
    assert mine is not None
    wrong = []
    for target, names, line in _imports(module):
        if target == "refundry":
            if set(names) - ROOT_NAMES_ALLOWED:
                wrong.append(f"line {line}: imports {names} from the root facade")
            continue
        theirs = _layer(target)
        if theirs is not None and theirs > mine:
            wrong.append(f"line {line}: {LAYERS[mine]} imports {target} ({LAYERS[theirs]})")
    assert not wrong, f"{module}: " + "; ".join(wrong)


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES
             if m != "refundry"}
    # A package's __init__ that re-exports its own submodules is not a cycle of behaviour.
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not (MODULES[m].name == "__init__.py"
                                                 and t.startswith(m + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _private_reaches(module: str) -> list[str]:
    """Private names imported from another module, and attributes ``x._name`` read on a
    parameter or variable that is not ``self``/``cls`` (another object's internals)."""
    found = [f"line {line}: imports `{n}` from {target}"
             for target, names, line in _imports(module) for n in names
             if n.startswith("_") and not n.startswith("__")]
    return found + _attribute_reaches(MODULES[module].read_text(encoding="utf-8"))


def _attribute_reaches(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and node.attr not in NAMEDTUPLE_API
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_members() -> None:
    reaches = {m: r for m in MODULES if (r := _private_reaches(m))}
    assert not reaches, "\n".join(f"{m}: {'; '.join(r)}" for m, r in sorted(reaches.items()))


def test_a_reach_into_another_objects_private_member_is_found() -> None:
    source = "def f(store):\n    with store._lock:\n        return self._x, cls._y, t._replace()\n"
    assert _attribute_reaches(source) == ["store._lock"]


# Functions of MAX_LINES or more that are still to be split (issue 11: the batch runner as a
# small class). The list can only shrink: an entry that is short now fails the test too.
MAX_LINES = 60
KNOWN_LONG = {"refundry.app.runner.run"}


def _long_functions() -> set[str]:
    found = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and (node.end_lineno or node.lineno) - node.lineno + 1 >= MAX_LINES:
                found.add(f"{module}.{node.name}")
    return found


def test_every_function_is_under_sixty_lines() -> None:
    long = _long_functions()
    assert not long - KNOWN_LONG, f"functions of {MAX_LINES}+ lines: {sorted(long - KNOWN_LONG)}"
    assert not KNOWN_LONG - long, f"now short, so remove from KNOWN_LONG: {KNOWN_LONG - long}"
