"""``refundry diff OLD NEW --requests FILE``: what a ruleset change does to real requests.

Both sides are loaded into their own ``Engine`` (OLD and NEW are ruleset files or directories;
``--with PATH`` adds rulesets both sides share, such as the baselines a client file extends).
Every request (canonical JSON, one per line) is decided under both, and every decision that
changes is reported: outcome, amount, each deadline and each rule that matched. Changes are
grouped by kind ("outcome: deny -> approve", "deadline period_ends: later", "rule X: no longer
matches") with a count and the request ids behind each.

The library entry point is :func:`diff_decisions`; the CLI adds reading and printing.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import yaml

from refundry.core.engine import Engine
from refundry.core.errors import RefundryError
from refundry.core.models import Decision
from refundry.core.request import MAX_REQUEST_BYTES, JsonInputError, decode_json, read_lines

TABLE_IDS = 5  # request ids shown per change in the table; --json lists them all


@attrs.frozen
class Snapshot:
    """The parts of a decision a ruleset change can move."""

    outcome: str
    amount: Decimal
    deadlines: tuple[tuple[str, dt.date], ...]
    rules: tuple[str, ...]

    @classmethod
    def of(cls, decision: Decision) -> Snapshot:
        return cls(decision.outcome, decision.amount,
                   tuple(sorted((d.name, d.due) for d in decision.deadlines)),
                   decision.rule_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "amount": str(self.amount),
                "deadlines": {n: d.isoformat() for n, d in self.deadlines},
                "rules": list(self.rules)}


def changes_between(old: Snapshot, new: Snapshot) -> list[str]:
    """The kinds of change from ``old`` to ``new``; empty when the decision is the same."""
    out: list[str] = []
    if old.outcome != new.outcome:
        out.append(f"outcome: {old.outcome} -> {new.outcome}")
    if old.amount != new.amount:
        out.append("amount: " + ("increased" if new.amount > old.amount else "decreased"))
    before, after = dict(old.deadlines), dict(new.deadlines)
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        if b is None:
            out.append(f"deadline {name}: added")
        elif a is None:
            out.append(f"deadline {name}: removed")
        else:
            out.append(f"deadline {name}: " + ("later" if a > b else "earlier"))
    old_rules, new_rules = set(old.rules), set(new.rules)
    for rid in [r for r in new.rules if r not in old_rules]:
        out.append(f"rule {rid}: now matches")
    for rid in [r for r in old.rules if r not in new_rules]:
        out.append(f"rule {rid}: no longer matches")
    return out


def change_detail(kind: str, old: Snapshot, new: Snapshot) -> str:
    """The values behind a kind of change, for one request: `200.00 -> 170.00`."""
    if kind.startswith("amount:"):
        return f"{old.amount} -> {new.amount}"
    if kind.startswith("deadline "):
        name = kind.split()[1].rstrip(":")
        before, after = dict(old.deadlines).get(name), dict(new.deadlines).get(name)
        return f"{before.isoformat() if before else 'none'} -> {after.isoformat() if after else 'none'}"
    return ""


@attrs.define
class DiffReport:
    requests: int = 0
    changed: list[dict[str, Any]] = attrs.field(factory=list)
    by_change: dict[str, list[str]] = attrs.field(factory=dict)
    details: dict[tuple[str, str], str] = attrs.field(factory=dict)  # (kind, request) -> a -> b
    errors: list[str] = attrs.field(factory=list)
    old_rulesets: list[dict[str, Any]] = attrs.field(factory=list)
    new_rulesets: list[dict[str, Any]] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "changed": len(self.changed),
            "unchanged": self.requests - len(self.changed),
            "changes": [{"change": k, "count": len(v), "request_ids": v}
                        for k, v in sorted(self.by_change.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
            "decisions": self.changed,
            "errors": self.errors,
            "old": {"rulesets": self.old_rulesets},
            "new": {"rulesets": self.new_rulesets},
        }

    def table(self) -> str:
        lines = [f"requests: {self.requests}  changed: {len(self.changed)}  "
                 f"unchanged: {self.requests - len(self.changed)}"]
        rows = sorted(self.by_change.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if rows:
            width = max(len(k) for k, _ in rows)
            lines.append(f"{'change':<{width}}  {'count':>7}  request ids")
            for key, ids in rows:
                shown = ", ".join(self._shown(key, i) for i in ids[:TABLE_IDS]) + (
                    f", ... (+{len(ids) - TABLE_IDS})" if len(ids) > TABLE_IDS else "")
                lines.append(f"{key:<{width}}  {len(ids):>7}  {shown}")
        for err in self.errors:
            lines.append(f"skipped: {err}")
        return "\n".join(lines)

    def _shown(self, kind: str, request_id: str) -> str:
        detail = self.details.get((kind, request_id))
        return f"{request_id} ({detail})" if detail else request_id


def diff_decisions(old: Engine, new: Engine, requests: Iterable[tuple[str, Mapping[str, Any]]], *,
                   as_of: dt.datetime | None = None, ruleset: str | None = None) -> DiffReport:
    """Decide every ``(label, request)`` under both engines and collect what changed.

    ``label`` names the request when it has no ``request_id`` (e.g. its line number).
    """
    report = DiffReport(old_rulesets=[r.to_dict() for r in old.rulesets],
                        new_rulesets=[r.to_dict() for r in new.rulesets])
    for label, request in requests:
        report.requests += 1
        rid = request.get("request_id") if isinstance(request, Mapping) else None
        name = rid if isinstance(rid, str) and rid else label
        a = Snapshot.of(old.evaluate(request, as_of=as_of, ruleset=ruleset))
        b = Snapshot.of(new.evaluate(request, as_of=as_of, ruleset=ruleset))
        kinds = changes_between(a, b)
        if not kinds:
            continue
        report.changed.append({"request_id": name, "changes": kinds,
                               "old": a.to_dict(), "new": b.to_dict()})
        for kind in kinds:
            report.by_change.setdefault(kind, []).append(name)
            detail = change_detail(kind, a, b)
            if detail:
                report.details[(kind, name)] = detail
    return report


def read_requests(path: str, errors: list[str]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Canonical requests, one JSON object per line; blank lines are skipped, bad lines are
    reported in ``errors`` and skipped."""
    try:
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise RefundryError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
    with handle:
        for number, line in read_lines(handle, MAX_REQUEST_BYTES):
            if not line.strip():
                continue
            try:
                data = decode_json(line)
            except JsonInputError as exc:
                errors.append(f"{path}:{number}:{exc.column or 1}: {exc}")
                continue
            if not isinstance(data, dict):
                errors.append(f"{path}:{number}:1: a request is a JSON object")
                continue
            yield f"line {number}", data


def _ruleset_ids(paths: Iterable[Path]) -> set[str]:
    from refundry.core.loader import discover

    ids: set[str] = set()
    for path in discover(paths):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("ruleset"), str):
            ids.add(data["ruleset"])
    return ids


def engine_side(path: str, shared: list[str], backend: str) -> Engine:
    """One side: its own rulesets plus the shared ones it does not define itself."""
    from refundry.core.loader import discover

    own = [Path(path)]
    mine = _ruleset_ids(own)
    extra = [p for p in discover([Path(s) for s in shared]) if not (_ruleset_ids([p]) & mine)]
    return Engine.from_path([*own, *extra], backend=backend)


