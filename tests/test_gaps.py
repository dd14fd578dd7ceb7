"""`refundry validate --gaps`: values of the fields the rules test that no rule decides."""

from __future__ import annotations

from refundry.core.models import REASONS

RULESET = """\
ruleset: gap-shop
version: 1.0.0
effective_from: 2024-01-01
industry: ecommerce
jurisdictions: [NZ]
rules:
  - id: change-of-mind
    when: {field: reason, eq: changed_mind}
    effect: approve
    message: m
    customer_message: c
  - id: faults
    when:
      all:
        - {field: reason, in: [defective, not_as_described]}
        - not: {field: disclosures.refund_policy, eq: no_refunds}
    effect: manual_review
    message: m
    customer_message: c
  - id: no-fee-note
    when: {field: reason, eq: wrong_item}
    effect: adjust
    message: an adjustment decides nothing
    amount:
      - deduct_percent: 0
"""


def test_gaps_lists_each_value_no_rule_decides(cli, tmp_path):
    path = tmp_path / "gap-shop.yaml"
    path.write_text(RULESET)
    r = cli("validate", path, "--gaps")
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    assert lines[0].startswith("ok: ")
    undecided = [v for v in REASONS if v not in ("changed_mind", "defective", "not_as_described")]
    assert "wrong_item" in undecided  # an `adjust` rule gives no outcome
    assert lines[1] == (
        f"gap: {path}: `gap-shop` 1.0.0: no rule decides `reason` "
        + ", ".join(f"`{v}`" for v in undecided)
        + ": such a request matches no rule and goes to manual review")
    # two fields together: a fault under a no-refunds policy is excluded by the only rule
    # about faults, and no other rule takes it
    assert lines[2] == (f"gap: {path}: `gap-shop` 1.0.0: no rule decides "
                        "`disclosures.refund_policy` `no_refunds` with `reason` `defective`, "
                        "`not_as_described`: such a request matches no rule and goes to manual "
                        "review")
    assert lines[-1] == "2 gaps"


def test_gaps_of_the_shipped_ftc_baseline_name_change_of_mind(cli):
    r = cli("validate", "rulesets/ecommerce/us-ftc.yaml", "--gaps")
    assert r.code == 0
    ftc = next(line for line in r.out.splitlines() if "`us-ftc`" in line)
    assert "`changed_mind`" in ftc and "`not_received`" not in ftc


def test_without_gaps_validate_prints_no_gap_lines(cli, tmp_path):
    path = tmp_path / "gap-shop.yaml"
    path.write_text(RULESET)
    r = cli("validate", path)
    assert r.code == 0 and "gap" not in r.out
