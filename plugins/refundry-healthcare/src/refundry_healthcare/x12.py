"""ASC X12 835 remittance advice -> canonical refund requests.

Becomes a request: a claim reversal (``CLP02 = 22``: the payer takes back an earlier payment)
and a provider-level adjustment with reason ``WO`` (overpayment recovery) or ``72`` (authorized
return). Every other claim and adjustment is ordinary payment; a transaction set (ST..SE) with
nothing refundable is one *context* record saying what it held (a payment, not a dead letter).

Delimiters are positional, read from the ISA segment: the element separator is the character
after ``ISA``, the component separator is ISA16, the segment terminator is the character after
ISA16 (a newline in some files, which then hold one segment per line). Text before ``ISA``
(prose in the TR3 examples) is ignored. Patient names, service lines and procedure codes are
never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from refundry.plugins import (
    SourceError,
    SourceRecord,
    day_start,
    money_text,
    record_error,
    request_defaults,
    zone_for,
)

SOURCE = "x12-835"
OPTIONS = {
    "client_id": "required: the payer's or provider's client id in refundry",
    "jurisdiction": "ISO 3166 code; default `US` (the 835 is a HIPAA transaction)",
    "timezone": "optional IANA zone the 835's dates are read in",
    "provider_type": "optional: copied to healthcare.provider_type",
}
STATUS = {"1": "processed as primary", "2": "processed as secondary", "3": "processed as tertiary",
          "4": "denied", "19": "processed as primary, forwarded", "20": "processed as secondary, "
          "forwarded", "21": "processed as tertiary, forwarded", "22": "reversal of previous "
          "payment", "23": "not our claim, forwarded", "25": "predetermination"}
REFUND_PLB = {"WO": ("overpayment recovery", "payer"), "72": ("authorized return", "provider")}
SUFFIXES = (".edi", ".x12", ".835", ".835.txt")  # what a directory is searched for
_ISA = re.compile(r"ISA([^A-Za-z0-9\s])")


@attrs.frozen
class Delimiters:
    element: str
    component: str
    segment: str


def delimiters(text: str) -> tuple[int, Delimiters]:
    """Where the ISA starts and the delimiters it declares; raises ``ValueError``."""
    m = _ISA.search(text)
    if m is None:
        raise ValueError("no ISA segment: not an X12 interchange")
    start, sep = m.start(), m.group(1)
    pos, seen = start + 3, 0
    while seen < 16:
        pos = text.find(sep, pos)
        if pos < 0:
            raise ValueError("the ISA segment is cut short")
        seen += 1
        pos += 1
    if pos >= len(text):
        raise ValueError("the ISA segment is cut short")
    component = text[pos]
    terminator = text[pos + 1] if pos + 1 < len(text) else "\n"
    return start, Delimiters(sep, component, terminator)


def segments(text: str) -> tuple[Delimiters, list[list[str]]]:
    start, d = delimiters(text)
    body = text[start:]
    raw = body.splitlines() if d.segment in "\r\n" else body.split(d.segment)
    out = [s.strip().split(d.element) for s in raw if s.strip()]
    return d, out


def _dec(value: str, what: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{what} `{value[:20]}` is not a decimal amount") from None


def _el(seg: list[str], i: int) -> str:
    return seg[i].strip() if len(seg) > i else ""


def _money(value: Decimal) -> str:
    # X12 amounts are decimal text with optional decimals ("72232", "41231.04"); USD has 2,
    # and a third decimal is an error, not something to round.
    return money_text(value, "USD")


def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    base = request_defaults(options, SOURCE, "healthcare", jurisdiction="US")
    if options.get("provider_type"):
        base["healthcare"] = {"provider_type": options["provider_type"]}
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(
        SUFFIXES)) if path.is_dir() else [path]
    for file in files:
        try:
            text = file.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise SourceError(f"cannot read `{file}`: {(exc.strerror or str(exc)).lower()}") from None
        try:
            d, segs = segments(text)
        except Exception as exc:  # noqa: BLE001 - an unreadable interchange is a dead letter
            yield SourceRecord(file.name, error=f"{file.name}: {record_error(exc)}")
            continue
        sets: list[list[list[str]]] = []
        for seg in segs:
            if seg[0] == "ST":
                sets.append([seg])
            elif sets and sets[-1][-1][0] != "SE":
                sets[-1].append(seg)
        if not sets:
            yield SourceRecord(file.name, error=f"{file.name}: no ST transaction set")
        for tset in sets:
            ref = f"{file.name}#ST{_el(tset[0], 2)}"
            if _el(tset[0], 1) != "835":
                yield SourceRecord(ref, error=f"{ref}: a `{_el(tset[0], 1)}` transaction, not an 835")
                continue
            try:
                # Built whole before yielding: a set that breaks halfway yields nothing twice.
                yield from list(_transaction_set(ref, tset, d, base))
            except Exception as exc:  # noqa: BLE001 - a malformed set is a dead letter
                yield SourceRecord(ref, error=f"{ref}: {record_error(exc)}")


def _transaction_set(ref: str, tset: list[list[str]], d: Delimiters,
                     base: dict[str, Any]) -> Iterator[SourceRecord]:
    bpr = next((s for s in tset if s[0] == "BPR"), None)
    trn = next((s for s in tset if s[0] == "TRN"), None)
    if bpr is None or trn is None:
        raise ValueError("no BPR or TRN segment")
    paid_total = _dec(_el(bpr, 2), "BPR02")
    trace = _el(trn, 2)
    production = next((_el(s, 2) for s in tset if s[0] == "DTM" and _el(s, 1) == "405"), "")
    day = production or _el(bpr, 16)
    if not day:
        raise ValueError("no production date (DTM*405) or BPR16 date")
    requested_at = day_start(day, zone_for(base))
    payee = next((s for s in tset if s[0] == "N1" and _el(s, 1) == "PE"), None)
    payee_id = (_el(payee, 4) or _el(payee, 2)) if payee else ""
    payer = next((s for s in tset if s[0] == "N1" and _el(s, 1) == "PR"), None)

    claims = [s for s in tset if s[0] == "CLP"]
    plbs = [s for s in tset if s[0] == "PLB"]
    clp_paid = sum((_dec(_el(c, 4) or "0", "CLP04") for c in claims), Decimal(0))
    plb_total = Decimal(0)
    adjustments: list[tuple[str, str, str, Decimal, int]] = []
    for seg in plbs:
        for i in range(3, len(seg) - 1, 2):
            code, _, reference = _el(seg, i).partition(d.component)
            amount = _dec(_el(seg, i + 1), f"PLB{i + 1:02d}")
            plb_total += amount
            adjustments.append((_el(seg, 1), code, reference, amount, i))
    # The 835 balances: claim payments less provider adjustments (positive PLB reduces it).
    reconciles = clp_paid - plb_total == paid_total
    common_facts = {"x12_trace": trace, "x12_payment_total": _money(paid_total),
                    "x12_totals_reconcile": reconciles, "x12_payer": _el(payer, 2) if payer else None}
    common_facts = {k: v for k, v in common_facts.items() if v is not None}
    found = 0
    corrected = {_el(c, 1) for c in claims if _el(c, 2) in ("1", "2", "3", "19", "20", "21")}
    for n, clp in enumerate(claims, 1):
        if _el(clp, 2) != "22":
            continue
        reversed_amount = abs(_dec(_el(clp, 4) or "0", "CLP04"))
        if reversed_amount == 0:
            yield SourceRecord(f"{ref}#CLP{n}", context="a claim reversal that moves no money (CLP04 0)")
            found += 1
            continue
        control = _el(clp, 7) or _el(clp, 1)
        found += 1
        yield SourceRecord(f"{ref}#CLP{n}", request={
            **base, "request_id": f"x12:{trace}:{control}:reversal",
            "requested_at": requested_at, "amount": _money(reversed_amount), "currency": "USD",
            "reason": "overpayment", "customer": {"id": payee_id or "unknown-provider"},
            "transaction": {"id": control, "amount": _money(reversed_amount)},
            "healthcare": {**base.get("healthcare", {}), "requested_by": "payer",
                           "claim_id": control, "claim_status_code": "22",
                           "recoupment_scheduled": True,
                           "corrected_claim_received": _el(clp, 1) in corrected},
            "facts": {**common_facts, "x12_claim_charge": _money(abs(_dec(_el(clp, 3) or "0", "CLP03")))},
        })
    for provider, code, reference, amount, i in adjustments:
        if code not in REFUND_PLB or amount == 0:
            continue
        what, by = REFUND_PLB[code]
        found += 1
        key = f"PLB:{provider}:{code}:{reference or trace}:{i}"
        yield SourceRecord(f"{ref}#{key}", request={
            **base, "request_id": f"x12:{trace}:{key}", "requested_at": requested_at,
            "amount": _money(abs(amount)), "currency": "USD", "reason": "overpayment",
            "customer": {"id": provider or payee_id or "unknown-provider"},
            "transaction": {"id": reference or trace, "amount": _money(abs(amount))},
            "healthcare": {**base.get("healthcare", {}), "requested_by": by,
                           **({"claim_id": reference} if reference else {})},
            "facts": {**common_facts, "x12_plb_reason": code, "x12_plb_meaning": what,
                      "x12_plb_amount": _money(amount), "original_amount_known": False},
        })
    if not found:
        statuses = sorted({_el(c, 2) for c in claims})
        held = ", ".join(f"CLP02 {s} ({STATUS.get(s, 'unknown')})" for s in statuses) or "no claims"
        plb = ", ".join(f"PLB {c} {_money(a)}" for _, c, _, a, _ in adjustments)
        # Ordinary payments: context (counted, never a dead letter).
        yield SourceRecord(ref, context=f"835 payment `{trace}` with no claim reversal (CLP02 22) "
                           f"and no PLB WO/72 adjustment; it holds {len(claims)} claim(s): {held}"
                           + (f"; {plb}" if plb else ""))
