"""`refundry report` on a store with a known history: every chart is drawn and non-empty, the
CSV and JSON hold exactly the numbers the charts carry, and the numbers are the planted ones."""

from __future__ import annotations

import csv
import datetime as dt
import html
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
        elif tag == "rect" and self.current is not None and "data-key" in a:  # not a swatch
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


MEASURE = """<pre id="layout"></pre><script>
const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
const out = {viewport: window.innerWidth, main: box(document.querySelector("main") || document.body),
  sections: [...document.querySelectorAll("section")].map(s => ({id: s.id, box: box(s)})),
  cards: [...document.querySelectorAll(".card")].map(c => c.innerText), charts: {}};
for (const svg of document.querySelectorAll("svg.chart")) {
  const legend = svg.querySelector("g.legend");
  out.charts[svg.id.replace("chart-", "")] = {box: box(svg), legend: legend ? box(legend) : null,
    texts: [...svg.querySelectorAll("text")].map(t => ({text: t.textContent,
      day: t.classList.contains("day"), box: box(t)})),
    bars: [...svg.querySelectorAll("rect[data-key]")].map(r => ({key: r.dataset.key, box: box(r)}))};
}
document.getElementById("layout").textContent = JSON.stringify(out);
</script></body>"""


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--window-size=1600,2400", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _inside(inner, outer, slack=1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed "
                    "(apt-get install -y chromium); the HTML is still parsed above")
def test_the_html_lays_out_in_a_headless_browser(history_store, store_url, tmp_path) -> None:
    """A screenshot, and the layout read from the browser: nothing drawn outside its chart (the
    legend's box inside the SVG), each date under its own column, the page's full width used."""
    html_path = _run(store_url, tmp_path, "html")
    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", html_path.as_uri())
    assert "CONSOLE" not in result.stderr, result.stderr[-2000:]  # an error, a blocked request
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    measured = tmp_path / "measured.html"
    measured.write_text(html_path.read_text("utf-8").replace("</body>", MEASURE), "utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", measured.as_uri()).stdout
    layout = json.loads(html.unescape(dom.split('<pre id="layout">')[1].split("</pre>")[0]))
    assert set(layout["charts"]) == set(FIGURES)
    for fig, chart in layout["charts"].items():
        for text in chart["texts"]:
            assert _inside(text["box"], chart["box"]), (fig, text)
        if chart["legend"] is not None:
            assert _inside(chart["legend"], chart["box"]), (fig, chart["legend"], chart["box"])
    days = layout["charts"]["decisions_over_time"]
    assert days["legend"] is not None
    labels = [t for t in days["texts"] if t["day"]]
    assert len(labels) == 8  # more than two dates: the axis can be read
    centres = {b["key"]: (b["box"][0] + b["box"][2]) / 2 for b in days["bars"]}
    width = min(b["box"][2] - b["box"][0] for b in days["bars"])
    for label in labels:  # a date ends under the middle of its own column, not in a gap
        assert label["text"] in centres
        assert abs(label["box"][2] - centres[label["text"]]) < 2 * width, label
    assert layout["main"][2] - layout["main"][0] > 0.9 * (layout["viewport"] - 80)
    assert len({round(s["box"][0]) for s in layout["sections"]}) >= 2  # side by side
    rate = next(c for c in layout["cards"] if "approval rate" in c)
    assert rate.split()[1] == "%" and "first decision:" in rate and rate.rstrip().endswith("%")


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


def test_headline_shows_final_outcomes_with_the_first_decision(history_store, store_url,
                                                                tmp_path) -> None:
    store, _requests = history_store
    final = {status: len(store.cases(status)) for status in
             ("approved", "processed", "refunded", "denied", "manual_review", "disputed")}
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))["summary"]
    # serial-4 was reviewed and denied; late-1 was denied and overturned on dispute
    assert data["approved"] == final["approved"] + final["processed"] + final["refunded"]
    assert data["denied"] == final["denied"] == 1 and data["manual_review"] == final["manual_review"]
    assert data["first_denied"] == 1 and data["first_manual_review"] == data["manual_review"] + 1
    assert data["first_approved"] == data["approved"] - 1  # late-1, overturned
    assert Decimal(data["approval_rate"]) > Decimal(data["first_approval_rate"])
    page = _run(store_url, tmp_path, "html").read_text("utf-8")
    assert f"<b>{data['approval_rate']} %</b><span>approval rate</span>" in page
    assert f"<small>first decision: {data['first_approval_rate']} %</small>" in page
    assert f"<b>{data['denied']}</b><span>denied</span><small>first decision: 1</small>" in page


def test_money_per_client_and_currency(history_store, store_url, tmp_path) -> None:
    store, requests = history_store
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))
    money = {(p["key"], p["series"]): Decimal(p["value"]) for p in data["figures"]["money"]}
    sent = [store.case(r["request_id"]) for r in requests[:2]]
    assert money[("northwind EUR", "refunded")] == sum(Decimal(c.amount) for c in sent)
    waiting = store.cases("manual_review")
    assert money[("northwind EUR", "at_stake")] == sum(Decimal(c.request["amount"]) for c in waiting)
    denied = store.case("serial-4")
    granted = [c for s in ("approved", "processed", "refunded") for c in store.cases(s)]
    assert money[("northwind EUR", "withheld")] == Decimal(denied.request["amount"]) + sum(
        Decimal(c.request["amount"]) - Decimal(c.amount) for c in granted)
    assert money[("northwind EUR", "at_stake")] > 0 and money[("northwind EUR", "withheld")] > 0


def test_the_report_names_its_time_and_chain_head(history_store, store_url, tmp_path) -> None:
    store, _requests = history_store
    point = store.checkpoint()
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))["summary"]
    assert data["chain_head"] == point.head and data["chain_events"] == point.count
    assert dt.datetime.fromisoformat(data["generated_at"]).tzinfo is not None
    page = _run(store_url, tmp_path, "html").read_text("utf-8")
    assert f"chain head <code>{point.head}</code>" in page and "generated 20" in page
    from refundry.app.report import build
    when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert build(store, now=when)[1]["generated_at"] == "2026-03-01T12:00:00Z"


def test_no_deadline_is_said_and_empty_sections_are_hidden(store_url, engine, tmp_path) -> None:
    store = open_store(store_url)
    try:  # one denial, long after the period: no refund deadline, no flag, no dispute
        r = fraudgen.request("late-1", fraudgen._at(1), "c1", amount=Decimal("30.00"))
        r["transaction"]["delivered_at"] = "2023-01-01T10:00:00+01:00"
        decision = engine.evaluate(r)
        assert decision.outcome == "deny" and decision.deadline("refund_due_by") is None
        store.record(r, decision, engine=engine, actor="shop")
    finally:
        store.close()
    data = json.loads(_run(store_url, tmp_path, "json").read_text("utf-8"))
    assert data["figures"]["late_refunds"] == [] and data["figures"]["disputes"] == []
    page = Charts()
    text = _run(store_url, tmp_path, "html").read_text("utf-8")
    page.feed(text)
    assert "No case had a refund deadline, so none can be late." in text
    assert "on time" not in text
    assert "fraud_flags" not in page.svgs and 'id="fraud_flags"' not in text
    assert 'id="disputes"' not in text and "no data" not in text
    assert {"decisions_over_time", "money"} <= set(page.svgs)


def test_deadlines_but_nothing_sent_is_not_called_no_deadline(store_url, engine, tmp_path) -> None:
    store = open_store(store_url)
    try:
        r = fraudgen.request("open-1", fraudgen._at(1), "c1", amount=Decimal("30.00"))
        decision = engine.evaluate(r)
        assert decision.deadline("refund_due_by") is not None
        store.record(r, decision, engine=engine, actor="shop")
    finally:
        store.close()
    text = _run(store_url, tmp_path, "html").read_text("utf-8")
    assert "No refund with a deadline has been sent yet." in text
    assert "No case had a refund deadline" not in text
