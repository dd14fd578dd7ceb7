"""ISO 20022 payment returns and investigations -> canonical requests; pacs.004 out.

Read: ``camt.029`` ResolutionOfInvestigation is the *request* (``CNCL`` = return the whole
original, ``PECR`` with "N%" in its text = return that share); a received ``pacs.004``
PaymentReturn is an *executed* refund (money already returned: history, never returned
again); ``pacs.008`` credit transfers (the originals the others are checked against) and a
``RJCR`` resolution (nothing to return) are *context*. A camt.029 and the pacs.004 that answers
it are one case: both are keyed by the original's ``OrgnlMsgId`` and ``OrgnlEndToEndId``
(``case_id``), so the return becomes a ``prior_refunds`` entry of the request with that very
``request_id`` and the engine refuses to return the money twice.

The customer is the party the money is returned to: the return chain's creditor
(``RtrChain/Cdtr``, who was the original's debtor), or the original pacs.008's debtor.
``OrgnlUETR`` is kept in ``facts.iso_original_uetr`` and written back by the sink.

The originals come from the input directory itself or from ``--option originals=PATH``. A
return is matched to its original by ``OrgnlEndToEndId`` (and ``OrgnlMsgId`` when that
agrees); the UETR is not used because the Fedwire samples reuse one UETR for every scenario.
When the return differs from the original amount, ``facts.amount_matches_original`` is
``false`` and ``facts.return_ratio`` says by how much, so a rule can stop an auto-approval (the
Fedwire Scenario 1 return of 151,000.74 against 1,510,000.74 has lost a digit).

XML is parsed with ``defusedxml``: no entity expansion, no external resources.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import attrs
import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from refundry.core.models import Decision, RefundRequest
from refundry.core.money import minor_units
from refundry.plugins import (
    ExecutedRefund,
    SourceError,
    SourceRecord,
    already_executed,
    money_text,
    record_error,
    request_defaults,
)

SOURCE = "iso20022"
OPTIONS = {
    "client_id": "required: the institution's client id in refundry",
    "jurisdiction": "ISO 3166 code; default `US` (Fedwire)",
    "timezone": "optional IANA zone",
    "originals": "a pacs.008 file or directory to check returns against (default: the input "
                 "directory)",
    "reason": "canonical reason for return codes without a mapping (default `other`)",
}
# ExternalReturnReason1Code -> canonical reason.
RETURN_REASONS = {"DUPL": "duplicate_charge", "FRAD": "unauthorized", "MD06": "other",
                  "AC04": "other", "FOCR": "other", "CUST": "changed_mind"}
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


@attrs.frozen
class Original:
    msg_id: str
    end_to_end: str
    instr_id: str
    amount: Decimal
    currency: str
    created: str
    file: str
    debtor: str = ""
    uetr: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(el: Element, path: str) -> Element | None:
    """``a/b/c`` by local names, whatever the message's namespace version."""
    node: Element | None = el
    for part in path.split("/"):
        if node is None:
            return None
        node = next((c for c in node if _local(c.tag) == part), None)
    return node


def _text(el: Element, path: str) -> str:
    node = _find(el, path)
    return (node.text or "").strip() if node is not None else ""


def _amount(el: Element, path: str) -> tuple[Decimal, str]:
    node = _find(el, path)
    if node is None or not (node.text or "").strip():
        raise ValueError(f"`{path}` is missing")
    currency = node.get("Ccy", "")
    return Decimal(money_text(node.text.strip(), currency)), currency.upper()  # type: ignore[union-attr]


def parse(file: Path) -> tuple[str, Element]:
    """The message kind (``pacs.004``, ``camt.029``, ...) and its body element."""
    try:
        root = DET.parse(str(file)).getroot()
    except (DET.ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not well-formed or unsafe xml: {str(exc).lower()}") from None
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    kind = ".".join(ns.rsplit(":", 1)[-1].split(".")[:2]) if ns else _local(root.tag)
    body = next(iter(root), None)
    if body is None:
        raise ValueError("empty document")
    return kind, body


def originals(path: Path) -> dict[str, list[Original]]:
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    found: dict[str, list[Original]] = {}
    for file in files:
        try:
            kind, body = parse(file)
        except (ValueError, OSError):
            continue
        if kind != "pacs.008":
            continue
        msg_id, created = _text(body, "GrpHdr/MsgId"), _text(body, "GrpHdr/CreDtTm")
        for tx in (c for c in body if _local(c.tag) == "CdtTrfTxInf"):
            try:
                amount, cur = _amount(tx, "IntrBkSttlmAmt")
            except Exception:  # noqa: BLE001 - an unusable original matches nothing
                continue
            o = Original(msg_id, _text(tx, "PmtId/EndToEndId"), _text(tx, "PmtId/InstrId"),
                         amount, cur, created, file.name,
                         _text(tx, "DbtrAcct/Id/Othr/Id") or _text(tx, "Dbtr/Nm"),
                         _text(tx, "PmtId/UETR"))
            found.setdefault(o.end_to_end, []).append(o)
    return found


def _match(index: Mapping[str, list[Original]], e2e: str, msg_id: str) -> tuple[Original | None, bool]:
    cands = index.get(e2e, [])
    exact = [o for o in cands if o.msg_id == msg_id]
    if exact:
        return exact[0], True
    return (cands[0], False) if len(cands) == 1 else (None, False)


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "finance", jurisdiction="US")
    origin = Path(options["originals"]) if options.get("originals") else (path if path.is_dir() else None)
    if origin is not None and not origin.exists():
        raise SourceError(f"`--option originals={origin}`: no such file or directory")
    index = originals(origin) if origin is not None else {}
    files = sorted(path.glob("*.xml")) if path.is_dir() else [path]
    for file in files:
        ref = file.name
        try:
            kind, body = parse(file)
        except OSError as exc:
            raise SourceError(f"cannot read `{file}`: {(exc.strerror or str(exc)).lower()}") from None
        except ValueError as exc:
            yield SourceRecord(ref, error=f"{ref}: {exc}")
            continue
        try:
            if kind == "pacs.004":
                yield from _pacs004(ref, body, base, index, options)
            elif kind == "camt.029":
                yield from _camt029(ref, body, base, index, options)
            elif kind == "pacs.008":
                yield SourceRecord(ref, context=f"pacs.008 credit transfer "
                                   f"`{_text(body, 'GrpHdr/MsgId')}`: an original payment "
                                   "(returns are checked against it)")
            else:
                yield SourceRecord(ref, error=f"{ref}: not a refund: a `{kind}` message")
        except Exception as exc:  # noqa: BLE001 - a malformed message is a dead letter
            yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _check(amount: Decimal, original: Original | None, exact: bool, facts: dict[str, Any]) -> None:
    facts["original_amount_known"] = original is not None
    if original is None:
        return
    facts["original_msg_id_matches"] = exact
    facts["original_amount"] = str(original.amount)
    facts["amount_matches_original"] = amount == original.amount
    facts["return_ratio"] = str((amount / original.amount).quantize(Decimal("0.0001")))


def case_id(original_msg_id: str, end_to_end: str) -> str:
    """The case a return belongs to: the original payment it returns money of."""
    return f"iso20022:return:{original_msg_id}:{end_to_end}"


def _pacs004(ref: str, body: Element, base: dict[str, Any], index: Mapping[str, list[Original]],
             options: Mapping[str, str]) -> Iterator[SourceRecord]:
    """A received return: the money is back already, so it is history of its case."""
    msg_id, created = _text(body, "GrpHdr/MsgId"), _text(body, "GrpHdr/CreDtTm")
    txs = [c for c in body if _local(c.tag) == "TxInf"]
    if not txs:
        yield SourceRecord(ref, error=f"{ref}: pacs.004 `{msg_id}` has no TxInf")
    for i, tx in enumerate(txs):
        tref = f"{ref}#TxInf[{i}]" if len(txs) > 1 else ref
        amount, currency = _amount(tx, "RtrdIntrBkSttlmAmt")
        e2e, org_msg = _text(tx, "OrgnlEndToEndId"), _text(tx, "OrgnlGrpInf/OrgnlMsgId")
        if not e2e or not org_msg:
            raise ValueError("`OrgnlEndToEndId` and `OrgnlGrpInf/OrgnlMsgId` name the payment "
                             "returned; one is missing")
        info = _text(tx, "RtrRsnInf/AddtlInf")
        own = info[len("refundry "):].split(" ", 1)[0] if info.startswith("refundry ") else ""
        yield SourceRecord(tref, executed=ExecutedRefund(
            refund_id=f"iso20022:pacs.004:{msg_id}:{e2e}", transaction_id=e2e,
            amount=str(amount), currency=currency, refunded_at=created or None,
            case=own or case_id(org_msg, e2e)))


def _camt029(ref: str, body: Element, base: dict[str, Any], index: Mapping[str, list[Original]],
             options: Mapping[str, str]) -> Iterator[SourceRecord]:
    status = _text(body, "Sts/Conf")
    case = _text(body, "RslvdCase/Id") or _text(body, "Assgnmt/Id")
    created = _text(body, "Assgnmt/CreDtTm")
    tx = _find(body, "CxlDtls/TxInfAndSts")
    if tx is None:
        yield SourceRecord(ref, error=f"{ref}: camt.029 `{case}` names no transaction")
        return
    info = _text(tx, "CxlStsRsnInf/AddtlInf")
    e2e, org_msg = _text(tx, "OrgnlEndToEndId"), _text(tx, "OrgnlGrpInf/OrgnlMsgId")
    if status == "RJCR":
        yield SourceRecord(ref, context=f"investigation `{case}` was rejected (RJCR), nothing "
                           f"to return: {info or 'no reason given'}")
        return
    if status not in ("CNCL", "PECR"):
        yield SourceRecord(ref, error=f"{ref}: camt.029 status `{status}` is not a resolution "
                           "that returns money")
        return
    original, exact = _match(index, e2e, org_msg)
    if original is None:
        yield SourceRecord(ref, error=f"{ref}: camt.029 `{case}` ({status}) does not state an "
                           f"amount and its original `{e2e}` is not among the originals; pass "
                           "`--option originals=...`")
        return
    share = Decimal(1)
    if status == "PECR":
        m = _PERCENT.search(info)
        if not m:
            yield SourceRecord(ref, error=f"{ref}: camt.029 `{case}` is partially executed (PECR) "
                               "but states no percentage to return")
            return
        share = Decimal(m.group(1)) / 100
    # One rounding, half-up, to the currency's minor unit: 20% of 2,234,578.88 is 446,915.78.
    amount = (original.amount * share).quantize(Decimal(1).scaleb(-minor_units(original.currency)),
                                                rounding=ROUND_HALF_UP)
    # The money goes back because of the cancellation request the camt.029 answers.
    facts: dict[str, Any] = {"iso_message": "camt.029", "iso_case_id": case,
                             "iso_reason_code": "FOCR",
                             "iso_status": status, "iso_original_msg_id": org_msg,
                             "iso_original_end_to_end_id": e2e,
                             "iso_original_instr_id": _text(tx, "OrgnlInstrId"),
                             "iso_original_msg_name": _text(tx, "OrgnlGrpInf/OrgnlMsgNmId"),
                             "iso_original_uetr": _text(tx, "OrgnlUETR") or original.uetr,
                             "return_share": str(share)}
    _check(amount, original, exact, facts)
    yield SourceRecord(ref, request={
        **base, "request_id": case_id(org_msg or original.msg_id, e2e),
        "requested_at": created, "amount": str(amount), "currency": original.currency,
        "reason": "not_as_described" if status == "PECR" else options.get("reason", "other"),
        # The money goes back to who paid it: the original's debtor.
        "customer": {"id": original.debtor or f"original-debtor:{original.msg_id}"},
        "transaction": {"id": e2e, "amount": str(original.amount)},
        "finance": {"account_type": "bank_account", "scheme": "fedwire",
                    "debited_at": _text(tx, "OrgnlGrpInf/OrgnlCreDtTm") or original.created},
        **({"note": info} if info else {}),
        "facts": {k: v for k, v in facts.items() if v not in ("", None)},
    })


# --- sink: pacs.004 -------------------------------------------------------------------------

PACS004_NS = "urn:iso:std:iso:20022:tech:xsd:pacs.004.001.10"
TO_RETURN_CODE = {"duplicate_charge": "DUPL", "unauthorized": "FRAD"}


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def pacs004(decision: Decision, request: RefundRequest, options: Mapping[str, str]) -> str:
    """A pacs.004.001.10 PaymentReturn with one ``TxInf`` returning the approved amount."""
    facts = request.facts or {}
    msg_id = "RFDY" + hashlib.sha256(request.request_id.encode()).hexdigest()[:31].upper()
    created = (decision.as_of or request.requested_at).isoformat(timespec="seconds")
    due = decision.deadline("return_due_by") or decision.deadline("refund_due_by") or \
        (decision.as_of or request.requested_at).date()
    amount = f"{decision.amount:.{minor_units(decision.currency)}f}"
    code = str(facts.get("iso_reason_code") or TO_RETURN_CODE.get(request.reason, "MD06"))
    e2e = str(facts.get("iso_original_end_to_end_id") or request.transaction.id)
    instr = facts.get("iso_original_instr_id")
    org_msg = str(facts.get("iso_original_msg_id") or request.transaction.id)
    org_name = str(facts.get("iso_original_msg_name") or "pacs.008.001.08")
    why = "; ".join(r.rule_id for r in decision.reasons)
    uetr = facts.get("iso_original_uetr")
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<Document xmlns="{PACS004_NS}">',
        "\t<PmtRtr>",
        "\t\t<GrpHdr>",
        f"\t\t\t<MsgId>{_esc(msg_id)}</MsgId>",
        f"\t\t\t<CreDtTm>{created}</CreDtTm>",
        "\t\t\t<NbOfTxs>1</NbOfTxs>",
        f"\t\t\t<SttlmInf><SttlmMtd>{_esc(options.get('settlement_method', 'CLRG'))}</SttlmMtd></SttlmInf>",
        "\t\t</GrpHdr>",
        "\t\t<TxInf>",
        f"\t\t\t<RtrId>{_esc(msg_id)}</RtrId>",
        "\t\t\t<OrgnlGrpInf>",
        f"\t\t\t\t<OrgnlMsgId>{_esc(org_msg[:35])}</OrgnlMsgId>",
        f"\t\t\t\t<OrgnlMsgNmId>{_esc(org_name)}</OrgnlMsgNmId>",
        "\t\t\t</OrgnlGrpInf>",
        *([f"\t\t\t<OrgnlInstrId>{_esc(str(instr)[:35])}</OrgnlInstrId>"] if instr else []),
        f"\t\t\t<OrgnlEndToEndId>{_esc(e2e[:35])}</OrgnlEndToEndId>",
        *([f"\t\t\t<OrgnlUETR>{_esc(str(uetr))}</OrgnlUETR>"] if uetr else []),
        f'\t\t\t<RtrdIntrBkSttlmAmt Ccy="{decision.currency}">{amount}</RtrdIntrBkSttlmAmt>',
        f"\t\t\t<IntrBkSttlmDt>{due.isoformat()}</IntrBkSttlmDt>",
        f'\t\t\t<RtrdInstdAmt Ccy="{decision.currency}">{amount}</RtrdInstdAmt>',
        "\t\t\t<ChrgBr>SLEV</ChrgBr>",
        "\t\t\t<RtrRsnInf>",
        f"\t\t\t\t<Rsn><Cd>{_esc(code[:4])}</Cd></Rsn>",
        f"\t\t\t\t<AddtlInf>{_esc(f'refundry {request.request_id} {why}'.strip()[:105])}</AddtlInf>",
        "\t\t\t</RtrRsnInf>",
        "\t\t</TxInf>",
        "\t</PmtRtr>",
        "</Document>",
    ]
    return "\n".join(lines) + "\n"


class Pacs004Writer:
    """Approved refunds as pacs.004 files, one message per refund, in the ``--out`` directory
    (``<request-id hash>.xml``). Written to a temporary name and renamed, so a kill never
    leaves half a message, and re-writing the same request replaces it with the same bytes."""

    def __init__(self, path: Path | None, options: Mapping[str, str]) -> None:
        if path is None:
            raise SourceError("sink `pacs004` writes one file per return: give `--out DIR`")
        path.mkdir(parents=True, exist_ok=True)
        self.dir, self.options = path, dict(options)

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None:
        if decision.outcome != "approve" or decision.amount <= 0 \
                or already_executed(request):
            return
        name = hashlib.sha256(request.request_id.encode()).hexdigest()[:32] + ".xml"
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(pacs004(decision, request, self.options), encoding="utf-8")
        tmp.replace(self.dir / name)

    def close(self) -> None:
        pass
