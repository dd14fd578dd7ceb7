"""The shipped rulesets, checked the way CI and a compliance analyst check them: through the
`refundry` command on the real files."""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from refundry import Engine

from .conftest import ROOT, RULESETS, refundry_cli

BAD = sorted(RULESETS.rglob("*_bad.yaml"))
ROW = re.compile(r"\b(C|E|U|US|A|H|F)(\d{1,2})\b")
# Floor rules that cannot carry a date: the law sets none, or the event it runs from is not a
# request field. Each is explained in the industry page under "what a reviewer must check".
NO_DEADLINE = {
    "acl-major-failure-refund", "acl-major-failure-replacement", "acl-minor-failure",
    "acl-major-failure-rejection-period",  # the ACL counts no days (s262: a judgement)
    # amount-only floors: their clocks are those of the Reg E rules whose amount they adjust
    "rege-liability-timely-notice", "rege-liability-late-notice",
}


def test_validate_shipped_rulesets() -> None:
    proc = refundry_cli("validate", "rulesets/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok:")


def test_all_rule_tests_pass_with_every_rule_covered() -> None:
    proc = refundry_cli("test", "rulesets/", "--coverage")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not covered" not in proc.stdout
    covered, total = re.search(r"coverage: (\d+)/(\d+) rules", proc.stdout).groups()
    assert covered == total and int(total) > 80
    assert re.search(r"(\d+) passed, 0 failed", proc.stdout)


# Each broken sample and the floors `refundry validate` must name for it.
FLOORS_NAMED = {
    "shopco-uk_bad.yaml": [
        "window `cancellation` undercuts the statutory floor of `uk-consumer`",
        "overrides statutory floor rule `cra-short-term-reject` of `uk-consumer`"],
    "gadgetco-ca_bad.yaml": [
        "overrides statutory floor rule `ca-1723-policy-not-posted` of `us-ca-consumer`"],
    "carewell-ca_bad.yaml": [
        "overrides statutory floor rule `ca-127440-refund-excess` of `us-ca-health`",
        "overrides statutory floor rule `mcr-overpayment-60-days` of `us-health`"],
    "firstbank-us_bad.yaml": [
        "window `rege_notice` undercuts the statutory floor of `us-finance`",
        "overrides statutory floor rule `regz-billing-error` of `us-finance`"],
}


def test_rule_tests_pass_on_the_interpreted_backend_too() -> None:
    proc = refundry_cli("test", "rulesets/", "--backend", "interpreted")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_bad_sample_has_its_expected_floors() -> None:
    assert {p.name for p in BAD} == set(FLOORS_NAMED)


@pytest.mark.parametrize("bad", BAD, ids=[p.name for p in BAD])
def test_bad_samples_are_rejected_naming_the_floor(bad) -> None:
    shown = str(bad.relative_to(ROOT))
    proc = refundry_cli("validate", shown)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    messages = proc.stderr.strip().splitlines()
    assert len(messages) == len(FLOORS_NAMED[bad.name]), messages
    for expected in FLOORS_NAMED[bad.name]:
        assert any(m.startswith(shown + ":") and expected in m for m in messages), (expected, messages)


def test_every_industry_has_a_bad_sample() -> None:
    assert {p.parent.name for p in BAD} == {"ecommerce", "healthcare", "finance"}


@lru_cache(maxsize=1)
def _shipped() -> Engine:
    return Engine.from_path(RULESETS)


def _baseline_rules():
    engine = _shipped()
    seen = {}
    for comp in engine.library.composites.values():
        for rule in comp.rules:
            layer = next(d for d in comp.layers if d.id == rule.layer)
            if layer.client is None:
                seen[(rule.layer, rule.id)] = rule
    return seen


def test_every_baseline_rule_cites_a_row_that_exists() -> None:
    reference = (ROOT / "docs" / "regulations.md").read_text(encoding="utf-8")
    rows = {m.group(0) for m in re.finditer(r"^\| ([A-Z]{1,2}\d{1,2}) \|", reference, re.M)}
    rows = {r.strip("| ").strip() for r in rows}
    for (layer, rid), rule in _baseline_rules().items():
        cited = {a + b for a, b in ROW.findall(rule.reason.citation)}
        assert cited, f"{layer}/{rid} cites no regulation row"
        assert cited <= rows, f"{layer}/{rid} cites rows not in docs/regulations.md: {cited - rows}"


def test_every_baseline_floor_rule_carries_its_deadlines() -> None:
    for (layer, rid), rule in _baseline_rules().items():
        if rule.floor and rid not in NO_DEADLINE:
            assert rule.deadlines, f"{layer}/{rid} is a statutory rule without a deadline"


def _req(industry: str, jurisdiction: str, when: str, client: str = "nobody") -> dict:
    return {"request_id": "r", "client_id": client, "industry": industry,
            "jurisdiction": jurisdiction, "requested_at": when, "amount": "10.00",
            "currency": "USD", "reason": "other", "customer": {"id": "c"},
            "transaction": {"id": "t", "amount": "10.00"}}


@pytest.mark.parametrize(("industry", "jurisdiction", "when", "client", "expected"), [
    ("ecommerce", "DE", "2024-05-01T10:00:00+02:00", "nobody", "eu-consumer"),
    ("ecommerce", "GB", "2024-05-01T10:00:00+01:00", "nobody", "uk-consumer"),
    ("ecommerce", "US-NY", "2024-05-01T10:00:00-04:00", "nobody", "us-ftc"),
    ("ecommerce", "US-CA", "2024-05-01T10:00:00-07:00", "nobody", "us-ca-consumer"),
    ("ecommerce", "US-CA", "2024-05-01T10:00:00-07:00", "gadgetco", "gadgetco-ca"),
    ("ecommerce", "AU-NSW", "2024-05-01T10:00:00+10:00", "nobody", "au-consumer"),
    ("healthcare", "US-CA", "2024-12-31T10:00:00-08:00", "nobody", "us-health"),
    ("healthcare", "US-CA", "2025-01-01T10:00:00-08:00", "nobody", "us-ca-health"),
    ("finance", "US-TX", "2024-05-01T10:00:00-05:00", "nobody", "us-finance"),
    ("finance", "FR", "2024-05-01T10:00:00+02:00", "nobody", "eu-payments"),
    ("finance", "DE", "2024-05-01T10:00:00+02:00", "sparbank", "sparbank-de"),
])
def test_requests_resolve_to_the_regime_that_governs_them(industry, jurisdiction, when, client,
                                                          expected) -> None:
    decision = _shipped().evaluate(_req(industry, jurisdiction, when, client))
    assert decision.ruleset is not None, decision.errors
    assert decision.ruleset.id == expected
