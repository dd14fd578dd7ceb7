"""Counting periods: calendar days, months clamped to month end, business days with holidays,
billing cycles, and the end-of-period convention, through rulesets as an analyst writes them."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

import refundry
from refundry.core.periods import Period

from .conftest import BASE_REQUEST


def engine_with(tmp_path, window: str, calendar: str = "") -> refundry.Engine:
    (tmp_path / "r.yaml").write_text(f"""
ruleset: periods
version: 1.0.0
effective_from: 2000-01-01
industry: finance
jurisdictions: ["*"]
{calendar}
windows:
  w: {window}
rules:
  - id: inside
    when: {{within: w}}
    effect: approve
    message: m
    customer_message: c
    deadlines: [{{name: resolve_by, window: w}}]
  - id: outside
    when: {{after: w}}
    effect: deny
    message: m
    customer_message: c
    deadlines: [{{name: resolve_by, window: w}}]
""")
    return refundry.Engine.from_path(tmp_path)


def request(**changes) -> dict:
    r = copy.deepcopy(BASE_REQUEST)
    r.update(industry="finance", reason="billing_error")
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            r.setdefault(section, {})[name] = value
        else:
            r[key] = value
    return r


def last_day(engine, **changes) -> dt.date:
    d = engine.evaluate(request(**changes))
    assert not d.errors, d.errors
    return d.deadline("resolve_by")


@pytest.mark.parametrize("text, steps", [
    ("14 days", ((14, "days"),)),
    ("10 business days", ((10, "business_days"),)),
    ("1 working day", ((1, "business_days"),)),
    ("14 days + 12 months", ((14, "days"), (12, "months"))),
    ("2 billing cycles", ((2, "billing_cycles"),)),
    ("8 weeks", ((8, "weeks"),)),
    ("14 days then 12 months", ((14, "days"), (0, "end"), (12, "months"))),
])
def test_period_text(text, steps):
    assert Period.parse(text).steps == steps


@pytest.mark.parametrize("bad", ["", "14", "fourteen days", "14 fortnights", "-3 days", "99999 days",
                                 "then 12 months", "14 days then", "14 days then then 1 day"])
def test_bad_period_text(bad):
    with pytest.raises(ValueError):
        Period.parse(bad)


def test_months_clamp_to_the_end_of_shorter_months(tmp_path):
    eng = engine_with(tmp_path, "{from: finance.debited_at, period: 1 months}", "calendar: {holidays: none}")
    assert last_day(eng, finance__debited_at="2024-01-31") == dt.date(2024, 2, 29)
    assert last_day(eng, finance__debited_at="2023-01-31") == dt.date(2023, 2, 28)
    eng13 = engine_with(tmp_path, "{from: finance.debited_at, period: 13 months}", "calendar: {holidays: none}")
    assert last_day(eng13, finance__debited_at="2023-01-31") == dt.date(2024, 2, 29)


def test_business_days_skip_weekends_and_federal_holidays(tmp_path):
    eng = engine_with(tmp_path, "{from: finance.notice_received_at, period: 10 business days}",
                      "calendar: {holidays: US}")
    # Thu 27 June 2024 + 10 business days, skipping 4 July (Independence Day) and two weekends
    assert last_day(eng, finance__notice_received_at="2024-06-27") == dt.date(2024, 7, 12)
    # the institution's own closing days count too
    assert last_day(eng, finance__notice_received_at="2024-06-27",
                    finance__holidays=["2024-07-05"]) == dt.date(2024, 7, 15)


def test_business_days_use_the_consumers_own_state_holidays(tmp_path):
    eng = engine_with(tmp_path, "{from: finance.notice_received_at, period: 1 business days}",
                      "calendar: {holidays: consumer}")
    # 31 March 2025 is Cesar Chavez Day, a California state holiday, not a federal one
    assert last_day(eng, jurisdiction="US-CA", finance__notice_received_at="2025-03-28") == dt.date(2025, 4, 1)
    assert last_day(eng, jurisdiction="US-NY", finance__notice_received_at="2025-03-28") == dt.date(2025, 3, 31)


def test_billing_cycles_count_statement_closing_dates(tmp_path):
    eng = engine_with(tmp_path, "{from: finance.notice_received_at, period: 2 billing cycles}",
                      "calendar: {holidays: none}")
    assert last_day(eng, finance__notice_received_at="2024-01-10", finance__billing_cycle_closing_day=15) == dt.date(2024, 2, 15)
    assert last_day(eng, finance__notice_received_at="2024-01-15", finance__billing_cycle_closing_day=15) == dt.date(2024, 3, 15)
    assert last_day(eng, finance__notice_received_at="2024-01-10", finance__billing_cycle_closing_day=31) == dt.date(2024, 2, 29)
    # without a closing day the window cannot be counted: neither inside nor after
    d = eng.evaluate(request(finance__notice_received_at="2024-01-10"))
    assert d.outcome == "manual_review" and d.rule_ids == ("refundry.no-rule-matched",)


def test_roll_forward_only_with_next_working_day(tmp_path):
    window = "{from: transaction.delivered_at, period: 14 days}"
    rolled = engine_with(tmp_path, window, "calendar: {holidays: consumer, period_end: next_working_day}")
    # 2 March 2024 + 14 days = Saturday 16 March
    assert last_day(rolled, transaction__delivered_at="2024-03-02T10:00:00+01:00") == dt.date(2024, 3, 18)
    as_is = engine_with(tmp_path, window, "calendar: {holidays: consumer, period_end: as_is}")
    assert last_day(as_is, transaction__delivered_at="2024-03-02T10:00:00+01:00") == dt.date(2024, 3, 16)


def test_notice_received_is_tested_against_the_window_not_the_request_time(tmp_path):
    eng = engine_with(tmp_path, "{from: finance.statement_sent_at, period: 60 days, notice: finance.notice_received_at}",
                      "calendar: {holidays: none}")
    sent = "2024-01-02T09:00:00-05:00"
    base = {"jurisdiction": "US-NY", "finance__statement_sent_at": sent, "requested_at": "2024-02-20T09:00:00-05:00"}
    assert eng.evaluate(request(**base, finance__notice_received_at="2024-03-02")).outcome == "approve"
    assert eng.evaluate(request(**base, finance__notice_received_at="2024-03-03")).outcome == "deny"


def test_then_counts_on_from_the_rolled_end_of_the_period_so_far(tmp_path):
    # CRD Art 10(1): 12 months "from the end of the initial withdrawal period", whose end Reg
    # 1182/71 Art 3(4) moves off a weekend. Delivered 1 March 2025: day 14 is Saturday 15 March,
    # the initial period ends Monday 17 March, so the extension ends 17 March 2026 (a Tuesday);
    # `+` counts from the unmoved Saturday and ends on Monday 16 March 2026.
    rolled = "calendar: {holidays: none, period_end: next_working_day}"
    then = engine_with(tmp_path, "{from: transaction.delivered_at, period: 14 days then 12 months}", rolled)
    assert last_day(then, transaction__delivered_at="2025-03-01T10:00:00+01:00") == dt.date(2026, 3, 17)
    plus = engine_with(tmp_path, "{from: transaction.delivered_at, period: 14 days + 12 months}", rolled)
    assert last_day(plus, transaction__delivered_at="2025-03-01T10:00:00+01:00") == dt.date(2026, 3, 16)
    # without roll-forward `then` and `+` are the same count
    as_is = engine_with(tmp_path, "{from: transaction.delivered_at, period: 14 days then 12 months}",
                        "calendar: {holidays: none, period_end: as_is}")
    assert last_day(as_is, transaction__delivered_at="2025-03-01T10:00:00+01:00") == dt.date(2026, 3, 15)


def test_a_pause_lengthens_a_window_by_the_days_it_lasted(tmp_path):
    # CRA s22(7): delivered 1 March, 30 days -> 31 March; a repair asked for on 10 March and
    # returned on 19 March (both days paused: inclusive) adds 10 days -> 10 April.
    window = ("{from: transaction.delivered_at, period: 30 days, pause: {from: transaction.shipped_at, "
              "until: transaction.installed_at, inclusive: true}}")
    eng = engine_with(tmp_path, window, "calendar: {holidays: none}")
    base = {"jurisdiction": "GB", "transaction__delivered_at": "2024-03-01T10:00:00+00:00"}
    assert last_day(eng, **base) == dt.date(2024, 3, 31)  # nothing paused
    paused = {**base, "transaction__shipped_at": "2024-03-10T10:00:00+00:00",
              "transaction__installed_at": "2024-03-19T10:00:00+00:00"}
    assert last_day(eng, **paused) == dt.date(2024, 4, 10)
    # a pause that began after the period ended stopped nothing
    late = {**paused, "transaction__shipped_at": "2024-04-01T10:00:00+00:00",
            "transaction__installed_at": "2024-04-05T10:00:00+00:00"}
    assert last_day(eng, **late) == dt.date(2024, 3, 31)
    # a pause that has not ended leaves no last day: neither inside nor after
    open_ = {**base, "transaction__shipped_at": "2024-03-10T10:00:00+00:00"}
    d = eng.evaluate(request(**open_))
    assert d.rule_ids == ("refundry.no-rule-matched",) and d.deadline("resolve_by") is None


def test_a_pause_ends_at_most_its_cap_after_the_clock_starts(tmp_path):
    # 42 CFR 401.305(b)(2) shape: 60 days from identification, suspended from the start of an
    # investigation until it concludes, at most 180 days after identification.
    window = ("{from: transaction.delivered_at, period: 60 days, pause: {from: transaction.shipped_at, "
              "until: transaction.installed_at, at_most: 180 days}}")
    eng = engine_with(tmp_path, window, "calendar: {holidays: none}")
    base = {"jurisdiction": "US-NY", "transaction__delivered_at": "2025-01-01T10:00:00-05:00",
            "transaction__shipped_at": "2025-01-11T10:00:00-05:00"}
    # concluded on 1 March: 49 days paused (11 Jan to 1 Mar) -> 2 March + 49 days = 20 April
    assert last_day(eng, **base, transaction__installed_at="2025-03-01T10:00:00-05:00") == dt.date(2025, 4, 20)
    # concluded after the cap (30 June 2025): paused until the cap only -> 2 March + 170 = 19 August
    assert last_day(eng, **base, transaction__installed_at="2025-09-01T10:00:00-04:00") == dt.date(2025, 8, 19)
    # still open: paused until the cap
    assert last_day(eng, **base) == dt.date(2025, 8, 19)
