"""Rows of docs/regulations.md checked through `refundry evaluate` on real request files, where
the CLI output (outcome, amount, the deadline) is what a compliance team reads. Each case names
its row; the YAML suites next to the rulesets hold the day-before/day/day-after boundaries."""

from __future__ import annotations

import copy
import json
from typing import Any

import refundry

from .conftest import BASE_REQUEST


def _evaluate(cli, tmp_path, request: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    r = cli("evaluate", path)
    assert r.code == 0, r.err
    return r.json()


def _deadlines(decision: dict[str, Any]) -> dict[str, str]:
    return {d["name"]: d["due"] for d in decision["deadlines"]}


def _uk_fault(**changes: Any) -> dict[str, Any]:
    r = copy.deepcopy(BASE_REQUEST)
    r.update(jurisdiction="GB", currency="GBP", reason="defective", amount="110.00",
             requested_at="2024-03-04T09:00:00+00:00")
    r["transaction"] = {"id": "t-1", "amount": "120.00", "delivered_at": "2024-03-01T12:00:00+00:00"}
    r["items"] = [{"sku": "KETTLE", "quantity": 1, "unit_price": "110.00", "condition": "defective"}]
    r.update(changes)
    return r


def test_u8_u5_a_recorded_defect_is_refunded_by_the_13th_day_after_agreement(cli, tmp_path):
    # U5: `condition: defective` alone (no `failure`) was sent to review; U8: due 4 + 13 = 17 March
    d = _evaluate(cli, tmp_path, _uk_fault())
    assert (d["outcome"], d["amount"]) == ("approve", "110.00")
    assert _deadlines(d)["refund_due_by"] == "2024-03-17"
    assert [x["rule_id"] for x in d["reasons"]] == ["cra-short-term-reject"]


def test_us2_the_ftc_refund_clock_runs_from_the_vesting_day_not_the_request(cli, tmp_path):
    r = copy.deepcopy(BASE_REQUEST)
    r.update(jurisdiction="US-NY", currency="USD", reason="not_received", amount="59.00",
             requested_at="2024-08-15T10:00:00-04:00", items=[], disclosures={}, evidence={})
    r["transaction"] = {"id": "t-1", "amount": "59.00", "purchased_at": "2024-07-01T10:00:00-04:00"}
    d = _evaluate(cli, tmp_path, r)
    # vested on day 31 (1 August); 7 working days -> 12 August, though asked on 15 August
    assert (d["outcome"], d["amount"], _deadlines(d)["refund_due_by"]) == ("approve", "59.00", "2024-08-12")


def test_f9_a_late_notice_of_unauthorised_card_use_is_reviewed_not_denied(cli, tmp_path):
    r = copy.deepcopy(BASE_REQUEST)
    r.update(industry="finance", jurisdiction="US-NY", currency="USD", reason="unauthorized",
             amount="250.00", requested_at="2024-09-02T10:00:00-04:00", items=[])
    r["transaction"] = {"id": "t-1", "amount": "250.00"}
    r["finance"] = {"account_type": "credit_card", "statement_sent_at": "2024-07-01T08:00:00-04:00",
                    "notice_received_at": "2024-08-31T10:00:00-04:00", "notice_form": "written"}
    d = _evaluate(cli, tmp_path, r)
    assert d["outcome"] == "manual_review"
    assert [x["rule_id"] for x in d["reasons"]] == ["regz-unauthorised-use-late"]
    assert "15 USC 1643" in d["reasons"][0]["citation"]


def test_a1_a_major_failure_five_years_on_is_no_floor_approve(cli, tmp_path):
    r = copy.deepcopy(BASE_REQUEST)
    r.update(jurisdiction="AU-NSW", currency="AUD", reason="defective", amount="499.00",
             requested_at="2029-02-01T10:00:00+11:00", disclosures={}, evidence={})
    r["transaction"] = {"id": "t-1", "amount": "499.00", "delivered_at": "2024-02-01T10:00:00+11:00"}
    r["items"] = [{"sku": "FRIDGE", "quantity": 1, "unit_price": "499.00", "failure": "major"}]
    d = _evaluate(cli, tmp_path, r)
    assert d["outcome"] == "manual_review"
    assert [x["rule_id"] for x in d["reasons"]] == ["acl-major-failure-rejection-period"]


def test_h6_an_eligible_ppdr_dispute_is_a_review_with_its_deadline(cli, tmp_path):
    r = copy.deepcopy(BASE_REQUEST)
    r.update(industry="healthcare", jurisdiction="US-NY", currency="USD", reason="billing_error",
             amount="1400.00", requested_at="2024-06-29T10:00:00-04:00", items=[])
    r["transaction"] = {"id": "bill-1", "amount": "1400.00"}
    r["healthcare"] = {"payer_type": "self_pay", "requested_by": "patient", "gfe_amount": "1000.00",
                       "billed_at": "2024-03-01T10:00:00-05:00"}
    d = _evaluate(cli, tmp_path, r)
    assert (d["outcome"], d["amount"]) == ("manual_review", "400.00")
    assert _deadlines(d) == {"period_ends": "2024-06-29"}


def test_consumer_clocks_take_the_latest_date_and_business_clocks_the_earliest(tmp_path):
    (tmp_path / "r.yaml").write_text("""
ruleset: clocks
version: 1.0.0
effective_from: 2000-01-01
industry: ecommerce
jurisdictions: ["*"]
calendar: {holidays: none}
rules:
  - id: short
    when: {field: reason, eq: changed_mind}
    effect: approve
    message: m
    customer_message: c
    deadlines:
      - {name: goods_back_by, from: requested_at, period: 14 days}
      - {name: refund_due_by, from: requested_at, period: 14 days}
  - id: long
    when: {field: reason, eq: changed_mind}
    effect: approve
    message: m
    customer_message: c
    deadlines:
      - {name: goods_back_by, from: requested_at, period: 30 days}
      - {name: refund_due_by, from: requested_at, period: 30 days}
""")
    d = refundry.Engine.from_path(tmp_path).evaluate(BASE_REQUEST)
    # requested 15 March 2024: the consumer keeps the longer time to send goods back (E10);
    # the trader owes the refund by the earlier date
    assert str(d.deadline("goods_back_by")) == "2024-04-14"
    assert str(d.deadline("refund_due_by")) == "2024-03-29"


def test_a_fixed_deduction_lowers_the_amount_but_never_below_zero(tmp_path):
    # Reg E 12 CFR 1005.6(b)(1): the consumer bears at most US$50, so the bank refunds the rest
    (tmp_path / "r.yaml").write_text("""
ruleset: fixed
version: 1.0.0
effective_from: 2000-01-01
industry: ecommerce
jurisdictions: ["*"]
rules:
  - id: liability
    when: {field: reason, eq: changed_mind}
    effect: approve
    message: m
    customer_message: c
    amount: [{deduct: 50.00}]
""")
    eng = refundry.Engine.from_path(tmp_path)
    assert str(eng.evaluate(BASE_REQUEST).amount) == "69.99"  # 119.99 - 50.00
    small = {**BASE_REQUEST, "amount": "50.00"}
    assert str(eng.evaluate(small).amount) == "0.00"
    cent = {**BASE_REQUEST, "amount": "50.01"}
    assert str(eng.evaluate(cent).amount) == "0.01"
