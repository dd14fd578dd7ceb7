"""`refundry report` on a store with a known history: every chart is drawn and non-empty, the
CSV and JSON hold exactly the numbers the charts carry, and the numbers are the planted ones."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import subprocess
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from refundry.app.report import FIGURES
from refundry.cli import main
from refundry.records.history import History
from refundry.records.stores import open_store
from tests import fraudgen


class Clock:
    """The writer's clock, set by the test: decisions and payments at chosen times."""

    def __init__(self) -> None:
        self.now = fraudgen.START

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@pytest.fixture
def history_store(store_url, engine):
    clock = Clock()
    store = open_store(store_url, clock=clock)
    history = History(store)
    requests = fraudgen.abusive(80)
    for r in requests:
        clock.now = dt.datetime.fromisoformat(r["requested_at"]) + dt.timedelta(minutes=30)
        data = {**r, "facts": {**r["facts"], **history.facts(r)}} if "facts" in r else \
            {**r, "facts": history.facts(r)}
        store.record(data, engine.evaluate(data), engine=engine, actor="shop")
    first, second = (r["request_id"] for r in requests[:2])
    # two refunds sent: one the next day, one long after its refund_due_by
    clock.now = dt.datetime.fromisoformat(requests[0]["requested_at"]) + dt.timedelta(days=1)
    store.mark(first, "processed", actor="pay", reference="P-1")
    store.mark(first, "refunded", actor="pay")
    clock.now = dt.datetime.fromisoformat(requests[1]["requested_at"]) + dt.timedelta(days=40)
    store.mark(second, "processed", actor="pay", reference="P-2")
    # one denial disputed and overturned, one review denied
    late = fraudgen.request("late-1", fraudgen._at(20), "cust-late", amount=Decimal("30.00"))
    late["transaction"]["delivered_at"] = "2023-01-01T10:00:00+01:00"
    clock.now = fraudgen._at(20) + dt.timedelta(hours=2)
    store.record(late, engine.evaluate(late), engine=engine, actor="shop")
    store.open_dispute("late-1", actor="agent", reason="parcel lost", engine=engine)
    store.resolve_dispute("late-1", actor="lead", resolution="overturned", amount="30.00",
                          explanation="We accept the late delivery.")
    store.review("serial-4", actor="bob", approve=False, reason="serial returner")
    yield store, requests
    store.close()


class Charts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, list[tuple[str, str, str]]] = {}
        self.current: str | None = None
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "svg":
            self.current = a["id"].removeprefix("chart-")
            self.svgs[self.current] = []
        elif tag == "rect" and self.current is not None:
            self.svgs[self.current].append((a["data-key"], a["data-series"], a["data-value"]))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None


def _run(store_url, tmp_path, fmt: str, *extra: str):
    out = tmp_path / f"report.{fmt}"
    assert main(["report", "--db", store_url, "--format", fmt, "--out", str(out), *extra]) == 0
    return out


def test_html_csv_and_json_agree_and_show_every_chart(history_store, store_url, tmp_path) -> None:
    page = Charts()
    html_path = _run(store_url, tmp_path, "html")
    page.feed(html_path.read_text("utf-8"))
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert set(page.svgs) == set(FIGURES)
    for fig, rects in page.svgs.items():
        assert rects, f"chart {fig} is empty"
        assert any(v not in ("0", "0.0") for _k, _s, v in rects), f"chart {fig} shows only zeros"
    drawn = {(f, k, s, v) for f, rects in page.svgs.items() for k, s, v in rects}
    with _run(store_url, tmp_path, "csv").open(encoding="utf-8") as fh:
        in_csv = {(r["figure"], r["key"], r["series"], r["value"]) for r in csv.DictReader(fh)}
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))
    in_json = {(f, p["key"], p["series"], str(p["value"])) for f, pts in data["figures"].items()
               for p in pts}
    assert drawn == in_csv == in_json


def test_the_numbers_are_the_planted_ones(history_store, store_url, tmp_path) -> None:
    _store, requests = history_store
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))
    figs = {f: {(p["key"], p["series"]): p["value"] for p in pts}
            for f, pts in data["figures"].items()}
    planted_ids = {r["request_id"] for r in requests} & set(fraudgen.PLANTED_FLAGS)
    expected_flags: dict[str, int] = {}
    for rid in planted_ids:
        for rule in fraudgen.PLANTED_FLAGS[rid]:
            expected_flags[rule] = expected_flags.get(rule, 0) + 1
    assert {k: v for (k, _s), v in figs["fraud_flags"].items()} == expected_flags
    assert figs["late_refunds"] == {("on time", "refunds"): 1, ("late", "refunds"): 1}
    assert figs["disputes"][("overturned", "disputes")] == 1
    assert figs["time_to_refund"][("< 3 days", "cases")] == 1      # sent the next day
    assert figs["time_to_refund"][(">= 14 days", "cases")] == 1    # sent after 40 days
    assert figs["time_to_decision"][("< 1 h", "cases")] == len(requests)  # 30 min each
    assert data["summary"]["cases"] == len(requests) + 1
    assert sum(figs["decisions_over_time"].values()) == len(requests) + 1


def test_filters_by_client_and_dates(history_store, store_url, tmp_path) -> None:
    _store, requests = history_store
    data = json.loads(_run(store_url, tmp_path, "json", "--client", "nobody").read_text("utf-8"))
    assert data["summary"]["cases"] == 0
    day = dt.date.fromisoformat(requests[-1]["requested_at"][:10])
    data = json.loads(_run(store_url, tmp_path, "json", "--since", day.isoformat()
                           ).read_text("utf-8"))
    expected = sum(1 for r in requests if r["requested_at"][:10] >= day.isoformat())
    assert data["summary"]["cases"] == expected
    assert main(["report", "--db", store_url, "--since", "yesterday", "--format", "json",
                 "--out", str(tmp_path / "x.json")]) == 1


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed "
                    "(apt-get install -y chromium); the HTML is still parsed above")
def test_the_html_opens_in_a_headless_browser(history_store, store_url, tmp_path) -> None:
    html_path = _run(store_url, tmp_path, "html")
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--dump-dom", html_path.as_uri()], capture_output=True, text=True,
        timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    # every console message (an error, a blocked request) is logged as CONSOLE
    assert "CONSOLE" not in result.stderr, result.stderr[-2000:]
    dom = result.stdout
    for fig in FIGURES:
        assert f'id="chart-{fig}"' in dom
    assert "<rect" in dom


@pytest.mark.parametrize(("utc_time", "late"), [("22:30", 0), ("23:30", 1)])
def test_late_is_judged_by_the_consumers_local_date(store_url, engine, tmp_path, utc_time,
                                                    late) -> None:
    """Berlin is UTC+1 in March: 23:30 UTC on the due date is already the next day there."""
    clock = Clock()
    store = open_store(store_url, clock=clock)
    try:
        r = fraudgen.request("tz-1", fraudgen._at(1), "c1", amount=Decimal("10.00"))
        decision = engine.evaluate(r)
        store.record(r, decision, engine=engine, actor="shop")
        due = decision.deadline("refund_due_by")
        hh, mm = map(int, utc_time.split(":"))
        clock.now = dt.datetime(due.year, due.month, due.day, hh, mm, tzinfo=dt.UTC) \
            - dt.timedelta(seconds=1)
        store.mark("tz-1", "processed", actor="pay")
    finally:
        store.close()
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))
    assert {p["key"]: p["value"] for p in data["figures"]["late_refunds"]} == \
        {"on time": 1 - late, "late": late}
