"""Masking: nothing sensitive reaches a store, checked on the masking functions and on the raw
bytes each store keeps (the SQLite file with its WAL, a PostgreSQL COPY of every table)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refundry.records.masking import luhn_ok, mask_request, mask_text, mask_value

from .conftest import make_request


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it pass Luhn."""
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


PAN = luhn_complete("453914880343646")  # 16 digits, passes Luhn
SALT = b"s" * 32


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok(PAN) and len(PAN) == 16


@pytest.mark.parametrize("sep", ["", " ", "-", "  ", " - ", "\n"])
def test_a_card_number_keeps_only_its_last_four(sep):
    written = sep.join(PAN[i:i + 4] for i in range(0, 16, 4))
    masked = mask_text(f"refund to {written} please")
    assert PAN[-4:] in masked and PAN[:12] not in masked.replace(sep, "")
    assert masked == f"refund to {sep.join(['****'] * 3)}{sep}{PAN[-4:]} please"


def test_digits_that_fail_luhn_or_are_short_are_kept():
    # No 13-19 digit stretch of this one passes Luhn (stretches are checked, see below).
    assert _luhn_windows("9007199254740993") == []
    assert mask_text("order 9007199254740993") == "order 9007199254740993"
    assert mask_text("call 030 1234 5678") == "call 030 1234 5678"


def test_a_card_number_with_digits_glued_on_is_still_masked():
    masked = mask_text(f"{PAN} 123")
    assert PAN[:12] not in masked.replace(" ", "").replace("*", "")
    # The price: a long number with a Luhn-valid stretch inside is masked too.
    assert mask_text("4111111111111112") == "411*********1112"


def test_a_security_code_in_text_is_removed():
    assert mask_text("CVV: 846, cvc2 1234, security code 777") == \
        "CVV: ***, cvc2 ****, security code ***"


def test_sensitive_keys_are_dropped_anywhere():
    value = mask_value({"facts": {"CVV": "846", "card": {"Security-Code": 1, "cvc2": "1"},
                                  "kept": [{"cid": "1234", "ok": True}]},
                        "diagnosis_codes": ["E11.9"], "pin": "0000"})
    assert value == {"facts": {"card": {}, "kept": [{"ok": True}]}}


def test_numbers_that_are_card_numbers_are_masked():
    assert mask_value({"n": int(PAN), "m": 12, "big": 9007199254740993}) == {
        "n": "*" * 12 + PAN[-4:], "m": 12, "big": "9007199254740993"}


def test_emails_and_addresses_become_stable_pseudonyms():
    req = make_request("r-1")
    req["customer"] = {"id": "c-1", "email": "Jane.Doe@Example.com", "address": "1 Main St, Berlin"}
    one = mask_request(req, SALT)["customer"]
    two = mask_request({**req, "customer": {**req["customer"], "email": " jane.doe@example.com",
                                            "address": "1  main st, berlin"}}, SALT)["customer"]
    assert one == two
    assert one["email"].endswith("@example.com") and "jane" not in one["email"].lower()
    assert one["address"].startswith("address-") and "Main" not in one["address"]
    assert mask_request(req, b"t" * 32)["customer"]["email"] != one["email"]


_LONG_RUN = re.compile(r"\d(?:[\s\-]{0,3}\d){12,}")


def _luhn_windows(text: str) -> list[str]:
    found = []
    for m in _LONG_RUN.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        for i in range(len(digits)):
            for n in range(13, 20):
                if i + n <= len(digits) and luhn_ok(digits[i:i + n]):
                    found.append(digits[i:i + n])
    return found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet="ab -:\n\t", max_size=4),
                          st.text(alphabet="0123456789", min_size=1, max_size=20),
                          st.sampled_from([PAN, "4111 1111 1111 1111", "4111-1111-1111-1111"])),
                max_size=8))
def test_no_card_number_survives_masking(parts):
    masked = mask_text("".join(parts))
    assert _luhn_windows(masked) == []
    assert mask_text(masked) == masked


# --- the raw bytes of each store ------------------------------------------------------------

CVV = "846"
DIAGNOSIS, PROCEDURE, SERVICE_DATE = "E11.9", "99213", "2023-07-14"


def _hostile_requests():
    card = make_request("r-card")
    card["note"] = f"please refund card {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]} cvv {CVV}"
    card["facts"] = {"cvv": CVV, "payment": {"card_number": "-".join(
        PAN[i:i + 4] for i in range(0, 16, 4)), "Security_Code": CVV}}
    card["customer"] = {"id": "c-1", "email": "jane.doe@example.com",
                        "address": "Hauptstrasse 5, 10115 Berlin"}
    care = make_request("r-care", industry="healthcare", jurisdiction="US-CA")
    care["healthcare"] = {"diagnosis_codes": [DIAGNOSIS], "procedure_codes": [PROCEDURE],
                          "service_date": SERVICE_DATE, "claim_id": "cl-1"}
    return card, care


def _forbidden() -> list[bytes]:
    spaced = " ".join(PAN[i:i + 4] for i in range(0, 16, 4))
    dashed = "-".join(PAN[i:i + 4] for i in range(0, 16, 4))
    return [s.encode() for s in (PAN, PAN[:12], spaced, dashed, PAN[:4] + " " + PAN[4:8],
                                 f"cvv {CVV}", '"cvv"', "Security_Code", DIAGNOSIS, PROCEDURE,
                                 SERVICE_DATE, "diagnosis_codes", "procedure_codes",
                                 "service_date", "jane.doe", "Hauptstrasse")]


def _without_hashes(raw: bytes) -> bytes:
    # Hashes and salts are random hex and may contain any digits; nothing else here is hex.
    return re.sub(rb"[0-9a-f]{24,}", b"", raw)


def test_nothing_sensitive_reaches_the_store(store, store_url, engine):
    for req in _hostile_requests():
        decision = engine.evaluate(req)
        store.record(req, decision, engine=engine, actor="alice")
    store.note("r-card", f"customer read out {PAN} and cvv {CVV} again", actor="bob")
    kept = store.case("r-card")
    assert kept.request["note"].endswith(f"{PAN[12:]} cvv ***")
    assert "cvv" not in kept.request["facts"]
    raw = _raw_store_bytes(store_url)
    assert b"r-card" in raw and b"r-care" in raw and b"cl-1" in raw  # the scan sees the data
    for needle in _forbidden():
        assert needle not in raw, needle
    assert CVV.encode() not in _without_hashes(raw)


def _raw_store_bytes(url: str) -> bytes:
    if url.startswith("postgresql://"):
        import psycopg

        from refundry.records.stores import _split_pg_url

        conninfo, schema = _split_pg_url(url)
        out = bytearray()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            for table in ("events", "ruleset_texts", "meta"):
                with conn.cursor().copy(f"COPY {table} TO STDOUT") as copy:
                    for chunk in copy:
                        out += bytes(chunk)
        return bytes(out)
    from pathlib import Path

    raw = b""
    for suffix in ("", "-wal", "-shm"):
        p = Path(url + suffix)
        if p.exists():
            raw += p.read_bytes()
    assert Path(url + "-wal").exists()  # the store is open: the WAL holds the recent writes
    return raw
