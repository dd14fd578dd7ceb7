"""A client's own `customer_message` in each language its customers are written to: given as
`{en: ..., de: ...}`, shown in the customer's language, and checked at load for every language
the client enables."""

from __future__ import annotations

import textwrap

import refundry
from refundry.app import customer

from .conftest import RULESETS

LAYER = """\
ruleset: shop-de
version: 1.0.0
effective_from: 2024-01-01
client: shop
extends: eu-consumer
languages: [en, de]
rules:
  - id: shop-large-refund
    when: {field: amount, gt: 100}
    effect: manual_review
    message: a person checks refunds above EUR 100
    customer_message:
      en: A member of our team is checking your refund.
      de: Ein Mitarbeiter prüft Ihre Erstattung.
"""


def test_german_status_text_uses_the_rules_german_text(tmp_path, request_json):
    (tmp_path / "shop-de.yaml").write_text(LAYER)
    engine = refundry.Engine.from_path(tmp_path, baselines=RULESETS)
    request_json["client_id"] = "shop"
    decision = engine.evaluate(request_json)
    assert decision.outcome == "manual_review"
    reason = next(r for r in decision.reasons if r.rule_id == "shop-large-refund")
    assert reason.customer_message == "A member of our team is checking your refund."
    assert reason.to_dict()["customer_messages"]["de"] == "Ein Mitarbeiter prüft Ihre Erstattung."
    de = customer.message(decision, "de")
    en = customer.message(decision, "en")
    assert "Ein Mitarbeiter prüft Ihre Erstattung." in de.text
    assert "team is checking" not in de.text  # no English sentence in a German message
    assert "A member of our team is checking your refund." in en.text
    assert "Mitarbeiter" not in en.text


def test_a_missing_language_is_a_load_error_at_the_text(cli, tmp_path):
    broken = LAYER.replace("      de: Ein Mitarbeiter prüft Ihre Erstattung.\n", "")
    one_text = LAYER.replace(textwrap.dedent("""\
        customer_message:
              en: A member of our team is checking your refund.
              de: Ein Mitarbeiter prüft Ihre Erstattung.
        """), "customer_message: A member of our team is checking your refund.\n")
    assert one_text != LAYER
    for text, where in ((broken, "13:7"), (one_text, "12:23")):
        path = tmp_path / "shop-de.yaml"
        path.write_text(text)
        r = cli("validate", path, "--rulesets", RULESETS)
        assert r.code == 3
        assert r.err.strip() == (
            f"{path}:{where}: rule `shop-large-refund`: `customer_message` has no `de` text; this "
            "client writes to customers in en, de: give `customer_message: {en: ..., de: ...}`")


def test_without_languages_one_english_text_is_enough(cli, tmp_path):
    path = tmp_path / "shop-de.yaml"
    path.write_text(LAYER.replace("languages: [en, de]\n", "").replace(
        "      de: Ein Mitarbeiter prüft Ihre Erstattung.\n", ""))
    assert cli("validate", path, "--rulesets", RULESETS).code == 0
