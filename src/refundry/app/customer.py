"""What a customer is told: status messages, next steps, receipts, in English and German.

Texts come from ``customer_messages.yaml`` (a catalogue keyed by case status and by reason
code) and from the rules' own ``customer_message``: in each language it is given in
(``{en: ..., de: ...}``), or in English when it is one text. Whatever is shown passes
``_safe``: a sentence that contains a rule id, a reason code, a staff message, a fraud signal's
name or an internal note of the case is dropped, so a careless ruleset text cannot leak them.

Every message or receipt handed to a customer is recorded on its case as a ``note`` event whose
details hold ``communicated: {channel, template, language, text}``; ``refundry records show``
lists it with the rest of the case (docs/customer.md).
"""

from __future__ import annotations

import datetime as dt
import html
import string
import zoneinfo
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs
import yaml

from refundry.core import jurisdictions
from refundry.core.errors import RefundryError
from refundry.records.events import Case, RecordStore

LANGUAGES = ("en", "de")
CATALOGUE = Path(__file__).with_name("customer_messages.yaml")
RECEIPT_STATUSES = ("processed", "refunded")
# Words that name how refundry judged a request; a customer never reads them.
INTERNAL_WORDS = ("fraud", "anomaly", "velocity", "score", "facts.", "history.", "rule ",
                  "refundry.", "manual_review", "floor")
_OUTCOME_STATUS = {"approve": "approved", "deny": "denied", "manual_review": "manual_review"}


class CustomerError(RefundryError):
    """A message or receipt cannot be given (unknown language, no refund sent yet)."""


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Any]:
    """The message catalogue; read once, never changed."""
    with CATALOGUE.open(encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh))


def _language(lang: str | None) -> str:
    lang = (lang or "en").lower().split("-")[0]
    if lang not in LANGUAGES:
        raise CustomerError(f"language `{lang}` is not one of {', '.join(LANGUAGES)}")
    return lang


def money_text(amount: Any, lang: str) -> str:
    text = f"{Decimal(str(amount)):,.2f}" if amount not in (None, "") else "0.00"
    if lang == "de":  # 1.234,56
        text = text.replace(",", "_").replace(".", ",").replace("_", ".")
    return text


def date_text(day: dt.date | None, lang: str) -> str:
    if day is None:
        return ""
    if lang == "de":
        return day.strftime("%d.%m.%Y")
    return f"{day.day} {day.strftime('%B %Y')}"


def _consumer_zone(request: Mapping[str, Any]) -> zoneinfo.ZoneInfo:
    name = request.get("timezone") or jurisdictions.default_timezone(
        str(request.get("jurisdiction", ""))) or "UTC"
    return zoneinfo.ZoneInfo(name)


MIN_FREE_TEXT = 12  # a shorter note ("refund", "ok, paid") would match ordinary sentences


def _forbidden(decision: Mapping[str, Any], case: Case | None) -> tuple[list[str], list[str]]:
    """The internal strings a customer text must not contain: (names, free texts).

    Names (internal words, rule ids, reason codes) never occur in a sentence written for a
    customer. Free texts (staff messages, the request's note, notes, justifications and dispute
    reasons on the case) are what people typed; a reason sentence that repeats one is dropped.
    """
    names = list(INTERNAL_WORDS)
    free = []
    for r in decision.get("reasons") or ():
        names += [str(r.get("rule_id", "")), str(r.get("code", ""))]
        free.append(str(r.get("message", "")))
    if case is not None:
        free.append(str(case.request.get("note") or ""))
        for e in case.events:
            d = e.details
            for key in ("text", "justification", "reason"):
                if isinstance(d.get(key), str):
                    free.append(d[key])
    return ([s.lower() for s in names if len(s) >= 5],
            [s.lower() for s in free if len(s) >= MIN_FREE_TEXT])


def _safe(sentence: str, forbidden: Iterable[str]) -> bool:
    low = sentence.lower()
    return not any(f in low for f in forbidden)


@attrs.frozen
class Message:
    """One customer-facing message: the status, its text, the next step and the due date."""

    request_id: str
    language: str
    template: str
    status: str
    title: str
    text: str
    next_step: str
    due: dt.date | None
    amount: str
    currency: str

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "status": self.title, "message": self.text,
                "next_step": self.next_step, "due": self.due.isoformat() if self.due else None,
                "amount": self.amount, "currency": self.currency, "language": self.language}

    def plain(self) -> str:
        lines = [self.text, self.next_step]
        return "\n".join(s for s in lines if s)


def _due(decision: Mapping[str, Any]) -> dt.date | None:
    for d in decision.get("deadlines") or ():
        if d.get("name") == "refund_due_by" and d.get("due"):
            return dt.date.fromisoformat(str(d["due"]))
    return None


def _payment(case: Case | None, lang: str) -> tuple[str, str]:
    """(method, reference) of the latest payment event, as a customer reads them."""
    labels = catalogue()["receipt"][lang]
    if case is None:
        return labels["original"], ""
    txn = case.request.get("transaction") or {}
    pm = txn.get("payment_method") or {}
    method = labels["original"]
    if pm.get("last4"):
        method = string.Template(labels["card"]).safe_substitute(last4=pm["last4"])
    reference = ""
    for e in case.events:
        if e.type in RECEIPT_STATUSES:
            # `refunded` after `processed --reference X` is the same payment: keep X; a
            # reference is made up only when no step of the payment gave one.
            reference = e.details.get("reference") or reference or "RF-" + e.hash[7:19].upper()
    return method, reference


def message(decision: Mapping[str, Any] | Any, lang: str = "en", *,
            case: Case | None = None) -> Message:
    """The customer message for a decision (``Decision`` or its dict), or for a recorded case
    (pass ``case``; its status, amount and dispute decide the text)."""
    lang = _language(lang)
    if not isinstance(decision, Mapping):
        decision = decision.to_dict()
    own_status = _OUTCOME_STATUS.get(str(decision.get("outcome")), "manual_review")
    status = case.status if case is not None else own_status
    entry = catalogue()["status"][status][lang]
    amount = decision.get("amount")
    dispute = case.dispute if case is not None else None
    if dispute and dispute.get("resolution") == "overturned" and dispute.get("amount"):
        amount = dispute["amount"]
    due = _due(decision) if status == "approved" else None
    method, reference = _payment(case, lang)
    values = {"amount": money_text(amount, lang), "currency": decision.get("currency", ""),
              "due": date_text(due, lang), "method": method, "reference": reference}
    names, free = _forbidden(decision, case)
    sentences = [string.Template(entry["text"]).safe_substitute(values)]
    reason_codes = []
    # The rules' reasons explain the decision itself; once a person or a payment moved the
    # case on, they no longer describe it.
    if status == own_status:
        reasons = catalogue()["reasons"]
        for r in decision.get("reasons") or ():
            # refundry's own reasons (no rule matched, a floor held) only repeat the status
            if r.get("effect") != decision.get("outcome") or \
                    str(r.get("rule_id", "")).startswith("refundry."):
                continue
            code = str(r.get("code", ""))
            text = (reasons.get(code) or {}).get(lang)
            if text is None:  # the rule's own text, in this language (or English as written)
                text = (r.get("customer_messages") or {}).get(lang)
            if text is None and lang == "en" and not r.get("customer_messages"):
                text = r.get("customer_message")
            if text and text not in sentences and _safe(text, names + free):
                sentences.append(text)
                reason_codes.append(code)
    if dispute and dispute.get("explanation") and status != "disputed":
        sentences.append(str(dispute["explanation"]))  # written for the customer (records.md)
    next_step = string.Template(entry["next_due" if due and "next_due" in entry else "next"]
                                ).safe_substitute(values)
    text = " ".join(sentences)
    # The status texts come from the catalogue, so only names can have slipped in: a bug
    # in a template or the catalogue, which must fail loudly rather than reach a customer.
    if not _safe(text + " " + next_step, names):
        raise CustomerError("a customer message would reveal internal information")
    template = f"status.{status}" + (f" reasons:{','.join(reason_codes)}" if reason_codes else "")
    return Message(request_id=str(decision.get("request_id", "")), language=lang,
                   template=template, status=status, title=entry["title"], text=text,
                   next_step=next_step, due=due, amount=str(amount),
                   currency=str(decision.get("currency", "")))


def status(store: RecordStore, request_id: str, lang: str = "en") -> Message:
    """The customer-safe status of a recorded case."""
    case = store.case(request_id)
    return message(case.decision, lang, case=case)


def communicate(store: RecordStore, request_id: str, *, channel: str, template: str,
                language: str, text: str, actor: str) -> Case:
    """Record on the case that ``text`` was given to the customer."""
    details = {"communicated": {"channel": channel, "template": template,
                                "language": language, "text": text}}
    return store.note(request_id, actor=actor, details=details)


# --- receipts ---------------------------------------------------------------------------------


def receipt(store: RecordStore, request_id: str, lang: str = "en") -> dict[str, Any]:
    """The receipt of a processed (or refunded) refund: amount, method, date, reference."""
    lang = _language(lang)
    case = store.case(request_id)
    if case.status not in RECEIPT_STATUSES:
        raise CustomerError(f"request `{case.request_id}` is {case.status}; a receipt is given "
                            "once the refund is processed")
    paid = [e for e in case.events if e.type in RECEIPT_STATUSES][-1]
    when = dt.datetime.fromisoformat(paid.at.replace("Z", "+00:00"))
    day = when.astimezone(_consumer_zone(case.request)).date()
    msg = message(case.decision, lang, case=case)
    method, reference = _payment(case, lang)
    return {"request_id": case.request_id, "reference": reference, "amount": msg.amount,
            "currency": msg.currency, "method": method, "date": day.isoformat(),
            "status": msg.title, "language": lang}


def receipt_text(data: Mapping[str, Any]) -> str:
    labels = catalogue()["receipt"][data["language"]]
    lang = data["language"]
    day = date_text(dt.date.fromisoformat(data["date"]), lang)
    return (f"{labels['title']}: {labels['request']} {data['request_id']}; {labels['amount']} "
            f"{money_text(data['amount'], lang)} {data['currency']}; {labels['method']} "
            f"{data['method']}; {labels['date']} {day}; {labels['reference']} {data['reference']}")


def receipt_html(data: Mapping[str, Any]) -> str:
    """A printable, self-contained HTML receipt (no scripts, no external resources)."""
    labels = catalogue()["receipt"][data["language"]]
    lang = data["language"]
    e = html.escape
    rows = [(labels["request"], data["request_id"]),
            (labels["amount"], f"{money_text(data['amount'], lang)} {data['currency']}"),
            (labels["method"], data["method"]),
            (labels["date"], date_text(dt.date.fromisoformat(data["date"]), lang)),
            (labels["reference"], data["reference"])]
    body = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    return f"""<!DOCTYPE html>
<html lang="{e(lang)}"><head><meta charset="utf-8"><title>{e(labels['title'])}</title>
<style>
body {{ font-family: sans-serif; max-width: 36em; margin: 2em auto; color: #111; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .4em .6em; border-bottom: 1px solid #ccc; }}
@media print {{ body {{ margin: 0; }} }}
</style></head>
<body><h1>{e(labels['title'])}</h1>
<table>
{body}
</table></body></html>
"""


# --- the CLI ----------------------------------------------------------------------------------


