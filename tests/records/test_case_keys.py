"""Request ids and amounts that look like card numbers (issue 12, defects 3 and 4).

A request id with a Luhn-valid digit run is shown masked, but two such ids are never one case:
the case key is the masked form plus a tag keyed with the store's salt. Money is never masked:
a refund of 1,000,000,000,009.00 stays that amount and needs two approvers.
"""

from __future__ import annotations

import json
import random

import pytest

from refundry.records.masking import luhn_ok, mask_text, scrub_id
from refundry.records.stores import open_store

from ..conftest import RULESETS
from .conftest import make_request


def luhn_ids(n: int, length: int = 13, seed: int = 12) -> list[str]:
    """``n`` different ids of ``length`` digits that pass Luhn and end alike (so their masked
    forms are all equal)."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        head = "".join(rng.choice("0123456789") for _ in range(length - 5))
        out.add(next(head + d + "1111" for d in "0123456789" if luhn_ok(head + d + "1111")))
    return sorted(out)


def test_ids_that_mask_alike_are_different_cases(store, record):
    ids = luhn_ids(3)
    assert len({mask_text(i) for i in ids}) == 1  # masking alone made them one case before
    for i in ids:
        record(make_request(i))
    cases = store.cases()
    assert len(cases) == 3 and len({c.request_id for c in cases}) == 3
    for i in ids:
        case = store.case(i)  # found by the id as submitted
        assert i not in case.request_id and case.request_id.startswith(mask_text(i) + "~")
        assert case.request["request_id"] == case.request_id == case.decision["request_id"]
    assert store.verify().ok


def test_scrubbed_ids_do_not_collide_and_keep_plain_ids():
    ids = [str(i) for i in luhn_ids(2000, seed=7)]
    assert len({scrub_id(i, b"k" * 32) for i in ids}) == len(ids)
    assert scrub_id("order-17", b"k") == "order-17"
    once = scrub_id(ids[0], b"k")
    assert scrub_id(once, b"k") == once  # a scrubbed id is its own key
    assert scrub_id(ids[0], b"other") != once  # keyed: another store, another tag


def test_run_db_records_every_request_whose_ids_mask_alike(cli, tmp_path):
    """Before, the second id masked like the first was 'already recorded with different content'
    and `refundry run --db` stopped at it, every time it was re-run."""
    ids = luhn_ids(40, length=16, seed=3)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(make_request(i, amount=str(10 + n))) + "\n"
                              for n, i in enumerate(ids)))
    db = tmp_path / "r.db"
    args = ["run", "--source", "jsonl", "--input", source, "--out", tmp_path / "out.jsonl",
            "--rulesets", RULESETS, "--db", db, "--by", "batch"]
    assert cli(*args).code == 0
    assert cli(*args).code == 0  # a re-run skips them all
    store = open_store(db, create=False)
    try:
        assert len(store.cases()) == 40 and store.verify().ok
    finally:
        store.close()
    out = (tmp_path / "out.jsonl").read_text()
    assert len(out.splitlines()) == 40 and not any(i in out for i in ids)


def test_a_huge_amount_is_kept_as_money_and_needs_two_approvers(store, record):
    amount = "1000000000009.00"
    req = make_request("big", client_id="acme", amount=amount)
    case = record(req, actor="carol")
    assert case.request["amount"] == amount and case.required_approvals == 2
    assert case.request["transaction"]["amount"] == "1000000000019.00"
    assert "*" not in json.dumps(case.request["items"])
    store.review("big", actor="bob", approve=True)
    case = store.review("big", actor="dave", approve=True)
    assert case.status == "approved" and store.verify().ok


def test_a_card_number_in_a_money_field_is_still_masked():
    from refundry.records.masking import request_money_paths, scrub

    assert scrub({"amount": "4111111111111111"}, request_money_paths())["amount"] == \
        "************1111"
    # Only the request's own money fields are money; a key named amount in facts is free text.
    kept = scrub({"facts": {"amount": "4111111111111111.00"}}, request_money_paths())
    assert kept["facts"]["amount"].startswith("*" * 12)


@pytest.mark.parametrize("text", [
    "the security code is 123", "CVV: 846", "cvc2 1234", "cvn 123", "CVD=999",
    "verification code: 4321", "card verification value 555", "csc#123",
])
def test_security_code_phrases_are_removed(text):
    code = text.split()[-1].split(":")[-1].split("=")[-1].split("#")[-1]
    masked = mask_text(text)
    assert code not in masked and masked.endswith("*" * len(code)), masked


@pytest.mark.parametrize("key", ["card_cvv", "cardCVV", "cvn", "CVD", "verification_code",
                                 "cvc", "CSC", "cvv2", "card-verification-value", "Security Code"])
def test_security_code_keys_are_dropped(key):
    from refundry.records.masking import mask_value

    assert mask_value({"facts": {key: "123", "kept": 1}}) == {"facts": {"kept": 1}}


@pytest.mark.parametrize("text", ["4111.1111.1111.1111", "4111/1111/1111/1111",
                                  "4111_1111_1111_1111", "4111,1111,1111,1111",
                                  "4111     1111 1111 1111", "4111\u200b1111\u200b1111\u200b1111",
                                  "(4111) 1111-1111-1111", "４１１１１１１１１１１１１１１１",
                                  "4\u00ad1\u20601\ufeff1 1111 1111 1111"])
def test_any_separator_is_seen_through(text):
    masked = mask_text(text)
    digits = "".join(c for c in masked if c.isdecimal())
    assert len(digits) == 4, masked


def test_evaluate_prints_no_card_number(cli, tmp_path):
    pan = "4111 1111 1111 1111"
    req = make_request(f"order {pan}", note=f"card {pan}, security code is 123")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(req))
    r = cli("evaluate", path, "--rulesets", RULESETS)
    assert r.code == 0 and "1111 1111 1111 1111" not in r.out and "code is 123" not in r.out
    assert r.json()["request_id"].startswith("order **** **** **** 1111~")


def test_run_without_a_store_keeps_ids_that_mask_alike_apart(cli, tmp_path):
    ids = luhn_ids(5, length=16, seed=5)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(make_request(i)) + "\n" for i in ids))
    args = ["run", "--source", "jsonl", "--input", source, "--out", tmp_path / "out.jsonl",
            "--rulesets", RULESETS]
    assert cli(*args).code == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len({json.loads(x)["request_id"] for x in lines}) == 5  # none taken for a duplicate
    key = tmp_path / "out.jsonl.progress.jsonl.key"
    assert key.is_file() and key.stat().st_mode & 0o077 == 0  # the tag key, owner-only
    assert cli(*args).code == 0  # the re-run tags alike, so it skips all five
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5
