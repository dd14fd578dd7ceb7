"""Delivery: sinks POST refunds to a platform with retries, backoff and the case's
idempotency key, against local stand-ins that behave like Stripe and Shopify (idempotency,
injected 500s, lost answers and timeouts); never the internet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from refundry.app.runner import run
from refundry.plugins import PluginError, SourceError

pytest.importorskip("refundry_ecommerce", reason="install it: pip install -e plugins/refundry-ecommerce")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_platforms import FakePlatform  # noqa: E402

HERE = Path(__file__).resolve().parent
RULESETS = [HERE / "rulesets"]
FAST = {"retries": "4", "backoff": "0", "timeout": "0.5"}


def requests_file(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({
                "request_id": f"case-{i}", "client_id": "acme", "industry": "ecommerce",
                "jurisdiction": "JP", "requested_at": "2024-04-03T09:00:00+09:00",
                "amount": "1200", "currency": "JPY", "reason": "defective",
                "customer": {"id": f"cus_{i}"},
                "transaction": {"id": f"ch_{i}", "amount": "5000"}}) + "\n")
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def deliver(src: Path, out: Path, platform: FakePlatform, **extra: str) -> Any:
    return run(source="jsonl", input_path=src, sinks=["stripe-refund"], out=out,
               rulesets=RULESETS, options={"deliver": "true", "base_url": platform.url,
                                           **FAST, **extra})


def test_stripe_retries_through_500s_lost_answers_and_timeouts_and_pays_once(tmp_path: Path) -> None:
    src = requests_file(tmp_path / "in.jsonl", 3)
    with FakePlatform(slow=1.2) as stripe:
        stripe.faults = ["500", "500-after", "timeout"]
        summary = deliver(src, tmp_path / "out.jsonl", stripe)
        assert summary.delivered == 3
        # case-0: a 500 (nothing made), then made; case-0 again? no: the 500-after and the
        # timeout hit case-0's retries, each made-or-replayed under one key.
        assert [r["metadata"]["refundry_request_id"] for r in stripe.refunds] == [
            "case-0", "case-1", "case-2"]
        assert stripe.requests > 3  # the retries happened
        out = lines(tmp_path / "out.jsonl")
        assert [(o["request_id"], o["refund_id"]) for o in out] == [
            ("case-0", "stripe:re_fake1"), ("case-1", "stripe:re_fake2"), ("case-2", "stripe:re_fake3")]
        assert all(o["idempotency_key"] == f"refundry-{o['request_id']}" for o in out)


def test_a_rerun_never_delivers_twice(tmp_path: Path) -> None:
    src = requests_file(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    with FakePlatform() as stripe:
        deliver(src, out, stripe)
        asked = stripe.requests
        # The journal lost: the sink's own output holds the keys, nothing is sent again.
        (tmp_path / "out.jsonl.progress.jsonl").unlink()
        deliver(src, out, stripe)
        assert stripe.requests == asked
        # A kill after the platform made a refund but before the line was written (a fresh
        # output and journal): sent again under the same key, Stripe replays the same refund.
        again = deliver(src, tmp_path / "again.jsonl", stripe)
        assert again.delivered == 3 and len(stripe.refunds) == 3
        assert [o["refund_id"] for o in lines(tmp_path / "again.jsonl")] == [
            o["refund_id"] for o in lines(out)]


def test_what_the_platform_made_read_back_pays_nothing(tmp_path: Path) -> None:
    src = requests_file(tmp_path / "in.jsonl", 3)
    with FakePlatform() as stripe:
        deliver(src, tmp_path / "out.jsonl", stripe)
        import urllib.request

        with urllib.request.urlopen(f"{stripe.url}/v1/refunds") as resp:  # noqa: S310 - loopback
            (tmp_path / "refunds.json").write_bytes(resp.read())
        back = run(source="stripe", input_path=tmp_path / "refunds.json", sinks=["stripe-refund"],
                   out=tmp_path / "back.jsonl", rulesets=RULESETS,
                   options={"client_id": "acme", "jurisdiction": "JP", "deliver": "true",
                            "base_url": stripe.url, **FAST})
        assert back.kinds == {"request": 0, "executed": 3, "context": 0, "broken": 0}
        assert len(stripe.refunds) == 3 and lines(tmp_path / "back.jsonl") == []


def test_a_platform_that_keeps_failing_stops_the_run_naming_the_sink(tmp_path: Path) -> None:
    src = requests_file(tmp_path / "in.jsonl", 2)
    with FakePlatform() as stripe:
        stripe.faults = ["500"] * 5  # the first try and all four retries
        with pytest.raises(PluginError) as info:
            deliver(src, tmp_path / "out.jsonl", stripe)
        assert str(info.value).startswith(
            "plugin `ecommerce`: sink `stripe-refund` failed on `in.jsonl:1`: DeliveryError: "
            "POST /v1/refunds:")
        assert lines(tmp_path / "out.jsonl") == []
        assert lines(tmp_path / "out.jsonl.progress.jsonl") == []  # the re-run continues there
        summary = deliver(src, tmp_path / "out.jsonl", stripe)
        assert summary.delivered == 2 and len(stripe.refunds) == 2


def test_the_token_comes_from_the_environment_never_an_option(tmp_path: Path) -> None:
    src = requests_file(tmp_path / "in.jsonl", 1)
    with FakePlatform() as stripe:
        with pytest.raises(SourceError, match=r"`--option api_key_env=REFUNDRY_NO_SUCH_VAR`: the "
                                             r"variable is not set"):
            deliver(src, tmp_path / "out.jsonl", stripe, api_key_env="REFUNDRY_NO_SUCH_VAR")
        assert stripe.requests == 0


def test_shopify_refund_create_with_idempotent_key_line_items_and_restock(tmp_path: Path) -> None:
    calc = HERE / "payloads" / "shopify" / "shopify_api_js_2024-04_refund_test_6.json"
    options = {"client_id": "acme", "jurisdiction": "US",
               "requested_at": "2024-04-03T09:00:00-05:00", "deliver": "true", "restock": "true",
               **FAST}
    with FakePlatform() as shopify:
        shopify.faults = ["500-after", "timeout"]
        summary = run(source="shopify", input_path=calc, sinks=["shopify-refund"],
                      out=tmp_path / "out.jsonl", rulesets=RULESETS,
                      options={**options, "base_url": shopify.url})
        assert summary.delivered == 1
        (made,) = shopify.refunds  # two faults, three tries, one refund
        assert made["input"] == {
            "orderId": "gid://shopify/Order/450789469",
            "note": made["input"]["note"], "notify": False,
            "transactions": [{"orderId": "gid://shopify/Order/450789469", "amount": "41.94",
                              "kind": "REFUND", "parentId": "gid://shopify/OrderTransaction/801038806",
                              "gateway": "bogus"}],
            "refundLineItems": [{"lineItemId": "gid://shopify/LineItem/518995019", "quantity": 1,
                                 "restockType": "RETURN"}]}
        assert made["input"]["note"].startswith("refundry shopify:order:450789469:suggested:")
        (line,) = lines(tmp_path / "out.jsonl")
        assert line["refund_id"] == made["id"] == "gid://shopify/Refund/901"


def test_delivery_is_recorded_on_the_case_and_survives_kill_9(tmp_path: Path) -> None:
    """`refundry run --db` with delivery, killed with SIGKILL mid-run and run again: every
    case has exactly one refund on the platform, one line, and is `processed` with its id."""
    from refundry import open_store

    n = 300
    src = requests_file(tmp_path / "in.jsonl", n)
    db = tmp_path / "records.db"
    with FakePlatform() as stripe:
        args = [sys.executable, "-m", "refundry.cli", "run", "--source", "jsonl", "--input",
                str(src), "--sink", "stripe-refund", "--out", str(tmp_path / "out.jsonl"),
                "--rulesets", str(RULESETS[0]), "--db", str(db), "--option", "deliver=true",
                "--option", f"base_url={stripe.url}", "--option", "backoff=0"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while len(stripe.refunds) < 60 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        assert 0 < len(stripe.refunds) < n
        again = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        paid = [r["metadata"]["refundry_request_id"] for r in stripe.refunds]
        assert sorted(paid) == sorted(f"case-{i}" for i in range(n))  # each once
        out = lines(tmp_path / "out.jsonl")
        assert len(out) == n and len({o["request_id"] for o in out}) == n
    with open_store(db, create=False) as store:
        cases = store.cases()
        assert len(cases) == n and {c.status for c in cases} == {"processed"}
        assert store.verify().ok
