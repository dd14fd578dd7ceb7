"""Customer messages, `refundry status` and receipts: what a customer reads, and that it is
recorded on the case. The leak tests scan every text a customer can be given."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest

import refundry
from refundry.app import customer
from refundry.cli import main
from refundry.records.history import History
from tests import fraudgen

from .conftest import RULESETS

NOTE = "agent: customer is probably a reseller, watch out"
REQUEST_NOTE = "VIP, card 4111 1111 1111 1111, asked twice"


@pytest.fixture(scope="module")
def all_rules():
    """Every rule id, reason code and staff message in the shipped rulesets."""
    engine = refundry.Engine.from_path(RULESETS)
    rules = {}
    for composite in engine.library.composites.values():
        for rule in composite.rules:
            rules[rule.id] = rule
    return rules


def internal_strings(all_rules, facts: dict | None = None) -> set[str]:
    out = set()
    for rule in all_rules.values():
        out |= {rule.id, rule.reason.code, rule.reason.message}
    out |= {"refundry.floor-held", "refundry.no-rule-matched", "floor_held_for_review",
            "no_rule_matched", NOTE, REQUEST_NOTE, "4111 1111"}
    for section in ("history", "anomaly"):
        out |= set((facts or {}).get(section, {}))  # every fact name
    out |= {"fraud", "anomaly", "velocity", "score", "drivers"}
    return {s.lower() for s in out if len(s) >= 5}


def assert_clean(text: str, internal: set[str]) -> None:
    low = text.lower()
    found = sorted(s for s in internal if s in low)
    assert not found, f"customer text reveals {found}: {text!r}"


def test_no_shipped_customer_text_names_a_rule_or_a_signal(all_rules) -> None:
    """Every reason sentence a customer can get, in every language, from the rulesets and
    the catalogue."""
    internal = internal_strings(all_rules)
    catalogue = customer.catalogue()
    texts = [r.reason.customer_message for r in all_rules.values()]
    texts += [t for entry in catalogue["reasons"].values() for t in entry.values()]
    texts += [t for s in catalogue["status"].values() for lang in s.values() for t in lang.values()]
    assert len(texts) > 100
    for text in texts:
        assert_clean(text, internal)


def test_german_covers_every_status_and_the_fraud_codes() -> None:
    catalogue = customer.catalogue()
    for status in ("manual_review", "approved", "denied", "processed", "refunded", "disputed"):
        assert set(catalogue["status"][status]) == {"en", "de"}
    for code in ("review_account_activity", "review_amount", "review_duplicate"):
        assert "de" in catalogue["reasons"][code]


def test_every_status_text_of_a_flagged_history_is_clean(store, engine, all_rules, tmp_path) -> None:
    """The planted abuse (fraud rules matched, facts recorded, internal notes added): every
    status, in both languages, through the library and through `refundry status`."""
    history = History(store)
    facts_seen: dict = {}
    ids = []
    for request in fraudgen.planted():
        request = {**request, "note": REQUEST_NOTE}
        facts = history.facts(request)
        facts_seen = {k: {**facts_seen.get(k, {}), **v} for k, v in facts.items()} if facts else facts_seen
        data = {**request, "facts": {**request["facts"], **facts}}
        decision = engine.evaluate(data)
        store.record(data, decision, engine=engine, actor="shop")
        store.note(request["request_id"], NOTE, actor="agent")
        ids.append(request["request_id"])
    internal = internal_strings(all_rules, facts_seen)
    assert "requests_by_customer_30d" in internal and "refunds_exceed_original" in internal
    reviewed = 0
    for rid in ids:
        for lang in customer.LANGUAGES:
            msg = customer.status(store, rid, lang)
            assert_clean(json.dumps(msg.to_dict(), ensure_ascii=False), internal)
            reviewed += msg.status == "manual_review"
    # the 12 flagged requests, and the 2 second halves of a split refund that do not state the
    # first half the store paid (refundry.prior-refunds-disagree), in two languages
    assert reviewed == 2 * (12 + 2)


def test_status_cli_is_clean_and_recorded_on_the_case(store, engine, all_rules, store_url,
                                                      capsys) -> None:
    request = fraudgen.planted()[7]  # serial-7: held by the velocity and anomaly rules
    for r in fraudgen.planted()[:8]:
        data = {**r, "facts": {**r["facts"], **History(store).facts(r)}}
        store.record(data, engine.evaluate(data), engine=engine, actor="shop")
    store.note(request["request_id"], NOTE, actor="agent")
    internal = internal_strings(all_rules, store.case("serial-7").request["facts"])
    for args in (["--json"], ["--lang", "de"], []):
        assert main(["status", "serial-7", "--db", store_url, "--by", "agent", *args]) == 0
        out = capsys.readouterr().out
        assert_clean(out, internal)
    assert "in Prüfung" in out or "in review" in out
    case = store.case("serial-7")
    given = [e.details["communicated"] for e in case.events if "communicated" in e.details]
    assert [g["language"] for g in given] == ["en", "de", "en"]
    assert {g["channel"] for g in given} == {"cli"}
    assert all(g["template"] == "status.manual_review reasons:review_account_activity"
               for g in given)
    # and the agent sees the conversation in `records show`
    assert main(["records", "show", "serial-7", "--db", store_url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sum("communicated" in e["details"] for e in shown["events"]) == 3


def test_preview_records_nothing(store, record, store_url, capsys) -> None:
    record(fraudgen.request("p1", fraudgen._at(1), "c1", amount=Decimal("20.00")))
    before = len(store.case("p1").events)
    assert main(["status", "p1", "--db", store_url, "--preview"]) == 0
    assert len(store.case("p1").events) == before


def test_an_approved_decision_names_amount_and_due_date_in_both_languages(engine) -> None:
    decision = engine.evaluate(fraudgen.request("a", fraudgen._at(1), "c", amount=Decimal("1234.50")))
    assert decision.outcome == "approve"
    due = decision.deadline("refund_due_by")
    en, de = customer.message(decision, "en"), customer.message(decision, "de")
    assert "1,234.50 EUR" in en.text and f"{due.day} {due.strftime('%B %Y')}" in en.next_step
    assert "1.234,50 EUR" in de.text and due.strftime("%d.%m.%Y") in de.next_step
    assert "Widerruf" in de.text  # the reason, from the German catalogue
    assert en.due == de.due == due


def test_a_reason_text_that_names_a_rule_is_dropped(engine) -> None:
    decision = engine.evaluate(fraudgen.request("a", fraudgen._at(1), "c", amount=Decimal("10")))
    data = decision.to_dict()
    data["reasons"][0]["customer_message"] = "Approved by crd-withdrawal-in-period."
    data["reasons"][0]["code"] = "some_code_without_catalogue_entry"
    msg = customer.message(data, "en")
    assert "crd-" not in msg.text and msg.text.startswith("Your refund of 10.00 EUR")


def test_unknown_language_is_refused(engine) -> None:
    decision = engine.evaluate(fraudgen.request("a", fraudgen._at(1), "c", amount=Decimal("10")))
    with pytest.raises(customer.CustomerError):
        customer.message(decision, "fr")


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_receipt_after_processing_json_and_html(store, record, store_url, capsys, tmp_path) -> None:
    record(fraudgen.request("p1", fraudgen._at(1), "c1", amount=Decimal("80.00")))
    assert main(["receipt", "p1", "--db", store_url]) == 1  # not processed yet
    assert "once the refund is processed" in capsys.readouterr().err
    store.mark("p1", "processed", actor="pay", reference="PAY-77")
    assert main(["receipt", "p1", "--db", store_url, "--by", "agent"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["amount"] == "80.00" and data["currency"] == "EUR"
    assert data["reference"] == "PAY-77" and data["method"] == "card ending 4242"
    processed_at = store.case("p1").events[-2].at  # the processed event, in UTC
    assert data["date"] == processed_at[:10]  # Berlin is an hour ahead; 09:00 UTC stays
    out = tmp_path / "receipt.html"
    assert main(["receipt", "p1", "--db", store_url, "--format", "html", "--lang", "de",
                 "--out", str(out)]) == 0
    page = _Html()
    page.feed(out.read_text("utf-8"))
    text = " ".join(page.text)
    assert "script" not in page.tags and "link" not in page.tags
    assert "Erstattungsbeleg" in text and "80,00 EUR" in text and "PAY-77" in text
    given = [e.details["communicated"] for e in store.case("p1").events
             if "communicated" in e.details]
    assert [g["template"] for g in given] == ["receipt.json", "receipt.html"]
    assert all(re.search(r"PAY-77", g["text"]) for g in given)


def test_an_overturned_dispute_tells_the_explanation_and_its_amount(store, engine, record) -> None:
    late = fraudgen.request("d1", fraudgen._at(1), "c1", amount=Decimal("50.00"))
    late["transaction"]["delivered_at"] = "2023-01-01T10:00:00+01:00"  # long past the period
    case = record(late)
    assert case.status == "denied"
    assert customer.status(store, "d1").title == "declined"
    store.open_dispute("d1", actor="agent", reason="customer says never delivered", engine=engine)
    assert customer.status(store, "d1", "de").title == "wird erneut geprüft"
    store.resolve_dispute("d1", actor="lead", resolution="overturned", amount="50.00",
                          explanation="We accept that the parcel arrived late.")
    msg = customer.status(store, "d1")
    assert msg.title == "approved" and "50.00 EUR" in msg.text
    assert "We accept that the parcel arrived late." in msg.text
    assert "never delivered" not in msg.text  # the dispute reason is the agent's note


def test_communicated_events_match_the_record_schema_and_keep_the_chain(store, record) -> None:
    import io

    import jsonschema

    from refundry.core.resources import schema

    record(fraudgen.request("p1", fraudgen._at(1), "c1", amount=Decimal("80.00")))
    msg = customer.status(store, "p1", "de")
    customer.communicate(store, "p1", channel="email", template=msg.template, language="de",
                         text=msg.plain(), actor="mailer")
    store.mark("p1", "processed", actor="pay", reference="PAY-1")
    data = customer.receipt(store, "p1")
    customer.communicate(store, "p1", channel="portal", template="receipt.json",
                         language="en", text=customer.receipt_text(data), actor="portal")
    buf = io.StringIO()
    store.export(buf)
    validator = jsonschema.Draft202012Validator(schema("record-event.schema.json"))
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    for event in events:
        validator.validate(event)
    said = [e["details"]["communicated"] for e in events if "communicated" in e["details"]]
    assert [(s["channel"], s["language"]) for s in said] == [("email", "de"), ("portal", "en")]
    assert store.verify().ok
    assert store.case("p1").status == "processed"  # a message never moves the case


def test_a_short_note_does_not_silence_the_status(store, record) -> None:
    record(fraudgen.request("p1", fraudgen._at(1), "c1", amount=Decimal("80.00")))
    store.note("p1", "refund", actor="agent")
    store.note("p1", "We will refund you within 14 days.", actor="agent")  # a copied sentence
    msg = customer.status(store, "p1")
    assert msg.text.startswith("Your refund of 80.00 EUR has been approved.")
    assert "within 14 days" not in msg.text  # the reason sentence a note repeats is dropped


def test_receipt_keeps_the_reference_given_when_processed_after_refunded(store, record, store_url,
                                                                         capsys) -> None:
    record(fraudgen.request("p2", fraudgen._at(1), "c1", amount=Decimal("80.00")))
    assert main(["records", "mark", "p2", "processed", "--reference", "PAY-88", "--by", "pay",
                 "--db", store_url]) == 0
    assert main(["records", "mark", "p2", "refunded", "--by", "pay", "--db", store_url]) == 0
    capsys.readouterr()
    assert main(["receipt", "p2", "--db", store_url]) == 0
    assert json.loads(capsys.readouterr().out)["reference"] == "PAY-88"
