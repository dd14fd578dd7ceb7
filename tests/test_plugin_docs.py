"""Every hook is documented (in its spec and in docs/plugins.md) and has a test of its own.

Adding a hook to ``refundry.hookspecs`` without a ``### `name``` section in docs/plugins.md
that names each argument, or without ``test_hook_<name>`` in tests/test_plugins.py, fails here;
so does a documented hook that no longer exists.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from refundry.plugins import spec as hookspecs

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
HOOKS = {name: fn for name, fn in vars(hookspecs).items()
         if name.startswith("refundry_") and callable(fn)}


def _sections() -> dict[str, str]:
    parts = re.split(r"^### `(refundry_\w+)`\s*$", DOC, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def _test_names() -> set[str]:
    tree = ast.parse((ROOT / "tests" / "test_plugins.py").read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_there_are_hooks() -> None:
    assert {"refundry_sources", "refundry_sinks", "refundry_enrich_request",
            "refundry_decision_written"} <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_spec_documents_every_argument(name: str) -> None:
    fn = HOOKS[name]
    doc = inspect.getdoc(fn) or ""
    assert doc, f"hook `{name}` has no docstring"
    for arg in inspect.signature(fn).parameters:
        assert f":param {arg}:" in doc, f"hook `{name}`: argument `{arg}` is undocumented"
    assert ":return:" in doc, f"hook `{name}`: the return value is undocumented"
    hints = inspect.get_annotations(fn)
    assert "return" in hints and all(a in hints for a in inspect.signature(fn).parameters), (
        f"hook `{name}` is not fully typed")


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_in_the_plugin_docs(name: str) -> None:
    sections = _sections()
    assert name in sections, f"docs/plugins.md has no section for hook `{name}`"
    for arg in inspect.signature(HOOKS[name]).parameters:
        assert f"`{arg}`" in sections[name], f"docs/plugins.md: `{name}` does not describe `{arg}`"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_has_a_test_of_its_own(name: str) -> None:
    assert f"test_hook_{name}" in _test_names(), f"tests/test_plugins.py has no test_hook_{name}"


def test_the_docs_describe_no_hook_that_does_not_exist() -> None:
    assert set(_sections()) <= set(HOOKS)
