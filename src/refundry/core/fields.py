"""The names a ruleset may use: every request field by its dotted path, and derived facts.

Derived from the model classes' metadata, plus the facts the engine computes before matching
(documented in docs/ruleset-language.md). ``facts.*`` is free: a client's own facts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import attrs

from refundry.core.models import Item, PriorRefund, RefundRequest


@attrs.frozen
class FieldInfo:
    path: str
    kind: str  # text, enum, money, count, flag, instant, date, any
    values: tuple[str, ...] = ()
    doc: str = ""

    @property
    def ordered(self) -> bool:
        return self.kind in ("money", "count", "instant", "date", "any")


DERIVED = (
    FieldInfo("prior_refunds.total", "money", doc="sum of prior_refunds[].amount"),
    FieldInfo("prior_refunds.count", "count", doc="number of prior refunds"),
    FieldInfo("transaction.refundable", "money",
              doc="transaction.amount minus the sum of prior refunds"),
    FieldInfo("items.count", "count", doc="number of item lines"),
    FieldInfo("jurisdiction.country", "text", doc="the ISO 3166-1 country of the jurisdiction"),
    FieldInfo("jurisdiction.eu", "flag", doc="the jurisdiction is an EU member state"),
)

# Facts held as sections or lists are reached through their members or through item conditions.
_SKIP_KINDS = {"object", "facts"}


def _walk(cls: type, prefix: str) -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for f in attrs.fields(cls):
        meta: dict[str, Any] = dict(f.metadata)
        path = f"{prefix}{f.name}"
        kind = meta["kind"]
        if kind == "object" and not meta.get("many"):
            out.update(_walk(meta["model"], path + "."))
        elif meta.get("many") or kind in _SKIP_KINDS:
            continue
        else:
            out[path] = FieldInfo(path, kind, tuple(meta.get("values", ())), meta.get("doc", ""))
    return out


@lru_cache(maxsize=1)
def request_fields() -> dict[str, FieldInfo]:
    fields = _walk(RefundRequest, "")
    for d in DERIVED:
        fields[d.path] = d
    return fields


@lru_cache(maxsize=1)
def item_fields() -> dict[str, FieldInfo]:
    return _walk(Item, "")


@lru_cache(maxsize=1)
def prior_refund_fields() -> dict[str, FieldInfo]:
    return _walk(PriorRefund, "")


def lookup(path: str, *, item: bool | str = False) -> FieldInfo | None:
    """``item``: True inside ``any_item``/``all_items``; ``"prior_refunds"`` inside
    ``any_prior_refund``/``all_prior_refunds``, where ``request.PATH`` names a request field."""
    if item == "prior_refunds":
        if path.startswith("request."):
            found = lookup(path[len("request."):])
            return attrs.evolve(found, path=path) if found else None
        return prior_refund_fields().get(path)
    if not item and (path.startswith("facts.") and len(path) > 6):
        return FieldInfo(path, "any")
    return (item_fields() if item else request_fields()).get(path)



def enum_tables() -> str:
    """The closed value sets of the language as Markdown, for docs/ruleset-language.md.

    Generated from the models so the documentation cannot drift from what the loader accepts
    (tests/test_docs_enums.py compares the two).
    """
    from refundry.core.models import DEADLINE_NAMES, EFFECTS, OUTCOMES

    rows = ["| field | values |", "|---|---|"]
    for prefix, table in (("", request_fields()), ("item ", item_fields())):
        for info in table.values():
            if info.kind == "enum":
                rows.append(f"| {prefix}`{info.path}` | {', '.join(f'`{v}`' for v in info.values)} |")
    rows += ["", "| ruleset key | values |", "|---|---|",
             f"| `effect` | {', '.join(f'`{v}`' for v in EFFECTS)} |",
             f"| test `expect.outcome` | {', '.join(f'`{v}`' for v in OUTCOMES)} |",
             f"| deadline `name` | {', '.join(f'`{v}`' for v in DEADLINE_NAMES)} |"]
    return "\n".join(rows) + "\n"
