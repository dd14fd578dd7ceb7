"""A window or deadline with its own `calendar:` keys counts its own way inside a ruleset."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from refundry import Engine

from .conftest import refundry_cli

BASE = textwrap.dedent("""\
    ruleset: cal-base
    version: 1.0.0
    effective_from: 2020-01-01
    industry: ecommerce
    jurisdictions: [US-CA]
    calendar: {holidays: consumer, period_end: next_working_day}
    windows:
      state:
        from: transaction.purchased_at
        period: 30 days
        floor: true
        citation: "state"
      federal:
        from: transaction.purchased_at
        period: 30 days
        floor: true
        citation: "federal"
        calendar: {holidays: US, period_end: as_is}
    rules:
      - id: in-state
        citation: state
        when: {within: state}
        effect: approve
        message: m
        customer_message: c
        deadlines:
          - {name: period_ends, window: state}
          - {name: refund_due_by, from: requested_at, period: 7 business days,
             calendar: {holidays: US, period_end: as_is}}
          - {name: acknowledge_by, from: requested_at, period: 7 business days}
      - id: in-federal
        citation: federal
        when: {within: federal}
        effect: adjust
        message: m
        deadlines: [{name: resolve_by, window: federal}]
    """)


def _request(purchased: str, requested: str) -> dict:
    return {"request_id": "r", "client_id": "c", "industry": "ecommerce", "jurisdiction": "US-CA",
            "requested_at": requested, "amount": "10.00", "currency": "USD", "reason": "other",
            "customer": {"id": "c"},
            "transaction": {"id": "t", "amount": "10.00", "purchased_at": purchased}}


@pytest.fixture()
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "base.yaml").write_text(BASE)
    return Engine.from_path(tmp_path)


def test_window_with_own_calendar_does_not_roll_forward(engine: Engine) -> None:
    # 30 days from Thu 1 Aug 2024 is Sat 31 Aug: the state window rolls to Tue 3 Sep (Labor
    # Day on 2 Sep), the federal one ends on the Saturday itself.
    d = engine.evaluate(_request("2024-08-01T12:00:00-07:00", "2024-09-03T10:00:00-07:00"))
    assert d.outcome == "approve"
    assert d.deadline("period_ends") == dt.date(2024, 9, 3)
    assert d.deadline("resolve_by") is None  # 3 Sep is after the federal window's 31 Aug
    d = engine.evaluate(_request("2024-08-01T12:00:00-07:00", "2024-08-31T10:00:00-07:00"))
    assert d.deadline("resolve_by") == dt.date(2024, 8, 31)


def test_deadline_with_own_holiday_calendar(engine: Engine) -> None:
    # Columbus Day (Mon 14 Oct 2024) is a federal holiday but not a California one: 7 working
    # days from Thu 10 Oct end on 22 Oct under the deadline's own federal calendar and on
    # 21 Oct under the ruleset's California calendar.
    d = engine.evaluate(_request("2024-10-01T12:00:00-07:00", "2024-10-10T10:00:00-07:00"))
    assert d.deadline("refund_due_by") == dt.date(2024, 10, 22)
    assert d.deadline("acknowledge_by") == dt.date(2024, 10, 21)


def test_client_cannot_undercut_floor_through_window_calendar(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "client.yaml").write_text(textwrap.dedent("""\
        ruleset: cal-client
        version: 1.0.0
        effective_from: 2020-01-01
        client: acme
        extends: cal-base
        windows:
          state:
            calendar: {period_end: as_is}
        rules: []
        """))
    proc = refundry_cli("validate", str(tmp_path))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "undercuts the statutory floor of `cal-base`" in proc.stdout + proc.stderr


def test_a_window_deadline_takes_no_calendar_of_its_own(tmp_path: Path) -> None:
    text = BASE.replace("{name: period_ends, window: state}",
                        "{name: period_ends, window: state, calendar: {period_end: as_is}}")
    assert text != BASE
    (tmp_path / "base.yaml").write_text(text)
    proc = refundry_cli("validate", str(tmp_path))
    assert proc.returncode == 3
    assert "base.yaml:" in proc.stderr and "counts with its window's calendar" in proc.stderr
