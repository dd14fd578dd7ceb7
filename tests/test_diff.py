"""`refundry diff`: between two versions of a shipped ruleset, over 10,000 generated requests,
the report lists exactly the decisions the window change predicts, and nothing else.

The prediction is computed here, independently of the engine: local dates with zoneinfo,
public holidays from the `holidays` package, Regulation 1182/71 roll-forward by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import zoneinfo
from functools import cache
from pathlib import Path

import holidays

from .conftest import RULESETS, refundry_cli

EU = RULESETS / "ecommerce" / "eu-consumer.yaml"
ZONES = {"DE": "Europe/Berlin", "FR": "Europe/Paris", "AT": "Europe/Vienna"}
N = 10_000


@cache
def _holidays(country: str, year: int) -> frozenset[dt.date]:
    return frozenset(holidays.country_holidays(country, years=year))


def _last_day(start: dt.date, days: int, country: str) -> dt.date:
    day = start + dt.timedelta(days=days)
    while day.weekday() >= 5 or day in _holidays(country, day.year):
        day += dt.timedelta(days=1)
    return day


def _local(instant: str, zone: str) -> dt.date:
    return dt.datetime.fromisoformat(instant).astimezone(zoneinfo.ZoneInfo(zone)).date()


def _generate(path: Path) -> dict[str, str]:
    """Write N requests; return the predicted change kind per request id that should change."""
    rng = random.Random(20240229)
    predicted: dict[str, str] = {}
    with path.open("w", encoding="utf-8") as out:
        for i in range(N):
            country = rng.choice(sorted(ZONES))
            zone = ZONES[country]
            delivered = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                minutes=rng.randrange(0, 365 * 24 * 60))
            requested = delivered + dt.timedelta(minutes=rng.randrange(0, 40 * 24 * 60))
            reason = "changed_mind" if rng.random() < 0.85 else rng.choice(["defective", "other"])
            info = rng.random() < 0.9
            personalized = rng.random() < 0.05
            has_delivery = rng.random() < 0.98
            rid = f"gen-{i:05d}"
            req = {
                "request_id": rid, "client_id": "any-shop", "industry": "ecommerce",
                "jurisdiction": country, "timezone": zone,
                "requested_at": requested.isoformat(), "amount": "100.00", "currency": "EUR",
                "reason": reason, "customer": {"id": f"c{i}"},
                "transaction": {"id": f"t{i}", "amount": "100.00"},
                "disclosures": {"withdrawal_info_given": info},
                "evidence": {"goods_received_back": rng.random() < 0.8},
                "items": [{"sku": "X", "quantity": 1, "unit_price": "100.00",
                           "personalized": personalized}],
            }
            if has_delivery:
                req["transaction"]["delivered_at"] = delivered.isoformat()
            out.write(json.dumps(req) + "\n")
            if not (reason == "changed_mind" and info and has_delivery):
                continue
            start = _local(delivered.isoformat(), zone)
            notice = _local(requested.isoformat(), zone)
            old_end, new_end = _last_day(start, 14, country), _last_day(start, 21, country)
            if notice <= old_end and not personalized:
                predicted[rid] = "deadline period_ends: later"       # approved both times
            elif old_end < notice <= new_end:
                predicted[rid] = "rule crd-withdrawal-period-over: no longer matches"
    return predicted


def test_diff_lists_exactly_the_predicted_changes(tmp_path: Path) -> None:
    text = EU.read_text(encoding="utf-8")
    window = "    period: 14 days\n    notice: requested_at             # the notice counts when sent - E6"
    assert text.count(window) == 1
    new_text = (text.replace(window, window.replace("14 days", "21 days"))
                .replace("version: 1.0.0", "version: 1.1.0", 1)
                .replace("effective_from: 2014-06-13", "effective_from: 2025-01-01", 1))
    new = tmp_path / "eu-consumer.yaml"
    new.write_text(new_text, encoding="utf-8")
    requests = tmp_path / "requests.jsonl"
    predicted = _generate(requests)
    assert len(predicted) > 1000  # the sample really exercises the change

    proc = refundry_cli("diff", str(EU), str(new), "--requests", str(requests),
                        "--as-of", "2025-01-01T12:00:00+00:00", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["requests"] == N
    assert report["errors"] == []
    changed = {d["request_id"]: d for d in report["decisions"]}
    assert set(changed) == set(predicted)
    assert report["changed"] == len(predicted)
    by_change = {c["change"]: set(c["request_ids"]) for c in report["changes"]}
    for kind in set(predicted.values()):
        assert by_change[kind] == {r for r, k in predicted.items() if k == kind}
    # Inside the old period only the consumer's last day moves; nothing else changes.
    for rid, kind in predicted.items():
        if kind == "deadline period_ends: later":
            assert changed[rid]["changes"] == [kind]
            assert changed[rid]["old"]["outcome"] == changed[rid]["new"]["outcome"]
    # Between the old and the new end, the denial turns into the statutory refund
    # (or a review holding it), never the other way round.
    late = [changed[r] for r, k in predicted.items() if k != "deadline period_ends: later"]
    assert all(d["old"]["outcome"] == "deny" for d in late if "crd-excluded-goods" not in d["old"]["rules"])
    assert all(d["new"]["outcome"] in ("approve", "manual_review") for d in late
               if "crd-excluded-goods" not in d["new"]["rules"])


def test_diff_table_and_bad_lines(tmp_path: Path) -> None:
    requests = tmp_path / "r.jsonl"
    good = {"request_id": "one", "client_id": "s", "industry": "ecommerce", "jurisdiction": "DE",
            "requested_at": "2024-03-20T10:00:00+01:00", "amount": "10.00", "currency": "EUR",
            "reason": "changed_mind", "customer": {"id": "c"},
            "transaction": {"id": "t", "amount": "10.00", "delivered_at": "2024-03-01T10:00:00+01:00"},
            "disclosures": {"withdrawal_info_given": True}, "evidence": {"goods_received_back": True}}
    requests.write_text(json.dumps(good) + "\n\nnot json\n", encoding="utf-8")
    new = tmp_path / "eu.yaml"
    new.write_text(EU.read_text(encoding="utf-8").replace(
        "    period: 14 days\n    notice: requested_at", "    period: 30 days\n    notice: requested_at"))
    proc = refundry_cli("diff", str(EU), str(new), "--requests", str(requests))
    assert proc.returncode == 0, proc.stderr
    assert "requests: 1  changed: 1  unchanged: 0" in proc.stdout
    assert "outcome: deny -> approve" in proc.stdout and "one" in proc.stdout
    assert "r.jsonl:3:1: invalid json" in proc.stdout
    same = refundry_cli("diff", str(EU), str(EU), "--requests", str(requests))
    assert "changed: 0" in same.stdout


def test_diff_a_client_file_over_shared_baselines(tmp_path: Path) -> None:
    """A client file alone cannot load (it extends a baseline): --with supplies the baselines,
    and the side's own version of the client ruleset wins over the copy in the shared folder."""
    acme = RULESETS / "ecommerce" / "acme-eu.yaml"
    new = tmp_path / "acme-eu.yaml"
    new.write_text(acme.read_text(encoding="utf-8").replace("period: 30 days", "period: 20 days")
                   .replace("version: 1.0.0", "version: 1.1.0"), encoding="utf-8")
    lines = []
    for day in range(10, 32):  # delivered 1 March 2024 (France): day 20 is Thursday 21 March
        lines.append(json.dumps({
            "request_id": f"d{day}", "client_id": "acme", "industry": "ecommerce",
            "jurisdiction": "FR", "requested_at": f"2024-03-{day:02d}T10:00:00+01:00",
            "amount": "80.00", "currency": "EUR", "reason": "changed_mind", "customer": {"id": "c"},
            "transaction": {"id": "t", "amount": "80.00", "delivered_at": "2024-03-01T12:00:00+01:00"},
            "disclosures": {"withdrawal_info_given": True}, "evidence": {"goods_received_back": True}}))
    requests = tmp_path / "r.jsonl"
    requests.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = refundry_cli("diff", str(acme), str(new), "--with", str(RULESETS), "--requests",
                        str(requests), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_change = {c["change"]: c["request_ids"] for c in report["changes"]}
    assert by_change["outcome: approve -> deny"] == [f"d{d}" for d in range(22, 32)]
    assert by_change["deadline period_ends: earlier"] == [f"d{d}" for d in range(10, 22)]
    assert report["changed"] == 22
    assert {r["version"] for r in report["new"]["rulesets"] if r["id"] == "acme-eu"} == {"1.1.0"}


def test_diff_without_a_requests_file_is_a_runtime_error(tmp_path: Path) -> None:
    proc = refundry_cli("diff", str(EU), str(EU), "--requests", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_diff_table_shows_the_amounts_and_dates_behind_a_change(cli, tmp_path: Path) -> None:
    gadget = RULESETS / "ecommerce" / "gadgetco-ca.yaml"
    new = tmp_path / "gadgetco-ca.yaml"
    new.write_text(gadget.read_text(encoding="utf-8").replace("deduct_percent: 15", "deduct_percent: 20")
                   .replace("period: 30 days", "period: 31 days")
                   .replace("version: 1.0.0", "version: 1.1.0"), encoding="utf-8")
    request = {"request_id": "g1", "client_id": "gadgetco", "industry": "ecommerce",
               "jurisdiction": "US-CA", "requested_at": "2024-07-20T10:00:00-07:00",
               "amount": "200.00", "currency": "USD", "reason": "changed_mind",
               "customer": {"id": "c"},
               "transaction": {"id": "t", "amount": "200.00", "purchased_at": "2024-07-01T10:00:00-07:00"},
               "disclosures": {"refund_policy_posted": True, "refund_policy": "exchange_only"},
               "items": [{"sku": "P", "quantity": 1, "unit_price": "200.00", "condition": "opened"}]}
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps(request) + "\n", encoding="utf-8")
    r = cli("diff", gadget, new, "--with", RULESETS, "--requests", requests)
    assert r.code == 0, r.err
    rows = {line.split("  ")[0].strip(): line for line in r.out.splitlines()[2:]}
    assert rows["amount: decreased"].endswith("g1 (170.00 -> 160.00)")
    assert rows["deadline period_ends: later"].endswith("g1 (2024-07-31 -> 2024-08-01)")
