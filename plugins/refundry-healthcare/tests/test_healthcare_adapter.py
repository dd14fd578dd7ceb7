"""refundry-healthcare on the real FHIR R4 and X12 835 payloads (copied into tests/payloads/).

Each file either becomes canonical requests that ``refundry.parse_request`` accepts, with amount,
currency, dates and identifiers asserted, or a dead letter whose reason is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.core.models import Decision
from refundry.plugins import Plugins

# The adapter is its own distribution: its tests need it installed (as .ci/run does).
pytest.importorskip("refundry_healthcare", reason="install it: pip install -e plugins/refundry-healthcare")

HERE = Path(__file__).resolve().parent
FHIR = HERE / "payloads" / "fhir_r4"
X12 = HERE / "payloads" / "x12_835"
SYNTH = HERE / "synthetic" / "reversal_and_plb.edi"
RULESETS = HERE / "rulesets"
OPTS = {"client_id": "payer-1", "jurisdiction": "US"}


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins()


def read(plugins: Plugins, source: str, path: Path, **options: str) -> list[Any]:
    recs = list(plugins.source(source).read(path, {**OPTS, **options}))
    for rec in recs:
        if rec.request is not None:
            refundry.parse_request(rec.request)  # every mapped request is valid
    return recs


# --- FHIR R4 --------------------------------------------------------------------------------

FHIR_DEAD = {
    "account-example.json": "Account/example: an R4 Account states no balance or amount; there is nothing to refund in it",
    "account-example-with-guarantor.json": "Account/ewg: an R4 Account states no balance or amount; there is nothing to refund in it",
    "claimresponse-example-2.json": "ClaimResponse/R3501: outcome `error`: the claim was not adjudicated, nothing was paid",
    "claimresponse-example-additem.json": "ClaimResponse/R3503: paid 100.47 USD against a benefit of 1054.47 with no adjustment: no overpayment",
    "chargeitem-example.json": "ChargeItem/example: the `ChargeItem` resource is not a refund, overpayment or recoupment",
    "claim-example.json": "Claim/100150: the `Claim` resource is not a refund, overpayment or recoupment",
    "claim-example-institutional.json": "Claim/960150: the `Claim` resource is not a refund, overpayment or recoupment",
    "claim-example-pharmacy.json": "Claim/760150: the `Claim` resource is not a refund, overpayment or recoupment",
    "claim-example-professional.json": "Claim/860150: the `Claim` resource is not a refund, overpayment or recoupment",
    "coverage-example-selfpay.json": "Coverage/SP1234: the `Coverage` resource is not a refund, overpayment or recoupment",
    "explanationofbenefit-example.json": "ExplanationOfBenefit/EB3500: the `ExplanationOfBenefit` resource is not a refund, overpayment or recoupment",
    "explanationofbenefit-example-2.json": "ExplanationOfBenefit/EB3501: the `ExplanationOfBenefit` resource is not a refund, overpayment or recoupment",
    "invoice-example.json": "Invoice/example: the `Invoice` resource is not a refund, overpayment or recoupment",
    "paymentnotice-example.json": "PaymentNotice/77654: the `PaymentNotice` resource is not a refund, overpayment or recoupment",
}
FHIR_REQUESTS = {"paymentreconciliation-example.json", "claimresponse-example.json"}


def test_every_fhir_payload_is_covered() -> None:
    assert {p.name for p in FHIR.glob("*.json")} == set(FHIR_DEAD) | FHIR_REQUESTS


@pytest.mark.parametrize("name", sorted(FHIR_DEAD))
def test_fhir_resources_that_are_not_refunds_are_context(plugins: Plugins, name: str) -> None:
    (rec,) = read(plugins, "fhir", FHIR / name)
    assert rec.kind == "context" and rec.context == FHIR_DEAD[name]


def test_payment_reconciliation_advance_line(plugins: Plugins) -> None:
    (rec,) = read(plugins, "fhir", FHIR / "paymentreconciliation-example.json")
    req = rec.request
    assert rec.ref == "paymentreconciliation-example.json#10-12345-003"
    assert req["request_id"] == "fhir:PaymentReconciliation/ER2500#10-12345-003"
    # The -1500.00 advance line; the 3500 and 4000 payment lines are not refunds.
    assert (req["amount"], req["currency"], req["reason"]) == ("1500.00", "USD", "overpayment")
    assert req["transaction"] == {"id": "10-12345", "amount": "7000.00"}
    # FHIR dates are days: the start of that day in the jurisdiction's zone (US: New York).
    assert req["requested_at"] == "2014-08-16T00:00:00-04:00"
    assert req["healthcare"] == {"requested_by": "payer",
                                 "payment_received_at": "2014-08-01T00:00:00-04:00",
                                 "overpayment_identified_at": "2014-08-16T00:00:00-04:00"}
    assert req["customer"] == {"id": "Organization/1"}
    # 3500 + 4000 - 1500 = 6000, not the 7000 paid: flagged, not hidden.
    assert req["facts"]["details_total"] == "6000.00"
    assert req["facts"]["totals_reconcile"] is False
    assert req["facts"]["fhir_detail_type"] == "advance"


def test_claim_response_paid_above_benefit(plugins: Plugins) -> None:
    (rec,) = read(plugins, "fhir", FHIR / "claimresponse-example.json")
    req = rec.request
    assert req["request_id"] == "fhir:ClaimResponse/R3500"
    # payment 100.47 against a benefit total of 90.47, no adjustment element: 10.00 overpaid.
    assert (req["amount"], req["currency"]) == ("10.00", "USD")
    assert req["transaction"] == {"id": "201408-2-1569478", "amount": "100.47"}
    assert req["requested_at"] == "2014-08-16T00:00:00-04:00"
    assert req["healthcare"]["amount_due"] == "90.47"
    assert req["healthcare"]["payment_received_at"] == "2014-08-31T00:00:00-04:00"
    assert req["healthcare"]["claim_id"] == "http://www.BenefitsInc.com/fhir/oralhealthclaim/15476332402"
    assert req["facts"]["overpayment_kind"] == "paid_above_benefit"


def test_claim_response_payment_adjustment_and_bundles(plugins: Plugins, tmp_path: Path) -> None:
    cr = json.loads((FHIR / "claimresponse-example-additem.json").read_text())
    cr["payment"]["adjustment"] = {"value": -25.5, "currency": "USD"}
    cr["payment"]["adjustmentReason"] = {"coding": [{"code": "a001"}]}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": cr}, {"resource": json.loads((FHIR / "account-example.json").read_text())}]}
    f = tmp_path / "bundle.json"
    f.write_text(json.dumps(bundle))
    ok, account = read(plugins, "fhir", f, timezone="America/Chicago")
    assert ok.request["amount"] == "25.50"  # a JSON number read as a decimal, never a float
    assert ok.request["facts"]["adjustment_reason"] == "a001"
    assert ok.request["requested_at"] == "2014-08-16T00:00:00-05:00"
    assert account.ref == "bundle.json#entry[1]" and "R4 Account" in account.context


def test_fhir_never_passes_clinical_codes(plugins: Plugins) -> None:
    for f in FHIR.glob("*.json"):
        for rec in read(plugins, "fhir", f):
            text = json.dumps(rec.request or rec.context or rec.error)
            assert "diagnosis" not in text and "procedure" not in text and "Chalmers" not in text


# --- X12 835 --------------------------------------------------------------------------------

X12_DEAD = {
    "stupidedi_X221A1_dollars-and-data-sent-separate.edi": ("ST112233", "71700666555", "2 claim(s): CLP02 1 (processed as primary)"),
    "stupidedi_X221A1_dollars-and-data-sent-together.edi": ("ST1234", "12345", "2 claim(s): CLP02 1 (processed as primary); PLB CV -1.27"),
    "stupidedi_X221A1_era-sample.edi": ("ST35681", "12345", "1 claim(s): CLP02 1 (processed as primary)"),
    "stupidedi_X221A1_multiple-claims-single-check.edi": ("ST35681", "12345", "9 claim(s): CLP02 1 (processed as primary)"),
    "stupidedi_X221A1_secondary-payment-with-higher-fee-schedule.edi": ("ST0001", "0063158ABC", "1 claim(s): CLP02 2 (processed as secondary)"),
    "stupidedi_X221A1_secondary-payments.edi": ("ST0001", "0012524965", "2 claim(s): CLP02 2 (processed as secondary)"),
    "stupidedi_X221A1_tertiary-payments.edi": ("ST0001", "0012524879", "1 claim(s): CLP02 3 (processed as tertiary)"),
    # prose before the ISA, '+' elements, '>' components, one segment per line, no '~'
    "stupidedi_X221_case_1.edi": ("ST1234", "12345", "2 claim(s): CLP02 1 (processed as primary); PLB CV -1.27"),
    "stupidedi_X221_case_2.edi": ("ST112233", "71700666555", "2 claim(s): CLP02 1 (processed as primary)"),
    "stupidedi_X221_case_3a.edi": ("ST0001", "0012524965", "2 claim(s): CLP02 2 (processed as secondary); PLB CV -1.27, PLB CV -1.27"),
}


def test_every_x12_payload_is_covered() -> None:
    assert {p.name for p in X12.glob("*.edi")} == set(X12_DEAD)


@pytest.mark.parametrize("name", sorted(X12_DEAD))
def test_x12_payments_are_context(plugins: Plugins, name: str) -> None:
    st, trace, held = X12_DEAD[name]
    (rec,) = read(plugins, "x12-835", X12 / name)
    assert rec.ref == f"{name}#{st}" and rec.kind == "context"
    assert rec.context == (f"835 payment `{trace}` with no claim reversal (CLP02 22) and no PLB "
                           f"WO/72 adjustment; it holds {held}")


def test_x12_directory_reads_only_interchanges(plugins: Plugins) -> None:
    recs = read(plugins, "x12-835", X12)
    assert len(recs) == len(X12_DEAD)  # SOURCE.txt is not read as an interchange


def _check_synthetic(recs: list[Any], name: str) -> None:
    assert [r.ref for r in recs] == [f"{name}#ST0001#CLP1",
                                     f"{name}#ST0001#PLB:1234567893:WO:CCN8001:3",
                                     f"{name}#ST0001#PLB:1234567893:72:CCN8002:5"]
    rev, wo, ret = (r.request for r in recs)
    assert rev["request_id"] == "x12:EFT20240315:CCN9001:reversal"
    assert (rev["amount"], rev["currency"], rev["reason"]) == ("300.00", "USD", "overpayment")
    assert rev["requested_at"] == "2024-03-14T00:00:00-04:00"  # DTM*405, New York
    assert rev["customer"] == {"id": "1234567893"}
    assert rev["transaction"] == {"id": "CCN9001", "amount": "300.00"}
    assert rev["healthcare"] == {"requested_by": "payer", "claim_id": "CCN9001",
                                 "claim_status_code": "22", "recoupment_scheduled": True,
                                 "corrected_claim_received": True}
    assert rev["facts"]["x12_totals_reconcile"] is True and rev["facts"]["x12_payment_total"] == "102.00"
    assert (wo["amount"], wo["healthcare"]["requested_by"], wo["facts"]["x12_plb_amount"]) == ("100.00", "payer", "100.00")
    assert (ret["amount"], ret["healthcare"]["requested_by"], ret["facts"]["x12_plb_amount"]) == ("14.00", "provider", "-14.00")
    assert ret["healthcare"]["claim_id"] == "CCN8002"
    for r in recs:  # the invented patient and procedure never reach a request
        assert "DOE" not in json.dumps(r.request) and "99213" not in json.dumps(r.request)


def test_x12_reversal_and_provider_adjustments(plugins: Plugins) -> None:
    # CLP*PCN3003*1*...*22: CLP08 (facility code) is 22, CLP02 is 1: not a reversal.
    _check_synthetic(read(plugins, "x12-835", SYNTH), SYNTH.name)


def test_x12_other_delimiters_and_prose(plugins: Plugins, tmp_path: Path) -> None:
    text = SYNTH.read_text()
    # The TR3 case-file style: prose first, '+' elements, '>' components, newline terminators.
    other = text.replace("*", "+").replace(":", ">").replace("~", "\n")
    f = tmp_path / "tr3-style.edi"
    f.write_text("Business Scenario: a reversal.\n\nSome prose mentioning ISA codes.\n\n" + other)
    _check_synthetic(read(plugins, "x12-835", f), f.name)
    crlf = tmp_path / "crlf.edi"
    crlf.write_text(text.replace("~", "~\r\n"))
    _check_synthetic(read(plugins, "x12-835", crlf), crlf.name)


def test_x12_not_an_interchange(plugins: Plugins, tmp_path: Path) -> None:
    f = tmp_path / "x.edi"
    f.write_text("hello")
    (rec,) = read(plugins, "x12-835", f)
    assert rec.error == "x.edi: no ISA segment: not an X12 interchange"


# --- sink -----------------------------------------------------------------------------------


def test_fhir_sink_writes_a_payment_reconciliation(plugins: Plugins, tmp_path: Path) -> None:
    (rec,) = read(plugins, "fhir", FHIR / "claimresponse-example.json")
    req = refundry.parse_request({**rec.request, "healthcare": {
        **rec.request["healthcare"], "diagnosis_codes": ["J45.909"], "procedure_codes": ["99213"]}})
    engine = refundry.Engine.from_path(RULESETS)
    decision = engine.evaluate(req)
    assert decision.outcome == "approve" and decision.amount == Decimal("10.00")
    out = tmp_path / "pr.ndjson"
    writer = plugins.sink("fhir-payment-reconciliation").open(out, {})
    writer.write(decision, req, rec.ref)
    writer.write(decision, req, rec.ref)  # resumed: once
    writer.write(Decision(outcome="manual_review", amount=Decimal("0.00"), currency="USD",
                          request_id="x", as_of=None), req, "r")
    writer.close()
    raw = out.read_text()
    assert raw.count("\n") == 1
    assert '"paymentAmount": {"value": 10.00, "currency": "USD"}' in raw  # decimal, not "10.0"
    res = json.loads(raw, parse_float=Decimal)
    # R4 PaymentReconciliation: status, created, paymentDate, paymentAmount are 1..1;
    # detail.type is 1..1; id is [A-Za-z0-9-.]{1,64}.
    assert res["resourceType"] == "PaymentReconciliation"
    assert res["status"] == "active" and res["outcome"] == "complete"
    assert res["created"] == "2014-08-16T00:00:00-04:00"
    assert res["paymentDate"] == "2014-08-30"  # refund_due_by: 14 days after requested_at
    assert res["paymentAmount"] == {"value": Decimal("10.00"), "currency": "USD"}
    assert len(res["id"]) <= 64 and all(c.isalnum() or c in "-." for c in res["id"])
    (detail,) = res["detail"]
    assert detail["type"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/payment-type",
                                         "code": "adjustment"}]
    assert detail["amount"] == {"value": Decimal("10.00"), "currency": "USD"}
    assert detail["request"] == {"identifier": {"value": "http://www.BenefitsInc.com/fhir/oralhealthclaim/15476332402"}}
    assert res["identifier"] == [{"system": "urn:refundry:request", "value": "fhir:ClaimResponse/R3500"}]
    assert "J45" not in raw and "99213" not in raw


def test_fhir_sink_output_validates_against_an_independent_fhir_model(plugins: Plugins,
                                                                     tmp_path: Path) -> None:
    # fhir.resources has no R4 package any more; R4B's PaymentReconciliation is R4's unchanged.
    model = pytest.importorskip(
        "fhir.resources.R4B.paymentreconciliation",
        reason="pip install -e 'plugins/refundry-healthcare[test]' to validate with fhir.resources",
    ).PaymentReconciliation
    engine = refundry.Engine.from_path(RULESETS)
    out = tmp_path / "pr.ndjson"
    writer = plugins.sink("fhir-payment-reconciliation").open(out, {})
    for f in ("claimresponse-example.json", "paymentreconciliation-example.json"):
        for rec in read(plugins, "fhir", FHIR / f):
            req = refundry.parse_request(rec.request)
            writer.write(engine.evaluate(req), req, rec.ref)
    writer.close()
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        resource = model.model_validate_json(line)
        assert resource.status == "active" and resource.paymentAmount.currency == "USD"
    broken = json.loads(lines[0])
    del broken["paymentDate"]  # 1..1 in R4: the validator must notice
    with pytest.raises(ValueError):
        model.model_validate(broken)


def test_run_fhir_through_the_cli_and_back_pays_nothing_twice(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    shutil.copytree(FHIR, inbox, ignore=shutil.ignore_patterns("SOURCE.txt"))
    cmd = [sys.executable, "-m", "refundry.cli", "run", "--source", "fhir", "--input", str(inbox),
           "--sink", "fhir-payment-reconciliation", "--out", str(tmp_path / "pr.ndjson"),
           "--rulesets", str(RULESETS), "--option", "client_id=payer-1", "--option", "jurisdiction=US"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = [json.loads(x, parse_float=Decimal) for x in (tmp_path / "pr.ndjson").read_text().splitlines()]
    assert sorted(r["paymentAmount"]["value"] for r in written) == [Decimal("10.00"), Decimal("1500.00")]
    # The advance line was -1500.00: the recoupment keeps its sign in the detail it writes.
    details = sorted(r["detail"][0]["amount"]["value"] for r in written)
    assert details == [Decimal("-1500.00"), Decimal("10.00")]
    assert (tmp_path / "pr.ndjson.dead-letter.jsonl").read_text() == ""  # context: no dead letter
    assert "read: context 14" in done.stderr and "read: request 2" in done.stderr

    # Read back beside the payloads: two executed refunds, nothing written a second time.
    shutil.copy(tmp_path / "pr.ndjson", inbox / "zz-written.ndjson")
    again = subprocess.run([*cmd[:-8], "--out", str(tmp_path / "again.ndjson"), *cmd[-6:]],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "read: executed 2" in again.stderr
    assert (tmp_path / "again.ndjson").read_text() == ""


# --- malformed payloads never break a batch -------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=12),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _mutate(doc[head], rest, value)}
    return [_mutate(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_fhir_becomes_dead_letters(plugins: Plugins, tmp_path: Path, data: st.DataObject) -> None:
    doc = json.loads(data.draw(st.sampled_from(sorted(FHIR.glob("*.json")))).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        doc = _mutate(doc, data.draw(st.sampled_from(_paths(doc))), data.draw(JUNK))
    f = tmp_path / "fuzz.json"
    f.write_text(json.dumps(doc))
    for rec in plugins.source("fhir").read(f, OPTS):
        assert rec.kind in ("request", "executed", "context", "broken")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_x12_becomes_dead_letters(plugins: Plugins, tmp_path: Path, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from([SYNTH, *sorted(X12.glob("*.edi"))])).read_text(errors="replace")
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 40)))
        text = text[:start] + data.draw(st.text(alphabet="*~:+>^-.0123456789ABCLPSTW\n", max_size=8)) + text[end:]
    f = tmp_path / "fuzz.edi"
    f.write_text(text)
    for rec in plugins.source("x12-835").read(f, OPTS):
        assert rec.kind in ("request", "executed", "context", "broken")


# --- the contract kit a third-party adapter runs, run on this one ---------------------------

import refundry_healthcare  # noqa: E402

from refundry.plugins.testing import contract_tests  # noqa: E402

TestFhirContract = contract_tests(refundry_healthcare, name="healthcare", source="fhir",
                                  input=FHIR, options=OPTS, sink="fhir-payment-reconciliation")
TestX12Contract = contract_tests(refundry_healthcare, name="healthcare", source="x12-835",
                                 input=X12, options=OPTS)
