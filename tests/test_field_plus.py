"""`{field: OTHER, plus: N}`: an amount compared with another amount plus a fixed threshold."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from refundry import Engine

RULES = textwrap.dedent("""\
    ruleset: plus-test
    version: 1.0.0
    effective_from: 2020-01-01
    industry: healthcare
    jurisdictions: [US]
    rules:
      - id: over
        when: {field: transaction.amount, ge: {field: healthcare.gfe_amount, plus: 400}}
        effect: approve
        message: m
        customer_message: c
    """)


def _req(billed: str, gfe: str | None) -> dict:
    hc = {"gfe_amount": gfe} if gfe is not None else {}
    return {"request_id": "r", "client_id": "c", "industry": "healthcare", "jurisdiction": "US",
            "requested_at": "2024-05-01T10:00:00-04:00", "amount": "1.00", "currency": "USD",
            "reason": "billing_error", "customer": {"id": "p"},
            "transaction": {"id": "t", "amount": billed}, "healthcare": hc}


@pytest.mark.parametrize("backend", ["compiled", "interpreted"])
@pytest.mark.parametrize(("billed", "gfe", "outcome"), [
    ("1400.00", "1000.00", "approve"),          # exactly 400 over
    ("1399.99", "1000.00", "manual_review"),    # a cent short
    ("1400.00", None, "manual_review"),         # no estimate: the comparison is false
])
def test_plus_threshold(tmp_path: Path, backend: str, billed: str, gfe: str | None,
                        outcome: str) -> None:
    (tmp_path / "r.yaml").write_text(RULES)
    engine = Engine.from_path(tmp_path, backend=backend)
    assert engine.evaluate(_req(billed, gfe)).outcome == outcome


def test_plus_needs_an_amount_field(tmp_path: Path) -> None:
    from refundry.core.errors import RefundryError

    (tmp_path / "r.yaml").write_text(RULES.replace("healthcare.gfe_amount", "healthcare.billed_at"))
    with pytest.raises(RefundryError) as info:
        Engine.from_path(tmp_path)
    assert "`plus` needs an amount field" in str(info.value)
