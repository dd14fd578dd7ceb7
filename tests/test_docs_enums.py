"""The value tables in docs/ruleset-language.md are generated from the models: adding a reason,
an effect or a deadline name without regenerating them fails here.

Regenerate with: REFUNDRY_UPDATE_DOCS=1 pytest tests/test_docs_enums.py
"""

from __future__ import annotations

import os
import re

from refundry.core.fields import enum_tables
from refundry.core.models import REASONS

from .conftest import ROOT

DOC = ROOT / "docs" / "ruleset-language.md"
BLOCK = re.compile(r"(<!-- enums: generated from the models -->\n)(.*?)(<!-- /enums -->)", re.S)


def test_enum_tables_in_the_docs_match_the_models():
    text = DOC.read_text(encoding="utf-8")
    found = BLOCK.search(text)
    assert found, "docs/ruleset-language.md lost its generated enum block"
    if os.environ.get("REFUNDRY_UPDATE_DOCS") == "1":
        DOC.write_text(BLOCK.sub(lambda m: m[1] + enum_tables() + m[3], text), encoding="utf-8")
        return
    assert found[2] == enum_tables(), "stale: REFUNDRY_UPDATE_DOCS=1 pytest tests/test_docs_enums.py"


def test_every_reason_value_is_listed():
    block = BLOCK.search(DOC.read_text(encoding="utf-8"))[2]
    reason_row = next(line for line in block.splitlines() if line.startswith("| `reason` |"))
    assert all(f"`{r}`" in reason_row for r in REASONS)
