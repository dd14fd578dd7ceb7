"""``refundry report``: what the records store says about decisions, refunds and disputes.

One pass over the events builds a row per case; ``figures`` turns the rows into named tables
(each a list of ``{key, series, value}``); ``to_html`` draws each as an inline SVG chart in one
self-contained file (no scripts, no network), ``to_csv`` and ``to_json`` write the very same
tables, so the three formats cannot disagree (docs/report.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import zoneinfo
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import attrs

from refundry.core import jurisdictions
from refundry.records.events import STORE_CASE, RecordStore

FRAUD_PREFIX = "fraud-"  # the rule id prefix that marks a fraud signal (docs/fraud.md)
HOUR = Decimal(3600)
TIME_BUCKETS = ((Decimal(1), "< 1 h"), (Decimal(24), "< 1 day"), (Decimal(72), "< 3 days"),
                (Decimal(168), "< 7 days"), (Decimal(336), "< 14 days"),
                (None, ">= 14 days"))

# figure id -> (title, kind); the order is the report's
FIGURES: dict[str, tuple[str, str]] = {
    "decisions_over_time": ("Decisions per day (by request date)", "stacked"),
    "approval_rate_by_client": ("Approval rate by client (%)", "bars"),
    "approval_rate_by_industry": ("Approval rate by industry (%)", "bars"),
    "approval_rate_by_reason": ("Approval rate by request reason (%)", "bars"),
    "top_deny_reasons": ("Top deny reasons (rules)", "bars"),
    "top_review_reasons": ("Top manual-review reasons (rules)", "bars"),
    "fraud_flags": ("Fraud flags (rules)", "bars"),
    "time_to_decision": ("Time from request to decision", "bars"),
    "time_to_refund": ("Time from request to refund sent", "bars"),
    "late_refunds": ("Refunds sent after their statutory deadline", "bars"),
    "disputes": ("Disputes and their resolution", "bars"),
}


@attrs.define
class CaseRow:
    request_id: str
    client_id: str
    industry: str
    reason: str
    requested_at: dt.datetime
    decided_at: dt.datetime
    outcome: str
    status: str
    reasons: list[dict[str, Any]]
    refund_due_by: dt.date | None
    zone: str = "UTC"
    sent_at: dt.datetime | None = None
    disputed: bool = False
    resolution: str | None = None


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def case_rows(store: RecordStore, *, since: dt.date | None = None,
              until: dt.date | None = None, client: str | None = None) -> list[CaseRow]:
    """A row per case whose request date (the consumer's, as written) is in [since, until]."""
    rows: dict[str, CaseRow] = {}
    for event in store.events():
        if event.request_id == STORE_CASE:
            continue
        if event.type == "evaluated":
            request = event.body.get("request") or {}
            decision = event.decision or {}
            try:
                requested = _instant(request["requested_at"])
            except (KeyError, ValueError):
                continue
            if (since and requested.date() < since) or (until and requested.date() > until):
                continue
            if client and request.get("client_id") != client:
                continue
            due = next((d.get("due") for d in decision.get("deadlines") or ()
                        if d.get("name") == "refund_due_by"), None)
            outcome = str(decision.get("outcome", "manual_review"))
            rows[event.request_id] = CaseRow(
                event.request_id, str(request.get("client_id", "")),
                str(request.get("industry", "")), str(request.get("reason", "")), requested,
                _instant(event.at), outcome,
                {"approve": "approved", "deny": "denied"}.get(outcome, "manual_review"),
                list(decision.get("reasons") or ()),
                dt.date.fromisoformat(due) if due else None,
                zone=str(request.get("timezone") or jurisdictions.default_timezone(
                    str(request.get("jurisdiction", ""))) or "UTC"))
            continue
        row = rows.get(event.request_id)
        if row is None:
            continue
        if event.type in ("approved", "denied", "processed", "refunded"):
            row.status = event.type
        if event.type == "processed" and row.sent_at is None:
            row.sent_at = _instant(event.at)
        elif event.type == "disputed":
            row.disputed = True
        elif event.type == "dispute_resolved":
            row.resolution = event.details.get("resolution")
    return list(rows.values())


def _rate(part: int, whole: int) -> Decimal:
    return (Decimal(100) * part / whole).quantize(Decimal("0.1"), ROUND_HALF_UP) if whole else Decimal(0)


def _bucket(hours: Decimal) -> str:
    for limit, label in TIME_BUCKETS:
        if limit is None or hours < limit:
            return label
    return TIME_BUCKETS[-1][1]


def _points(counter: Mapping[str, Any], series: str = "", limit: int | None = None,
            by_value: bool = True) -> list[dict[str, Any]]:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]) if by_value else kv[0])
    return [{"key": k, "series": series, "value": v} for k, v in items[:limit]]


def _rates(rows: Sequence[CaseRow], attr: str) -> list[dict[str, Any]]:
    total: Counter[str] = Counter(getattr(r, attr) for r in rows)
    approved: Counter[str] = Counter(getattr(r, attr) for r in rows if r.outcome == "approve")
    return [{"key": k, "series": "approval_rate", "value": _rate(approved[k], n)}
            for k, n in sorted(total.items())]


def figures(rows: Sequence[CaseRow]) -> dict[str, list[dict[str, Any]]]:
    """Every figure of the report as ``{key, series, value}`` points (values int or Decimal)."""
    out: dict[str, list[dict[str, Any]]] = {}
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        per_day[r.requested_at.date().isoformat()][r.outcome] += 1
    out["decisions_over_time"] = [{"key": day, "series": outcome, "value": per_day[day][outcome]}
                                  for day in sorted(per_day)
                                  for outcome in ("approve", "manual_review", "deny")]
    out["approval_rate_by_client"] = _rates(rows, "client_id")
    out["approval_rate_by_industry"] = _rates(rows, "industry")
    out["approval_rate_by_reason"] = _rates(rows, "reason")
    for fig, outcome in (("top_deny_reasons", "deny"), ("top_review_reasons", "manual_review")):
        counts = Counter(reason["rule_id"] for r in rows if r.outcome == outcome
                         for reason in r.reasons if reason.get("effect") == outcome)
        out[fig] = _points(counts, outcome, limit=10)
    flags = Counter(reason["rule_id"] for r in rows for reason in r.reasons
                    if str(reason.get("rule_id", "")).startswith(FRAUD_PREFIX))
    out["fraud_flags"] = _points(flags, "flagged")
    order = [label for _l, label in TIME_BUCKETS]
    decided = Counter(_bucket(Decimal((r.decided_at - r.requested_at).total_seconds()) / HOUR)
                      for r in rows)
    out["time_to_decision"] = [{"key": b, "series": "cases", "value": decided[b]} for b in order]
    sent = Counter(_bucket(Decimal((r.sent_at - r.requested_at).total_seconds()) / HOUR)
                   for r in rows if r.sent_at is not None)
    out["time_to_refund"] = [{"key": b, "series": "cases", "value": sent[b]} for b in order]
    with_due = [r for r in rows if r.sent_at is not None and r.refund_due_by is not None]
    # the deadline is a consumer-local date, so the send time is read in the consumer's zone
    late = 0
    for r in with_due:
        if r.sent_at is not None and r.refund_due_by is not None \
                and r.sent_at.astimezone(zoneinfo.ZoneInfo(r.zone)).date() > r.refund_due_by:
            late += 1
    out["late_refunds"] = [{"key": "on time", "series": "refunds", "value": len(with_due) - late},
                           {"key": "late", "series": "refunds", "value": late}]
    disputed = [r for r in rows if r.disputed]
    res = Counter(r.resolution or "open" for r in disputed)
    out["disputes"] = [{"key": k, "series": "disputes", "value": res[k]}
                       for k in ("overturned", "upheld", "open")]
    return out


def summary(rows: Sequence[CaseRow]) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in rows)
    return {"cases": len(rows), "approved": outcomes["approve"],
            "manual_review": outcomes["manual_review"], "denied": outcomes["deny"],
            "approval_rate": _rate(outcomes["approve"], len(rows)),
            "flagged": sum(1 for r in rows if any(str(x.get("rule_id", "")).startswith(FRAUD_PREFIX)
                                                  for x in r.reasons)),
            "disputes_overturned": sum(1 for r in rows if r.resolution == "overturned")}


# --- output -----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def to_json(figs: Mapping[str, list[dict[str, Any]]], head: Mapping[str, Any]) -> str:
    data = {"summary": {k: _jsonable(v) for k, v in head.items()},
            "figures": {k: [{**p, "value": _jsonable(p["value"])} for p in pts]
                        for k, pts in figs.items()}}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): client ids and rule ids
# come from requests and rulesets, so they are quoted with a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(figs: Mapping[str, list[dict[str, Any]]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["figure", "key", "series", "value"])
    for name, pts in figs.items():
        for p in pts:
            w.writerow([csv_cell(c) for c in (name, p["key"], p["series"], _jsonable(p["value"]))])
    return buf.getvalue()


COLOURS = {"approve": "#2e7d32", "manual_review": "#f9a825", "deny": "#c62828"}
BAR = "#1565c0"


def _svg_bars(fig: str, pts: Sequence[Mapping[str, Any]]) -> str:
    """Horizontal bars, one per key, each carrying its exact value in data-value."""
    e = html.escape
    width, label_w, row_h = 640, 220, 22
    height = max(1, len(pts)) * row_h + 10
    top = max([Decimal(str(p["value"])) for p in pts] + [Decimal(1)])
    parts = [f'<svg id="chart-{fig}" class="chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" role="img" aria-label="{e(fig)}">']
    for i, p in enumerate(pts):
        y = 5 + i * row_h
        w: Decimal = max((Decimal(width - label_w - 60) * Decimal(str(p["value"])) / top
                          ).quantize(Decimal(1)), Decimal(1))
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{e(str(p["key"]))[:40]}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 6}" '
                     f'fill="{BAR}" data-key="{e(str(p["key"]))}" data-series="{e(str(p["series"]))}" '
                     f'data-value="{e(str(p["value"]))}"><title>{e(str(p["key"]))}: '
                     f'{e(str(p["value"]))}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4}" y="{y + 15}" font-size="12">'
                     f'{e(str(p["value"]))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_stacked(fig: str, pts: Sequence[Mapping[str, Any]]) -> str:
    """Stacked columns per day, one colour per outcome."""
    e = html.escape
    days = sorted({p["key"] for p in pts})
    totals = {d: sum(int(p["value"]) for p in pts if p["key"] == d) for d in days}
    top = max(list(totals.values()) + [1])
    width, height, base = 720, 240, 210
    step = Decimal(width - 60) / max(len(days), 1)
    bar_w = max(step * Decimal("0.8"), Decimal(1))
    parts = [f'<svg id="chart-{fig}" class="chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" role="img" aria-label="{e(fig)}">',
             f'<line x1="40" y1="{base}" x2="{width}" y2="{base}" stroke="#999"/>',
             f'<text x="36" y="{base - 190}" text-anchor="end" font-size="11">{top}</text>']
    for i, day in enumerate(days):
        x = (Decimal(40) + step * i).quantize(Decimal("0.1"))
        y = Decimal(base)
        for p in (p for p in pts if p["key"] == day):
            h = (Decimal(190) * int(p["value"]) / top).quantize(Decimal("0.1"))
            y -= h
            parts.append(f'<rect x="{x}" y="{y}" width="{bar_w.quantize(Decimal("0.1"))}" '
                         f'height="{h}" fill="{COLOURS.get(p["series"], BAR)}" '
                         f'data-key="{e(day)}" data-series="{e(p["series"])}" '
                         f'data-value="{p["value"]}"><title>{e(day)} {e(p["series"])}: '
                         f'{p["value"]}</title></rect>')
    if days:
        parts.append(f'<text x="40" y="{base + 16}" font-size="11">{e(days[0])}</text>')
        parts.append(f'<text x="{width}" y="{base + 16}" text-anchor="end" font-size="11">'
                     f'{e(days[-1])}</text>')
    legend = "".join(f'<tspan fill="{c}">&#9632; {o}  </tspan>' for o, c in COLOURS.items())
    parts.append(f'<text x="40" y="{base + 30}" font-size="11">{legend}</text></svg>')
    return "".join(parts)


def to_html(figs: Mapping[str, list[dict[str, Any]]], head: Mapping[str, Any],
            title: str) -> str:
    e = html.escape
    cards = "".join(f"<div class=card><b>{e(str(v))}</b><span>{e(k.replace('_', ' '))}</span></div>"
                    for k, v in head.items())
    sections = []
    for fig, (heading, kind) in FIGURES.items():
        pts = figs.get(fig, [])
        chart = _svg_stacked(fig, pts) if kind == "stacked" else _svg_bars(fig, pts)
        empty = "" if pts else "<p class=empty>no data</p>"
        sections.append(f'<section id="{fig}"><h2>{e(heading)}</h2>{chart}{empty}</section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #111; max-width: 60em; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ border: 1px solid #ccc; padding: .6em 1em; min-width: 8em; }}
.card b {{ display: block; font-size: 1.6em; }}
section {{ margin-top: 2em; }}
</style></head>
<body><h1>{e(title)}</h1>
<div class=cards>{cards}</div>
{''.join(sections)}
</body></html>
"""


def build(store: RecordStore, *, since: dt.date | None = None, until: dt.date | None = None,
          client: str | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    rows = case_rows(store, since=since, until=until, client=client)
    return figures(rows), summary(rows)


# --- the CLI ----------------------------------------------------------------------------------


def figure_names() -> Iterable[str]:
    return FIGURES.keys()
