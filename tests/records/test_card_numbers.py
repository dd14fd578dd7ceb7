"""Card numbers in any format, in any free field, never reach a file (issue 12, defect 2).

Hypothesis writes card numbers (13-19 digits, Luhn-valid) with any separators (dots, slashes,
underscores, commas, runs of spaces, zero-width and other format characters, parentheses,
fullwidth or Arabic-Indic digits) into every free field of a request, one field per request;
``refundry run --db`` then records them, and every file the product writes is read back:
the SQLite file and its WAL, the sink output, the journal, the dead letters, the export and the
report in each format. None may hold any of those card numbers, nor any Luhn-valid run of
13-19 digits (separators ignored) outside the hashes.

In CI: 20 batches of 50 formats, every one in each of the 12 free fields, as a key and as an
integer of ``facts``, and in each of 3 fields that make the request a dead letter (1,000
formats, 4,000 requests); ``REFUNDRY_LONG=1`` runs 10 times as many.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refundry.cli import main
from refundry.records.masking import luhn_ok
from refundry.records.stores import open_store

from ..conftest import BASE_REQUEST, RULESETS

LONG = os.environ.get("REFUNDRY_LONG") == "1"
BATCHES = 200 if LONG else int(os.environ.get("REFUNDRY_CARD_BATCHES", "20"))
PER_BATCH = 50

SEPARATORS = ["", " ", "  ", "   ", "-", " - ", ".", "/", "_", ",", ", ", "\t", "\n", "\u200b",
              "\u200c", "\u200d", "\u2060", "\ufeff", "\u00a0", "\u2009", "\u202f", "\u3000",
              "\u00ad", "*", "#", ":", "|", "·", "—", ")(", ") (", "'", '"', "\\"]
PREFIXES = ["4", "51", "55", "2221", "34", "37", "6011", "65", "35", "62", "36", "30"]
FULLWIDTH = {str(d): chr(0xFF10 + d) for d in range(10)}
ARABIC = {str(d): chr(0x0660 + d) for d in range(10)}


def luhn_complete(prefix: str) -> str:
    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


@st.composite
def card_in_text(draw) -> tuple[str, str]:
    """(the card number's digits, a text holding it in some format)."""
    length = draw(st.integers(13, 19))
    prefix = draw(st.sampled_from(PREFIXES))
    middle = draw(st.text("0123456789", min_size=length - len(prefix) - 1,
                          max_size=length - len(prefix) - 1))
    pan = luhn_complete(prefix + middle)
    cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=6)))
    groups = [pan[a:b] for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
    digits = draw(st.sampled_from(["ascii"] * 6 + ["fullwidth", "arabic"]))
    table = {"fullwidth": FULLWIDTH, "arabic": ARABIC}.get(digits)
    if table:
        groups = ["".join(table[c] for c in g) for g in groups]
    seps = [draw(st.sampled_from(SEPARATORS)) for _ in groups[1:]]
    text = groups[0] + "".join(s + g for s, g in zip(seps, groups[1:], strict=True))
    if draw(st.booleans()):
        text = f"({text})"
    before = draw(st.sampled_from(["", "card ", "PAN=", "refund to ", "n°", "#"]))
    after = draw(st.sampled_from(["", " please", " exp 12/29", ";", " cvv 123"]))
    return pan, before + text + after


def _set(req: dict, path: tuple, value: str) -> None:
    target = req
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(key, str) else target[key]
    target[path[-1]] = value


# Every field a person or a source system can put free text in. A request carries the card
# number in all of them at once; the three that make a request invalid get a request each (it
# becomes a dead letter, with the value quoted in its errors).
FREE_FIELDS: list[tuple] = [
    ("request_id",), ("client_id",), ("note",), ("refund_to",), ("customer", "id"),
    ("customer", "email"), ("customer", "address"), ("transaction", "id"),
    ("transaction", "payment_method", "type"), ("items", 0, "sku"), ("facts", "free"),
    ("facts", "nested", "deeper"),
]
INVALIDATING: list[tuple] = [("jurisdiction",), ("currency",), ("reason",)]


def _requests(batch: list[tuple[str, str]], n: int) -> list[dict]:
    out = []
    for i, (pan, text) in enumerate(batch):
        req = copy.deepcopy(BASE_REQUEST)
        for path in FREE_FIELDS:
            _set(req, path, text)
        req["request_id"] = f"{text} r{n}x{i}"  # unique: an id seen twice is one case
        req["customer"]["email"] = f"{text}@example.com"
        # The card number as a key of the free facts, and as an integer.
        req["facts"].update({text: "x", "as_number": int(pan)})
        out.append(req)
        for j, path in enumerate(INVALIDATING):
            bad = copy.deepcopy(BASE_REQUEST)
            bad["request_id"] = f"b{n}-f{i}-{j}"
            _set(bad, path, text)
            out.append(bad)
    return out


_BATCH = itertools.count()
_DIGIT_RUN = re.compile(r"\d(?:[\W_]*\d){12,}")
_HEX = re.compile(r"(?:sha256:)?[0-9a-f]{16,}")


# Every decimal digit of any script, as its ASCII digit: one translate over a whole file, where
# a test of each character was a third of this test's time.
_TO_ASCII = {cp: str(unicodedata.decimal(chr(cp))) for cp in range(0x110000)
             if chr(cp).isdecimal()}


def _ascii_digits(text: str) -> str:
    return text.translate(_TO_ASCII)


def _luhn_runs(text: str) -> list[str]:
    """Every 13-19 digit stretch, separators ignored, that passes Luhn."""
    found = []
    for m in _DIGIT_RUN.finditer(_HEX.sub("x", text)):
        digits = re.sub(r"\D", "", m.group(0))
        for end in range(13, len(digits) + 1):
            for length in range(13, min(19, end) + 1):
                if luhn_ok(digits[end - length:end]):
                    found.append(digits[end - length:end])
    return found


def _leaks(path: Path, pans: set[str], *, text_file: bool) -> list[str]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    text = _ascii_digits(raw)
    squeezed = re.sub(r"[^0-9A-Za-z]", "", text)
    out = [f"{path.name}: card {p}" for p in pans if p in squeezed]
    if text_file:
        out += [f"{path.name}: luhn-valid run {r}" for r in _luhn_runs(text)]
    return out


@settings(max_examples=BATCHES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.lists(card_in_text(), min_size=PER_BATCH, max_size=PER_BATCH))
def test_no_card_number_reaches_any_file(tmp_path_factory, capsys, batch):
    work = tmp_path_factory.mktemp("cards")
    requests = _requests(batch, next(_BATCH))
    source = work / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests),
                      encoding="utf-8")
    db = work / "records.db"
    open_store(db).close()
    holder = open_store(db, create=False)  # keeps the WAL on disk while the run writes
    try:
        assert main(["run", "--source", "jsonl", "--input", str(source), "--out",
                     str(work / "out.jsonl"), "--rulesets", str(RULESETS), "--db", str(db),
                     "--by", "batch"]) == 0
        assert main(["records", "export", "--db", str(db), "-o", str(work / "export.jsonl")]) == 0
        for fmt in ("json", "csv", "html"):
            assert main(["report", "--db", str(db), "--format", fmt, "--out",
                         str(work / f"report.{fmt}")]) == 0
        files = sorted(p for p in work.iterdir() if p.is_file() and p.name != "in.jsonl")
        names = {p.name for p in files}
        assert {"records.db-wal", "out.jsonl", "out.jsonl.progress.jsonl",
                "out.jsonl.dead-letter.jsonl", "export.jsonl"} <= names
        pans = {pan for pan, _ in batch}
        leaks = [leak for p in files
                 for leak in _leaks(p, pans, text_file=not p.name.startswith("records.db"))]
        assert leaks == []
        # The run decided or dead-lettered every request: nothing was lost on the way.
        summary = [ln for ln in (work / "out.jsonl.progress.jsonl").read_text().splitlines() if ln]
        assert len(summary) == len(requests)
        assert holder.checkpoint().count == PER_BATCH  # every valid request is a case
    finally:
        holder.close()
        capsys.readouterr()
