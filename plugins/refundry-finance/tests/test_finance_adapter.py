"""refundry-finance on the real Stripe dispute and ISO 20022 payloads (copied into
tests/payloads/), a card-dispute CSV, and the pacs.004 sink's element structure."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.core.models import Decision
from refundry.plugins import ExecutedRefund, Plugins, SourceError

# The adapter is its own distribution: its tests need it installed (as .ci/run does).
pytest.importorskip("refundry_finance", reason="install it: pip install -e plugins/refundry-finance")
DET = pytest.importorskip("defusedxml.ElementTree")  # a dependency of refundry-finance

HERE = Path(__file__).resolve().parent
ISO = HERE / "payloads" / "iso20022"
STRIPE = HERE / "payloads" / "stripe"
CSV = HERE / "synthetic" / "card_disputes.csv"
RULESETS = HERE / "rulesets"
NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pacs.004.001.10"}


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins()


def read(plugins: Plugins, source: str, path: Path, validate: bool = True,
         **options: str) -> dict[str, Any]:
    """ref -> request, executed refund, context or error; every request validated by
    ``refundry.parse_request``."""
    out: dict[str, Any] = {}
    for rec in plugins.source(source).read(path, {"client_id": "bank-1", **options}):
        if rec.request is not None:
            if validate:
                refundry.parse_request(rec.request)
            out[rec.ref] = rec.request
        else:
            out[rec.ref] = rec.executed or rec.context or rec.error
    return out


# --- ISO 20022 ------------------------------------------------------------------------------

# Received returns (pacs.004): the money is back already, so each is history of its case.
# file -> (pacs.004 MsgId, end-to-end id, amount, refunded_at, original MsgId of the case)
ISO_EXECUTED: dict[str, tuple[str, str, str, str, str]] = {
    # Scenario 1: 151,000.74 returned against an original of 1,510,000.74 (a digit lost).
    "fedwire_PaymentReturn_Scenario1_Step4_pacs.004.xml": (
        "20250310ISOTEST1000912", "Scenario01EtoEId001", "151000.74", "2028-03-10T09:40:00-04:00",
        "20250310B1QDRCQR000902"),
    "fedwire_FedwireFundsAcknowledgement_Scenario2_Step4_pacs.004.xml": (
        "20250310B1QDRCQR000724", "Scenario01EtoEId001", "151235.88", "2025-03-10T13:03:21-04:00",
        "20250310B1QDRCQR000721"),
    "fedwire_Investigations_Scenario2_Step5_pacs.004.xml": (
        "20250310QMGFT015000912", "Scenario01EtoEId001", "510000.74", "2028-03-10T09:40:00-04:00",
        "20250310B1QDRCQR000902"),
    # Scenario 3: 20% of 2,234,578.88 = 446,915.776, returned as 446,915.78.
    "fedwire_PaymentReturn_Scenario3_Step4_pacs.004.xml": (
        "20250310B1QDRCQR000433", "Scenario03EtoEId001", "446915.78", "2028-03-10T09:40:00-04:00",
        "20250310B1QDRCQR000400"),
    "fedwire_PaymentReturn_Scenario4_Step2_pacs.004.xml": (
        "20250310B1QDRCQR000442", "Scenario04EtoEId001", "2234578.88", "2028-03-10T09:40:00-04:00",
        "20250310B1QDRCQR000400"),
    "fedwire_PaymentReturn_Scenario5_Step3_pacs.004.xml": (
        "20250310B1QDRCQR000453", "Scenario05EtoEId001", "2234578.88", "2028-03-10T09:40:00-04:00",
        "20250310B1QDRCQR000450"),
}
UETR = "8a562c67-ca16-48ba-b074-65581be6f011"
# camt.029 resolutions that return money: requests, keyed by the original payment.
# file -> (end-to-end id, amount, requested_at, reason, customer (who gets the money), facts)
ISO_REQUESTS: dict[str, tuple[str, str, str, str, str, dict[str, Any]]] = {
    "fedwire_Paymentreturn_Scenario1_Step3_camt.029.xml": (
        "Scenario01EtoEId001", "1510000.74", "2025-03-10T09:35:00-04:00", "other", "5647772655",
        {"iso_status": "CNCL", "amount_matches_original": True, "iso_original_uetr": UETR,
         "iso_case_id": "20250310011104238Sc01Step1MsgIdDUPL", "iso_reason_code": "FOCR"}),
    "fedwire_Paymentreturn_Scenario3_Step3_camt.029.xml": (
        "Scenario03EtoEId001", "446915.78", "2025-03-10T09:35:00-04:00", "not_as_described",
        "0031234567",
        {"iso_status": "PECR", "return_share": "0.2", "iso_original_uetr": UETR,
         "return_ratio": "0.2000", "original_msg_id_matches": True}),
}
ISO_CONTEXT = {
    "fedwire_PaymentReturn_Scenario1_Step1_pacs.008.xml": "pacs.008 credit transfer `20250310B1QDRCQR000400`: an original payment (returns are checked against it)",
    "fedwire_PaymentReturn_Scenario3_Step1_pacs.008.xml": "pacs.008 credit transfer `20250310B1QDRCQR000400`: an original payment (returns are checked against it)",
    "fedwire_Paymentreturn_Scenario2_Step3_camt.029.xml": "investigation `20250310011104238Sc02Step1MsgIdSVNR` was rejected (RJCR), nothing to return: Corporation B delivered goods and services are in-line with client’s order.",
}


def test_every_iso_payload_is_covered() -> None:
    assert {p.name for p in ISO.glob("*.xml")} == set(ISO_REQUESTS) | set(ISO_CONTEXT) | set(ISO_EXECUTED)


def test_iso20022_directory(plugins: Plugins) -> None:
    got = read(plugins, "iso20022", ISO)
    assert set(got) == set(ISO_REQUESTS) | set(ISO_CONTEXT) | set(ISO_EXECUTED)
    for name, what in ISO_CONTEXT.items():
        assert got[name] == what
    for name, (msg, e2e, amount, at, original) in ISO_EXECUTED.items():
        assert got[name] == ExecutedRefund(
            refund_id=f"iso20022:pacs.004:{msg}:{e2e}", transaction_id=e2e, amount=amount,
            currency="USD", refunded_at=at, case=f"iso20022:return:{original}:{e2e}"), name
    for name, (e2e, amount, at, reason, customer, facts) in ISO_REQUESTS.items():
        req = got[name]
        assert req["request_id"] == f"iso20022:return:20250310B1QDRCQR000400:{e2e}"
        assert (req["amount"], req["currency"], req["requested_at"]) == (amount, "USD", at)
        assert req["reason"] == reason
        assert req["customer"] == {"id": customer}
        assert req["transaction"]["id"] == e2e
        assert (req["industry"], req["jurisdiction"]) == ("finance", "US")
        assert facts.items() <= req["facts"].items(), name


def test_a_camt029_and_the_pacs004_answering_it_are_one_case(plugins: Plugins) -> None:
    got = read(plugins, "iso20022", ISO)
    request = got["fedwire_Paymentreturn_Scenario3_Step3_camt.029.xml"]
    executed = got["fedwire_PaymentReturn_Scenario3_Step4_pacs.004.xml"]
    assert executed.case == request["request_id"]
    assert executed.transaction_id == request["transaction"]["id"]


def test_a_single_camt029_without_originals_is_a_dead_letter(plugins: Plugins) -> None:
    name = "fedwire_Paymentreturn_Scenario1_Step3_camt.029.xml"
    got = read(plugins, "iso20022", ISO / name)
    assert got[name] == (f"{name}: camt.029 `20250310011104238Sc01Step1MsgIdDUPL` (CNCL) does not "
                         "state an amount and its original `Scenario01EtoEId001` is not among the "
                         "originals; pass `--option originals=...`")
    with_originals = read(plugins, "iso20022", ISO / name, originals=str(ISO))
    assert with_originals[name]["amount"] == "1510000.74"


def test_unsafe_xml_is_refused(plugins: Plugins, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
                    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><Document>&b;</Document>')
    got = read(plugins, "iso20022", bomb)
    assert got["bomb.xml"].startswith("bomb.xml: not well-formed or unsafe xml: ")


# --- Stripe disputes ------------------------------------------------------------------------


def test_every_stripe_dispute_payload_is_covered(plugins: Plugins) -> None:
    names = {p.name for p in STRIPE.glob("*.json")}
    assert names == {"djstripe_charge_ch_fakefakefakefakefake0001.json", "fixtures3_charge.json",
                     "djstripe_dispute_dp_fakefakefakefake01.json",
                     "djstripe_dispute_dp_fakefakefakefake02.json",
                     "djstripe_dispute_dp_funds_reinstated_full.json", "fixtures3_dispute.json",
                     "fixtures3_issuing_dispute.json"}


def test_stripe_disputes(plugins: Plugins) -> None:
    got = read(plugins, "stripe-dispute", STRIPE, jurisdiction="US")
    for charge in ("djstripe_charge_ch_fakefakefakefakefake0001.json", "fixtures3_charge.json"):
        assert got[charge].startswith("charge `") and got[charge].endswith(
            "`: read for the amount and card of its disputes")
    for name in ("fixtures3_dispute.json", "fixtures3_issuing_dispute.json"):
        assert got[name] == (f"{name}: `created` 1234567890 is stripe's fixture placeholder; the "
                             "request time is unknown")
    first = got["djstripe_dispute_dp_fakefakefakefake01.json"]
    assert first["request_id"] == "stripe:dp_1JAyTwJSZQVUcJYgPqasUEn1"
    assert (first["amount"], first["currency"]) == ("10.00", "USD")  # 1000 minor units of "usd"
    assert first["requested_at"] == "2021-07-08T14:45:40+00:00"
    assert first["reason"] == "unauthorized"  # fraudulent
    # its charge is in the same input: the original amount and card come from it
    assert first["transaction"] == {"id": "ch_fakefakefakefakefake0001", "amount": "20.00",
                                    "purchased_at": "2019-05-16T08:26:17+00:00",
                                    "payment_method": {"type": "card", "last4": "4242"}}
    assert first["finance"] == {"scheme": "card_network", "account_type": "credit_card",
                                "notice_received_at": "2021-07-08T14:45:40+00:00", "fraud_reported": True}
    # withdrawal -10.00 and a 15.00 fee: net -25.00
    assert (first["facts"]["balance_net"], first["facts"]["dispute_fees"]) == ("-25.00", "15.00")
    assert first["facts"]["evidence_due_by"] == "2021-07-17T23:59:59+00:00"
    second = got["djstripe_dispute_dp_fakefakefakefake02.json"]
    assert second["transaction"] == {"id": "ch_1JHRCWJSZQVUcJYgOCavbxio", "amount": "10.00"}
    assert second["facts"]["original_amount_known"] is False
    reinstated = got["djstripe_dispute_dp_funds_reinstated_full.json"]
    assert reinstated["facts"]["funds_reinstated"] is True and reinstated["facts"]["balance_net"] == "0.00"
    assert reinstated["facts"]["stripe_status"] == "under_review"


def test_stripe_fixture_disputes_with_placeholder_times(plugins: Plugins) -> None:
    got = read(plugins, "stripe-dispute", STRIPE, jurisdiction="US", allow_placeholder_time="true")
    d = got["fixtures3_dispute.json"]
    # The fixture disputes 10.00 on a 1.00 charge: flagged for the rules, not clipped.
    assert (d["amount"], d["transaction"]["amount"]) == ("10.00", "1.00")
    assert d["facts"]["amount_exceeds_transaction"] is True
    assert d["facts"]["network_reason_code"] == "10.4" and d["facts"]["case_type"] == "inquiry"
    assert d["facts"]["evidence_due_by"] == "2024-08-14T23:59:59+00:00"
    assert d["finance"]["card_network"] == "visa"
    issuing = got["fixtures3_issuing_dispute.json"]
    assert issuing["request_id"] == "stripe:idp_1Pgc77B7WZ01zgkWutW1sr3D"
    assert (issuing["amount"], issuing["reason"]) == ("1.00", "unauthorized")
    assert issuing["transaction"]["id"] == "ipi_1Pgc77B7WZ01zgkWUr0uYdLL"


# --- CSV ------------------------------------------------------------------------------------


def test_card_dispute_csv(plugins: Plugins) -> None:
    # Row 7 maps but does not validate (a date without a time): the runner dead-letters it.
    got = read(plugins, "card-dispute-csv", CSV, validate=False, jurisdiction="US")
    for ref in ("card_disputes.csv:2", "card_disputes.csv:3"):
        refundry.parse_request(got[ref])
    ok = got["card_disputes.csv:2"]
    assert ok["request_id"] == "csv:D-1001" and ok["reason"] == "unauthorized"
    assert (ok["amount"], ok["currency"]) == ("49.99", "USD")  # "usd" upper-cased
    assert ok["transaction"]["payment_method"] == {"type": "card", "last4": "4242"}
    assert ok["finance"]["statement_sent_at"] == "2024-04-30T00:00:00-04:00"
    neg = got["card_disputes.csv:3"]
    assert (neg["amount"], neg["transaction"]["amount"]) == ("120.50", "120.50")  # "-120.5"
    assert got["card_disputes.csv:4"] == "card_disputes.csv:4: `12.345` has more decimals than USD allows"
    assert got["card_disputes.csv:5"] == "card_disputes.csv:5: column `reason`: `because` is not a known reason"
    assert got["card_disputes.csv:6"] == "card_disputes.csv:6: column `last4` must be exactly four digits"
    assert "4111" not in json.dumps(got)


def test_card_dispute_csv_header_is_checked(plugins: Plugins, tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("dispute_id,amount\n1,2\n")
    with pytest.raises(SourceError, match=r"the header lacks column\(s\) `disputed_at`, `currency`"):
        read(plugins, "card-dispute-csv", f, jurisdiction="US")


def test_csv_row_with_a_date_only_time_is_a_dead_letter_in_a_run(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "card-dispute-csv", "--input",
           str(CSV), "--out", str(tmp_path / "d.jsonl"), "--rulesets", str(RULESETS),
           "--option", "client_id=bank-1", "--option", "jurisdiction=US"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    dead = {json.loads(x)["ref"]: json.loads(x) for x in
            (tmp_path / "d.jsonl.dead-letter.jsonl").read_text().splitlines()}
    assert set(dead) == {"card_disputes.csv:4", "card_disputes.csv:5", "card_disputes.csv:6",
                         "card_disputes.csv:7"}
    assert dead["card_disputes.csv:7"]["reason"].startswith(
        "invalid request: card_disputes.csv:7: field `requested_at`: `2024-05-05` has no UTC offset")
    assert [json.loads(x)["request_id"] for x in (tmp_path / "d.jsonl").read_text().splitlines()] == [
        "csv:D-1001", "csv:D-1002"]


# --- the pacs.004 sink ----------------------------------------------------------------------


def test_pacs004_sink_structure_and_amounts(plugins: Plugins, tmp_path: Path) -> None:
    got = read(plugins, "iso20022", ISO)
    engine = refundry.Engine.from_path(RULESETS)
    out = tmp_path / "returns"
    writer = plugins.sink("pacs004").open(out, {})
    req = refundry.parse_request(got["fedwire_Paymentreturn_Scenario3_Step3_camt.029.xml"])
    decision = engine.evaluate(req)
    assert decision.outcome == "approve"
    writer.write(decision, req, "r")
    writer.write(decision, req, "r")  # resumed: the same file, once
    writer.write(Decision(outcome="deny", amount=Decimal("0"), currency="USD", request_id="d",
                          as_of=None), req, "r")
    jpy = refundry.parse_request({**got["fedwire_Paymentreturn_Scenario1_Step3_camt.029.xml"],
                                  "request_id": "jpy-1", "currency": "JPY", "amount": "1500",
                                  "transaction": {"id": "jpy-tx", "amount": "1500"}})
    writer.write(Decision(outcome="approve", amount=Decimal("1500"), currency="JPY",
                          request_id="jpy-1", as_of=jpy.requested_at), jpy, "r2")
    writer.close()
    files = sorted(out.glob("*.xml"))
    assert len(files) == 2 and not list(out.glob("*.tmp"))
    docs = [DET.parse(str(f)).getroot() for f in files]
    by_amount = {d.find("p:PmtRtr/p:TxInf/p:RtrdIntrBkSttlmAmt", NS).text: d for d in docs}
    assert set(by_amount) == {"446915.78", "1500"}  # JPY has no minor unit
    doc = by_amount["446915.78"]
    assert doc.tag == "{urn:iso:std:iso:20022:tech:xsd:pacs.004.001.10}Document"
    hdr = doc.find("p:PmtRtr/p:GrpHdr", NS)
    assert [c.tag.split("}")[1] for c in hdr] == ["MsgId", "CreDtTm", "NbOfTxs", "SttlmInf"]
    assert len(hdr.find("p:MsgId", NS).text) <= 35
    assert hdr.find("p:NbOfTxs", NS).text == "1"
    assert hdr.find("p:CreDtTm", NS).text == "2025-03-10T09:35:00-04:00"
    assert hdr.find("p:SttlmInf/p:SttlmMtd", NS).text == "CLRG"
    (tx,) = doc.findall("p:PmtRtr/p:TxInf", NS)
    assert [c.tag.split("}")[1] for c in tx] == [
        "RtrId", "OrgnlGrpInf", "OrgnlInstrId", "OrgnlEndToEndId", "OrgnlUETR",
        "RtrdIntrBkSttlmAmt", "IntrBkSttlmDt", "RtrdInstdAmt", "ChrgBr", "RtrRsnInf"]
    assert tx.find("p:OrgnlUETR", NS).text == UETR  # kept from the camt.029
    assert tx.find("p:RtrRsnInf/p:AddtlInf", NS).text.startswith(
        "refundry iso20022:return:20250310B1QDRCQR000400:Scenario03EtoEId001")
    assert tx.find("p:OrgnlGrpInf/p:OrgnlMsgId", NS).text == "20250310B1QDRCQR000400"
    assert tx.find("p:OrgnlGrpInf/p:OrgnlMsgNmId", NS).text == "pacs.008.001.08"
    assert tx.find("p:OrgnlEndToEndId", NS).text == "Scenario03EtoEId001"
    assert tx.find("p:OrgnlInstrId", NS).text == "Scenario03InstrId001"
    amt = tx.find("p:RtrdIntrBkSttlmAmt", NS)
    assert (amt.get("Ccy"), amt.text) == ("USD", "446915.78")
    assert tx.find("p:RtrdInstdAmt", NS).text == "446915.78"
    assert tx.find("p:IntrBkSttlmDt", NS).text == "2025-03-24"  # refund_due_by: 14 days
    assert tx.find("p:ChrgBr", NS).text == "SLEV"
    assert tx.find("p:RtrRsnInf/p:Rsn/p:Cd", NS).text == "FOCR"


def test_run_iso20022_to_pacs004_through_the_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "iso20022", "--input", str(ISO),
           "--sink", "pacs004", "--out", str(tmp_path / "returns"), "--rulesets", str(RULESETS),
           "--option", "client_id=bank-1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    amounts = sorted(Decimal(DET.parse(str(f)).getroot().find("p:PmtRtr/p:TxInf/p:RtrdIntrBkSttlmAmt", NS).text)
                     for f in (tmp_path / "returns").glob("*.xml"))
    # No received pacs.004 is returned again. Scenario 3's camt.029 was answered by its pacs.004
    # (446,915.78 back already): nothing is written for it. Scenario 1's original (1,510,000.74)
    # has three returns in the samples (they reuse its end-to-end id): only the rest is left.
    assert amounts == [Decimal("1510000.74") - Decimal("151000.74") - Decimal("151235.88")
                       - Decimal("510000.74")]
    assert "read: request 2" in done.stderr and "read: executed 6" in done.stderr
    assert "read: context 3" in done.stderr and "dead letters 0" in done.stderr


# --- malformed payloads never break a batch -------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_iso_messages_become_dead_letters(plugins: Plugins, tmp_path: Path,
                                                    data: st.DataObject) -> None:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for f in sorted(ISO.glob("*.xml")):
        text = f.read_text()
        if data.draw(st.booleans()):
            # replace the text of a random element: amounts, dates, codes, ids
            values = [m.span(1) for m in __import__("re").finditer(r">([^<>]+)<", text)]
            a, b = data.draw(st.sampled_from(values))
            text = text[:a] + data.draw(st.text(alphabet="0123456789.-%ABCDXYZ ", max_size=12)) + text[b:]
        (folder / f.name).write_text(text)
    for rec in plugins.source("iso20022").read(folder, {"client_id": "bank-1"}):
        assert rec.kind in ("request", "executed", "context", "broken")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_disputes_and_csv_rows_become_dead_letters(plugins: Plugins, tmp_path: Path,
                                                             data: st.DataObject) -> None:
    doc = json.loads(data.draw(st.sampled_from(sorted(STRIPE.glob("*.json")))).read_text())
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(st.one_of(st.none(), st.integers(-10**20, 10**20), st.text(max_size=8),
                                   st.lists(st.integers(), max_size=2)))
    f = tmp_path / "d.json"
    f.write_text(json.dumps(doc))
    for rec in plugins.source("stripe-dispute").read(f, {"client_id": "m", "jurisdiction": "US",
                                                         "allow_placeholder_time": "true"}):
        assert rec.kind in ("request", "executed", "context", "broken")
    rows = CSV.read_text().splitlines()
    row = data.draw(st.integers(1, len(rows) - 1))
    cells = rows[row].split(",")
    cells[data.draw(st.integers(0, len(cells) - 1))] = data.draw(st.text(alphabet="0123456789.-ab:T+", max_size=10))
    c = tmp_path / "c.csv"
    c.write_text("\n".join([*rows[:row], ",".join(cells), *rows[row + 1:]]) + "\n")
    for rec in plugins.source("card-dispute-csv").read(c, {"client_id": "m", "jurisdiction": "US"}):
        assert rec.kind in ("request", "executed", "context", "broken")


def test_a_later_state_of_a_dispute_updates_its_case(tmp_path: Path) -> None:
    """dp_1JAy... is exported three times: twice `needs_response` with the funds withdrawn (a
    duplicate), then `under_review` with the funds reinstated (an update of the same case)."""
    from refundry import open_store

    db = tmp_path / "records.db"
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "stripe-dispute", "--input",
           str(STRIPE), "--out", str(tmp_path / "d.jsonl"), "--rulesets", str(RULESETS),
           "--option", "client_id=bank-1", "--option", "jurisdiction=US", "--db", str(db),
           "--by", "batch-bot"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "duplicates 1" in done.stderr and "updated (later state) 1" in done.stderr
    assert "read: request 3" in done.stderr and "read: context 2" in done.stderr
    assert "read: broken 2" in done.stderr  # the two fixtures with a placeholder time
    with open_store(db, create=False) as store:
        case = store.case("stripe:dp_1JAyTwJSZQVUcJYgPqasUEn1")
        assert [e.type for e in case.events] == ["evaluated", "note"]
        assert "`under_review:2`" in case.events[-1].details["text"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "updated (later state) 0" in again.stderr and "skipped (done before) 5" in again.stderr
    with open_store(db, create=False) as store:
        assert len(store.case("stripe:dp_1JAyTwJSZQVUcJYgPqasUEn1").events) == 2


# --- the contract kit a third-party adapter runs, run on this one ---------------------------

import refundry_finance  # noqa: E402

from refundry.plugins.testing import contract_tests  # noqa: E402

TestIsoContract = contract_tests(refundry_finance, name="finance", source="iso20022", input=ISO,
                                 options={"client_id": "bank-1"}, sink="pacs004")
TestDisputeContract = contract_tests(refundry_finance, name="finance", source="stripe-dispute",
                                     input=STRIPE, options={"client_id": "bank-1",
                                                            "jurisdiction": "US"})


def test_pacs004_round_trip_returns_nothing_twice(tmp_path: Path) -> None:
    """payloads -> run -> pacs.004 files -> read back beside the payloads -> no new return."""
    import shutil

    inbox = tmp_path / "inbox"
    shutil.copytree(ISO, inbox, ignore=shutil.ignore_patterns("SOURCE.txt"))
    base = [sys.executable, "-m", "refundry.cli", "run", "--source", "iso20022", "--input",
            str(inbox), "--sink", "pacs004", "--rulesets", str(RULESETS), "--option",
            "client_id=bank-1"]
    first = subprocess.run([*base, "--out", str(tmp_path / "returns")], capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    written = sorted((tmp_path / "returns").glob("*.xml"))
    assert len(written) == 1  # Scenario 1's remainder (see the CLI test above)
    for f in written:
        shutil.copy(f, inbox / f"zz-sent-{f.name}")
    again = subprocess.run([*base, "--out", str(tmp_path / "again")], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "read: executed 7" in again.stderr  # the six received and the one refundry sent
    assert list((tmp_path / "again").glob("*.xml")) == []
