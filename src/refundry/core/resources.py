"""Where the shipped schemas and baseline rulesets are: inside the installed package, or beside
the source tree in a checkout (an editable install)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_data"
_CHECKOUT = Path(__file__).resolve().parents[3]


def data_dir(name: str) -> Path:
    """``schemas`` or ``rulesets``: the packaged copy if installed, else the checkout's."""
    packaged = _PACKAGE_DATA / name
    if packaged.is_dir():
        return packaged
    return _CHECKOUT / name


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON schema by file name, e.g. ``ruleset.schema.json``."""
    return json.loads((data_dir("schemas") / name).read_text(encoding="utf-8"))
