"""What a recorded case looks like on the console's pages: ages, the nearest statutory
deadline and whether it is close, reason codes, fraud flags, the approvals still needed."""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Any

from refundry.records.events import Case

FRAUD_PREFIX = "fraud-"  # rule ids that mark a fraud signal (docs/fraud.md)
CLOSE_DAYS = 3  # a deadline this near (or past) is shown in the warning colour


def _when(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def _age(since: dt.datetime | None, now: dt.datetime) -> str:
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def nearest_deadline(decision: dict[str, Any], today: dt.date) -> dict[str, Any] | None:
    """The deadline nearest to expiry that has not passed (else the latest passed one)."""
    dated = []
    for d in decision.get("deadlines") or ():
        try:
            dated.append((dt.date.fromisoformat(str(d.get("due"))[:10]), d))
        except ValueError:
            continue
    if not dated:
        return None
    ahead = sorted((x for x in dated if x[0] >= today), key=lambda x: x[0])
    due, d = ahead[0] if ahead else max(dated, key=lambda x: x[0])
    days = (due - today).days
    return {"name": d.get("name"), "due": due.isoformat(), "days": days,
            "close": days <= CLOSE_DAYS, "citation": d.get("citation")}


def _row(case: Case, now: dt.datetime) -> dict[str, Any]:
    reasons = case.decision.get("reasons") or []
    evaluated = _when(case.events[0].at)
    return {"id": case.request_id, "status": case.status,
            "age": _age(evaluated, now),
            "deadline": nearest_deadline(case.decision, now.date()),
            "amount": case.amount, "currency": case.decision.get("currency", ""),
            "client": case.request.get("client_id", ""),
            "industry": case.request.get("industry", ""),
            "codes": sorted({str(r.get("code")) for r in reasons
                             if r.get("effect") == "manual_review" and r.get("code")})
            or sorted({str(r.get("code")) for r in reasons if r.get("code")}),
            "fraud": sorted({str(r.get("rule_id")) for r in reasons
                             if str(r.get("rule_id", "")).startswith(FRAUD_PREFIX)}),
            "approvals": list(case.approvals), "required": case.required_approvals}


def queue_rows(cases: tuple[Case, ...] | list[Case], now: dt.datetime) -> list[dict[str, Any]]:
    return [_row(c, now) for c in cases]


def _timeline(decision: dict[str, Any], today: dt.date) -> list[dict[str, Any]]:
    out = []
    for d in decision.get("deadlines") or ():
        due = str(d.get("due", ""))[:10]
        try:
            days = (dt.date.fromisoformat(due) - today).days
        except ValueError:
            days = None
        out.append({**d, "due": due, "days": days,
                    "close": days is not None and days <= CLOSE_DAYS})
    return sorted(out, key=lambda d: d["due"])


def _events(case: Case) -> list[dict[str, Any]]:
    rows = []
    for e in case.events:
        details = e.details
        said = details.get("justification") or details.get("reason") or \
            details.get("explanation") or ""
        rows.append({"seq": e.seq, "at": e.at, "actor": e.actor, "type": e.type,
                     "said": said, "hash": e.hash})
    return rows


def _messages(case: Case) -> list[dict[str, Any]]:
    return [{"at": e.at, **e.details["communicated"]} for e in case.events
            if isinstance(e.details.get("communicated"), dict)]


def case_view(case: Case, now: dt.datetime) -> dict[str, Any]:
    row = _row(case, now)
    ruleset = case.decision.get("ruleset") or {}
    needed = max(0, case.required_approvals - len(case.approvals))
    return {**row, "decision": case.decision, "outcome": case.decision.get("outcome"),
            "reasons": case.decision.get("reasons") or [],
            "ruleset": ruleset, "layers": ruleset.get("layers") or [],
            "timeline": _timeline(case.decision, now.date()), "events": _events(case),
            "messages": _messages(case), "needed": needed, "dispute": case.dispute,
            "submitter": case.submitter}


def _condition(node: dict[str, Any]) -> str:
    if "within" in node:
        return f"within `{node['within']}` (last day {node.get('last_day')}, " \
               f"notice {node.get('notice')})"
    return f"{node.get('field')} {node.get('op')} {node.get('value')!r}: saw {node.get('seen')!r}"


def conditions(node: Any, depth: int = 0) -> list[dict[str, Any]]:
    """A rule's ``when`` tree, flattened into one line per condition with its nesting."""
    if not isinstance(node, dict):
        return []
    if "field" in node or "within" in node:
        return [{"depth": depth, "text": _condition(node), "result": node.get("result")}]
    lines = []
    for key in ("all", "any", "not", "any_item", "all_items"):
        if key in node:
            lines.append({"depth": depth, "text": key.replace("_", " "),
                          "result": node.get("result")})
            children = node[key] if isinstance(node[key], list) else [node[key]]
            for child in children:
                lines += conditions(child, depth + 1)
    return lines


def explained_rules(explanation: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"rule_id": r.get("rule_id"), "layer": r.get("layer"), "effect": r.get("effect"),
             "matched": r.get("matched"), "lines": conditions(r.get("when"))}
            for r in explanation.get("rules") or ()]


def side_by_side(old: str, new: str) -> list[dict[str, Any]]:
    """Two texts as rows of (old line, new line, what happened), changed lines paired."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[dict[str, Any]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            left = a[i1 + k] if i1 + k < i2 else None
            right = b[j1 + k] if j1 + k < j2 else None
            rows.append({"tag": tag, "old_no": i1 + k + 1 if left is not None else None,
                         "old": left, "new_no": j1 + k + 1 if right is not None else None,
                         "new": right})
    return rows
