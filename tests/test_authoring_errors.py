"""The errors a compliance analyst meets first when writing a client ruleset: each names the
right line and column and says what is wrong in the analyst's terms, once per cause.

Each sample is a California client layer over the shipped `us-ca-consumer` baseline, written to
a real file and checked with `refundry validate`, as the analyst would run it.
"""

from __future__ import annotations

import textwrap

import pytest

from .conftest import RULESETS

HEAD = """\
ruleset: shop-ca
version: 1.0.0
effective_from: 2024-01-01
client: shop
extends: us-ca-consumer
"""

RULE = """\
  - id: {id}
    when: {{field: amount, gt: {gt}}}
    effect: manual_review
    message: a person checks large refunds
    customer_message: our team is checking your refund
"""


def validate(cli, tmp_path, body: str) -> list[str]:
    path = tmp_path / "shop-ca.yaml"
    path.write_text(HEAD + textwrap.dedent(body))
    r = cli("validate", path, "--rulesets", RULESETS)
    assert r.code == 3, r.out + r.err
    assert "Traceback" not in r.err
    return [line.split("shop-ca.yaml:", 1)[1] for line in r.err.strip().splitlines()]


def test_misspelt_key_in_the_second_rule_is_reported_at_that_key_once(cli, tmp_path):
    second = RULE.format(id="r2", gt=1000).replace("    effect:", "    efect:")
    lines = validate(cli, tmp_path, "rules:\n" + RULE.format(id="r1", gt=500) + second)
    # line 14 is `efect:` in the second rule; the missing `effect` is the same mistake
    assert lines == ["14:5: rule `r2`: unknown key `efect`; did you mean `effect`?"]


def test_misspelt_field_suggests_the_known_field(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        rules:
          - id: r1
            when: {field: disclosures.refund_policy_postd, eq: true}
            effect: approve
            message: posted policy
            customer_message: accepted
        """)
    assert lines == ["8:19: rule `r1`: unknown field `disclosures.refund_policy_postd` for a "
                     "request; did you mean `disclosures.refund_policy_posted`?"]


def test_misspelt_prior_refund_field_suggests_a_prior_refunds_field(cli, tmp_path):
    """Inside any_prior_refund the known fields are a prior refund's, not an item's (the
    suggestion used to come from the item fields)."""
    lines = validate(cli, tmp_path, """\
        rules:
          - id: r1
            when: {any_prior_refund: {field: amout, gt: 10}}
            effect: manual_review
            message: earlier refunds
            customer_message: our team is checking your refund
        """)
    assert len(lines) == 1 and lines[0].endswith(
        "rule `r1`: unknown field `amout` for a prior refund; did you mean `amount`?"), lines


def test_unknown_field_far_from_any_known_one_hints_at_client_facts(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        rules:
          - id: r1
            when: {field: loyalty_tier, eq: gold}
            effect: approve
            message: gold members
            customer_message: accepted
        """)
    assert lines == ["8:19: rule `r1`: unknown field `loyalty_tier` for a request; a client's "
                     "own facts are written `facts.NAME`"]


def test_misspelt_enum_value_suggests_the_value(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        rules:
          - id: r1
            when: {field: reason, eq: changed_mnd}
            effect: approve
            message: m
            customer_message: c
        """)
    assert len(lines) == 1
    assert lines[0].startswith("8:31: rule `r1`: `changed_mnd` is not a value of `reason`")
    assert lines[0].endswith("; did you mean `changed_mind`?")


@pytest.mark.parametrize(("body", "expected"), [
    ("rules:\n  - id: r1\n    when: {field: amount, gt: 500}\n      effect: manual_review\n",
     "9:7: `effect` starts at column 7, which lines up with no key above it; keys of one "
     "mapping start in the same column (see line 7)"),
    ("rules:\n  - id: r1\n\twhen: {field: amount, gt: 500}\n",
     "8:1: line 8 is indented with a tab; indent with spaces only"),
    ("rules:\n  - id: r1\n    effect: manual_review\n     message: big\n",
     "9:13: `message:` reads as part of the value above it, not as a key: indent it like the "
     "keys around it, or quote a value that contains `: `"),
    ("rules:\n  - id: r1\n    when: x\n  effect: deny\n",
     "9:3: `effect` starts at column 3, which lines up with no key above it; keys of one "
     "mapping start in the same column (see line 7)"),
])
def test_indentation_errors_are_said_in_the_analysts_terms(cli, tmp_path, body, expected):
    lines = validate(cli, tmp_path, body)
    assert lines == [expected]
    assert "<block" not in lines[0] and "token" not in lines[0]


def test_a_key_indented_under_when_is_named_where_it_stands(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        rules:
          - id: r1
            when:
              field: amount
              gt: 500
              effect: manual_review
            message: big
            customer_message: checking
        """)
    assert lines == ["11:7: rule `r1`: `effect` is indented under `when`, so it belongs to "
                     "`when`; line it up with `id` to make it a key of its own"]


def test_a_wrong_window_from_is_reported_once(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        windows:
          shop_returns:
            from: transaction.purchase_at
            period: 30 days
        rules:
          - id: r1
            when: {within: shop_returns}
            effect: approve
            message: within 30 days
            customer_message: accepted
            deadlines:
              - {name: period_ends, window: shop_returns}
          - id: r2
            when: {after: shop_returns}
            effect: deny
            message: after 30 days
            customer_message: too late
        """)
    assert lines == ["8:11: `transaction.purchase_at` is not a time field of the request; "
                     "did you mean `transaction.purchased_at`?"]


def test_a_misspelt_window_name_is_still_reported_with_a_suggestion(cli, tmp_path):
    lines = validate(cli, tmp_path, """\
        windows:
          shop_returns: {from: transaction.purchased_at, period: 30 days}
        rules:
          - id: r1
            when: {within: shop_return}
            effect: approve
            message: within 30 days
            customer_message: accepted
        """)
    assert len(lines) == 1
    assert lines[0].startswith("10:20: rule `r1`: unknown window `shop_return`; did you mean "
                               "`shop_returns`?")


def test_duplicate_rule_id_points_at_the_first(cli, tmp_path):
    lines = validate(cli, tmp_path, "rules:\n" + RULE.format(id="r1", gt=500)
                     + RULE.format(id="r1", gt=1000))
    assert lines == ["12:9: rule `r1`: duplicate rule id `r1` (first defined on line 7)"]
