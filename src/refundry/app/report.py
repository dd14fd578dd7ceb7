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
from refundry.records.access import ScopedStore
from refundry.records.events import STORE_CASE, RecordStore

FRAUD_PREFIX = "fraud-"  # the rule id prefix that marks a fraud signal (docs/fraud.md)
HOUR = Decimal(3600)
TIME_BUCKETS = ((Decimal(1), "< 1 h"), (Decimal(24), "< 1 day"), (Decimal(72), "< 3 days"),
                (Decimal(168), "< 7 days"), (Decimal(336), "< 14 days"),
                (None, ">= 14 days"))

# figure id -> (title, kind); the order is the report's
FIGURES: dict[str, tuple[str, str]] = {
    "decisions_over_time": ("Decisions per day (by request date, the engine's first decision)", "stacked"),
    "approval_rate_by_client": ("Approval rate by client (the engine's first decision, %)", "bars"),
    "approval_rate_by_industry": ("Approval rate by industry (the engine's first decision, %)", "bars"),
    "approval_rate_by_reason": ("Approval rate by request reason (the engine's first decision, %)", "bars"),
    "top_deny_reasons": ("Top deny reasons (rules)", "bars"),
    "top_review_reasons": ("Top manual-review reasons (rules)", "bars"),
    "fraud_flags": ("Fraud flags (rules)", "bars"),
    "time_to_decision": ("Time from request to decision", "bars"),
    "time_to_refund": ("Time from request to refund sent", "bars"),
    "late_refunds": ("Refunds sent after their statutory deadline", "bars"),
    "disputes": ("Disputes and their resolution", "bars"),
    "money": ("Money per client and currency: refunded, at stake, withheld", "money"),
}
MONEY_SERIES = ("refunded", "at_stake", "withheld")


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
    currency: str = ""
    requested: Decimal = Decimal(0)  # what the customer asked for
    amount: Decimal = Decimal(0)  # what the case stands at: the decision's, or an overturn's
    before_dispute: str = ""

    @property
    def final(self) -> str:
        """Where the case stands now: approved (paid or not), denied, in review or disputed."""
        if self.status in ("approved", "processed", "refunded"):
            return "approved"
        return self.status


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def case_rows(store: RecordStore | ScopedStore, *, since: dt.date | None = None,
              until: dt.date | None = None, client: str | None = None,
              upto: int | None = None) -> list[CaseRow]:
    """A row per case whose request date (the consumer's, as written) is in [since, until],
    from the events up to number ``upto`` (default: all)."""
    rows: dict[str, CaseRow] = {}
    for event in store.events():
        if upto is not None and event.seq > upto:
            break
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
                    str(request.get("jurisdiction", ""))) or "UTC"),
                currency=str(decision.get("currency") or request.get("currency") or ""),
                requested=_money(request.get("amount")), amount=_money(decision.get("amount")))
            continue
        row = rows.get(event.request_id)
        if row is not None:
            _follow(row, event)
    return list(rows.values())


def _follow(row: CaseRow, event: Any) -> None:
    """One event after the decision: the status it leads to, payments, disputes."""
    if event.type in ("approved", "denied", "processed", "refunded"):
        row.status = event.type
    if event.type == "processed" and row.sent_at is None:
        row.sent_at = _instant(event.at)
    elif event.type == "disputed":
        row.disputed, row.before_dispute, row.status = True, row.status, "disputed"
    elif event.type == "dispute_resolved":
        row.resolution = event.details.get("resolution")
        if row.resolution == "overturned":
            row.status = "approved"
            if event.details.get("amount") is not None:
                row.amount = _money(event.details["amount"])
        else:
            row.status = row.before_dispute or row.status


def _money(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (ArithmeticError, ValueError):
        return Decimal(0)
    return amount if amount.is_finite() else Decimal(0)


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
    # no deadline at all is said in words (NO_DEADLINE), not drawn as "0 on time / 0 late"
    out["late_refunds"] = [{"key": "on time", "series": "refunds", "value": len(with_due) - late},
                           {"key": "late", "series": "refunds", "value": late}] if with_due else []
    disputed = [r for r in rows if r.disputed]
    res = Counter(r.resolution or "open" for r in disputed)
    out["disputes"] = [{"key": k, "series": "disputes", "value": res[k]}
                       for k in ("overturned", "upheld", "open")] if disputed else []
    out["money"] = money(rows)
    return out


def money(rows: Sequence[CaseRow]) -> list[dict[str, Any]]:
    """Per client and currency: refunded (sent), at stake (asked for in cases still open: in
    review or disputed) and withheld (asked for but not granted in decided cases)."""
    sums: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(
        lambda: dict.fromkeys(MONEY_SERIES, Decimal(0)))
    for r in rows:
        cell = sums[(r.client_id, r.currency)]
        if r.status in ("processed", "refunded"):
            cell["refunded"] += r.amount
        if r.final in ("manual_review", "disputed"):
            cell["at_stake"] += r.requested
        elif r.final == "denied":
            cell["withheld"] += r.requested
        elif r.final == "approved":
            cell["withheld"] += max(r.requested - r.amount, Decimal(0))
    return [{"key": f"{client} {currency}", "series": series, "value": cell[series]}
            for (client, currency), cell in sorted(sums.items()) for series in MONEY_SERIES]


def summary(rows: Sequence[CaseRow]) -> dict[str, Any]:
    """The headline figures: where the cases stand now, and what the engine first decided."""
    first = Counter(r.outcome for r in rows)
    final = Counter(r.final for r in rows)
    return {"cases": len(rows), "approved": final["approved"], "denied": final["denied"],
            "manual_review": final["manual_review"], "disputed": final["disputed"],
            "approval_rate": _rate(final["approved"], len(rows)),
            "first_approved": first["approve"], "first_denied": first["deny"],
            "first_manual_review": first["manual_review"],
            "first_approval_rate": _rate(first["approve"], len(rows)),
            "flagged": sum(1 for r in rows if any(str(x.get("rule_id", "")).startswith(FRAUD_PREFIX)
                                                  for x in r.reasons)),
            "disputes_overturned": sum(1 for r in rows if r.resolution == "overturned"),
            "refund_deadlines": sum(1 for r in rows if r.refund_due_by is not None)}


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
MONEY_COLOURS = {"refunded": "#2e7d32", "at_stake": "#f9a825", "withheld": "#6d4c41"}
BAR = "#1565c0"
NO_DEADLINE = "No case had a refund deadline, so none can be late."
NONE_SENT = "No refund with a deadline has been sent yet."
MAX_DAY_LABELS = 8


def _svg_open(fig: str, width: int, height: int) -> str:
    # a viewBox and width 100%: the chart scales to its column instead of a fixed pixel width
    return (f'<svg id="chart-{fig}" class="chart" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
            f'role="img" aria-label="{html.escape(fig)}">')


def _rect(x: Any, y: Any, w: Any, h: Any, colour: str, key: str, series: str, value: Any) -> str:
    e = html.escape
    return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{colour}" '
            f'data-key="{e(key)}" data-series="{e(series)}" data-value="{e(str(value))}">'
            f'<title>{e(key)} {e(series)}: {e(str(value))}</title></rect>')


def _legend(items: Mapping[str, str], y: int) -> str:
    """Swatches and labels in a group of their own, inside the chart's box."""
    parts = [f'<g class="legend" transform="translate(40 {y})">']
    x = 0
    for label, colour in items.items():
        parts.append(f'<rect x="{x}" y="0" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="10" font-size="12">{html.escape(label.replace("_", " "))}</text>')
        x += 24 + 8 * len(label)
    return "".join(parts) + "</g>"


def _svg_bars(fig: str, pts: Sequence[Mapping[str, Any]], unit: str = "") -> str:
    """Horizontal bars, one per key, each carrying its exact value in data-value."""
    e = html.escape
    width, label_w, row_h = 640, 220, 22
    height = max(1, len(pts)) * row_h + 10
    top = max([Decimal(str(p["value"])) for p in pts] + [Decimal(1)])
    parts = [_svg_open(fig, width, height)]
    for i, p in enumerate(pts):
        y = 5 + i * row_h
        w: Decimal = max((Decimal(width - label_w - 70) * Decimal(str(p["value"])) / top
                          ).quantize(Decimal(1)), Decimal(1))
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{e(str(p["key"]))[:40]}</text>')
        parts.append(_rect(label_w, y + 3, w, row_h - 6, BAR, str(p["key"]), str(p["series"]),
                           p["value"]))
        parts.append(f'<text x="{label_w + w + 4}" y="{y + 15}" font-size="12">'
                     f'{e(str(p["value"]))}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_money(fig: str, pts: Sequence[Mapping[str, Any]]) -> str:
    """One group of three bars per client and currency; amounts only compare within a row."""
    e = html.escape
    width, label_w, bar_h = 640, 160, 14
    keys = list(dict.fromkeys(str(p["key"]) for p in pts))
    group_h = bar_h * len(MONEY_SERIES) + 12
    height = len(keys) * group_h + 30
    parts = [_svg_open(fig, width, height)]
    for i, key in enumerate(keys):
        row = [p for p in pts if p["key"] == key]
        top = max([Decimal(str(p["value"])) for p in row] + [Decimal(1)])
        y0 = 5 + i * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + 2 * bar_h}" text-anchor="end" '
                     f'font-size="12">{e(key)[:30]}</text>')
        for j, p in enumerate(row):
            y = y0 + j * bar_h
            w = max((Decimal(width - label_w - 90) * Decimal(str(p["value"])) / top
                     ).quantize(Decimal(1)), Decimal(1))
            parts.append(_rect(label_w, y, w, bar_h - 2, MONEY_COLOURS[p["series"]], key,
                               str(p["series"]), p["value"]))
            parts.append(f'<text x="{label_w + w + 4}" y="{y + bar_h - 3}" font-size="11">'
                         f'{e(str(p["value"]))}</text>')
    parts.append(_legend(MONEY_COLOURS, height - 18) + "</svg>")
    return "".join(parts)


def _day_labels(days: Sequence[str]) -> list[int]:
    """The columns that get a date under them: evenly spread, first and last included."""
    if len(days) <= MAX_DAY_LABELS:
        return list(range(len(days)))
    step = (len(days) - 1) / (MAX_DAY_LABELS - 1)
    return sorted({round(i * step) for i in range(MAX_DAY_LABELS)})


def _svg_stacked(fig: str, pts: Sequence[Mapping[str, Any]]) -> str:
    """Stacked columns per day, one colour per outcome, dates under their own columns."""
    e = html.escape
    days = sorted({p["key"] for p in pts})
    totals = {d: sum(int(p["value"]) for p in pts if p["key"] == d) for d in days}
    top = max(list(totals.values()) + [1])
    width, height, base, plot_h, left = 720, 290, 210, 190, 70  # room for the first date
    step = Decimal(width - left - 10) / max(len(days), 1)
    bar_w = max(step * Decimal("0.8"), Decimal(1))
    parts = [_svg_open(fig, width, height),
             f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{base - plot_h + 4}" text-anchor="end" font-size="11">{top}</text>',
             f'<text x="{left - 4}" y="{base}" text-anchor="end" font-size="11">0</text>']
    for i, day in enumerate(days):
        x = (Decimal(left) + step * i).quantize(Decimal("0.1"))
        y = Decimal(base)
        for p in (p for p in pts if p["key"] == day):
            h = (Decimal(plot_h) * int(p["value"]) / top).quantize(Decimal("0.1"))
            y -= h
            parts.append(_rect(x, y, bar_w.quantize(Decimal("0.1")), h,
                               COLOURS.get(p["series"], BAR), day, p["series"], p["value"]))
    for i in _day_labels(days):
        centre = (Decimal(left) + step * i + bar_w / 2).quantize(Decimal("0.1"))
        parts.append(f'<text class="day" x="{centre}" y="{base + 14}" font-size="11" '
                     f'text-anchor="end" transform="rotate(-40 {centre} {base + 14})">'
                     f'{e(days[i])}</text>')
    parts.append(_legend(COLOURS, height - 16) + "</svg>")
    return "".join(parts)


_CARDS = (  # (label, summary key, the engine's first decision behind it, suffix)
    ("cases", "cases", None, ""),
    ("approved", "approved", "first_approved", ""),
    ("approval rate", "approval_rate", "first_approval_rate", " %"),
    ("denied", "denied", "first_denied", ""),
    ("in review", "manual_review", "first_manual_review", ""),
    ("disputed", "disputed", None, ""),
    ("flagged", "flagged", None, ""),
    ("disputes overturned", "disputes_overturned", None, ""),
)


def _cards(head: Mapping[str, Any]) -> str:
    e = html.escape
    out = []
    for label, key, first, suffix in _CARDS:
        second = (f"<small>first decision: {e(str(head[first]))}{suffix}</small>"
                  if first else "")
        out.append(f"<div class=card><b>{e(str(head[key]))}{suffix}</b>"
                   f"<span>{e(label)}</span>{second}</div>")
    return "".join(out)


def _section(fig: str, heading: str, kind: str, pts: Sequence[Mapping[str, Any]],
             head: Mapping[str, Any]) -> str:
    e = html.escape
    if not pts:
        if fig == "late_refunds":  # saying so is the finding; zero bars would hide it
            why = NONE_SENT if head.get("refund_deadlines") else NO_DEADLINE
            return f'<section id="{fig}"><h2>{e(heading)}</h2><p class=none>{why}</p></section>'
        return ""  # an empty chart only takes space
    if kind == "stacked":
        chart = _svg_stacked(fig, pts)
    elif kind == "money":
        chart = _svg_money(fig, pts)
    else:
        chart = _svg_bars(fig, pts, " %" if fig.startswith("approval_rate") else "")
    return f'<section id="{fig}"><h2>{e(heading)}</h2>{chart}</section>'


def to_html(figs: Mapping[str, list[dict[str, Any]]], head: Mapping[str, Any],
            title: str) -> str:
    e = html.escape
    sections = "".join(_section(fig, heading, kind, figs.get(fig, []), head)
                       for fig, (heading, kind) in FIGURES.items())
    tie = (f"generated {e(str(head.get('generated_at', '')))} from the records up to event "
           f"{e(str(head.get('chain_events', '')))}, chain head "
           f"<code>{e(str(head.get('chain_head', '')))}</code>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em 2em; color: #111; }}
.meta {{ color: #555; font-size: .9em; overflow-wrap: anywhere; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.card {{ border: 1px solid #ccc; padding: .6em 1em; min-width: 9em; }}
.card b {{ display: block; font-size: 1.6em; }}
.card small {{ display: block; color: #555; }}
main {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(32em, 1fr)); gap: 1em 2.5em; }}
section {{ margin-top: 1.5em; min-width: 0; }}
svg.chart {{ display: block; max-width: 60em; }}
</style></head>
<body><h1>{e(title)}</h1>
<p class=meta>{tie}</p>
<div class=cards>{_cards(head)}</div>
<main>{sections}</main>
</body></html>
"""


def build(store: RecordStore | ScopedStore, *, since: dt.date | None = None, until: dt.date | None = None,
          client: str | None = None,
          now: dt.datetime | None = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The figures and the headline, tied to the records: the chain head the report was made
    from and when, so a report can be checked against the store (`records verify --expect-head`)."""
    point = store.checkpoint()  # first: events appended while reading are not in the report
    rows = case_rows(store, since=since, until=until, client=client, upto=point.count)
    head = summary(rows)
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    head.update(generated_at=when.isoformat().replace("+00:00", "Z"), chain_head=point.head,
                chain_events=point.count)
    return figures(rows), head


# --- the CLI ----------------------------------------------------------------------------------


def figure_names() -> Iterable[str]:
    return FIGURES.keys()
