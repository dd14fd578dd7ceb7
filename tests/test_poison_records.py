"""Issue 12, defect 8 and the CLI half of 10: poison records become dead letters with their
reason, the run goes on, a re-run does not stop on the same line, and no input makes the CLI
print a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import BASE_REQUEST, RULESETS, refundry_cli


def _line(request_id: str, **extra: object) -> bytes:
    return json.dumps({**BASE_REQUEST, "request_id": request_id, **extra}).encode()


def _with(request_id: str, raw_json_field: str) -> bytes:
    """A request line with one more field written as raw JSON text (what json.dumps cannot)."""
    return _line(request_id)[:-1] + b', "facts": {"x": ' + raw_json_field.encode() + b"}}"


POISON = {
    "deep": (_with("deep", "[" * 1_500 + "]" * 1_500), "nests too deeply"),
    "surrogate": (_line("surrogate")[:-1] + b', "note": "a\\ud800b"}', "lone surrogate"),
    "digits": (_with("digits", "9" * 5_000), "a number of 5000 digits"),
    "latin1": (_line("latin1").replace(b"changed_mind", b"chang\xe9d_mind"), "is not utf-8"),
    "nan": (_with("nan", "NaN"), "`NaN` is not json"),
    "huge": (_line("huge", note="x" * 2_000_000), "is more than 1048576 bytes long"),
}


@pytest.fixture
def poisoned(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    lines = [_line("ok-1")]
    for raw, _ in POISON.values():
        lines += [raw, _line(f"ok-after-{len(lines)}")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_poison_records_become_dead_letters_and_the_run_goes_on(poisoned: Path):
    out = poisoned.with_name("out.jsonl")
    done = refundry_cli("run", "--source", "jsonl", "--input", poisoned, "--out", out,
                        "--rulesets", RULESETS)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    decided = [json.loads(x)["request_id"] for x in out.read_text().splitlines()]
    assert decided == ["ok-1"] + [f"ok-after-{2 * i + 1}" for i in range(len(POISON))]
    dead = [json.loads(x) for x in out.with_name("out.jsonl.dead-letter.jsonl").read_text().splitlines()]
    assert [d["ref"] for d in dead] == [f"in.jsonl:{2 * i + 2}" for i in range(len(POISON))]
    for letter, (_, reason) in zip(dead, POISON.values(), strict=True):
        assert reason in letter["reason"], letter

    again = refundry_cli("run", "--source", "jsonl", "--input", poisoned, "--out", out,
                         "--rulesets", RULESETS)
    assert again.returncode == 0, again.stderr
    assert f"skipped (done before) {1 + 2 * len(POISON)}" in again.stderr
    assert len(out.read_text().splitlines()) == 1 + len(POISON)


@pytest.mark.parametrize("name", sorted(POISON))
def test_evaluate_refuses_a_poison_file_in_one_line(tmp_path: Path, name: str):
    raw, reason = POISON[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(raw)
    done = refundry_cli("evaluate", path, "--rulesets", RULESETS)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and reason in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                   "2024-03-15T18:00:00+01:00\n", "2024-03-15"])
def test_evaluate_refuses_an_as_of_it_cannot_use(tmp_path: Path, as_of: str):
    path = tmp_path / "ok.json"
    path.write_bytes(_line("ok"))
    done = refundry_cli("evaluate", path, "--rulesets", RULESETS, "--as-of", as_of)
    assert done.returncode == 1 and "--as-of" in done.stderr and "Traceback" not in done.stderr


def test_diff_reports_poison_lines_and_goes_on(tmp_path: Path, poisoned: Path):
    done = refundry_cli("diff", RULESETS, RULESETS, "--requests", poisoned)
    assert "Traceback" not in done.stderr
    for i, (_, reason) in enumerate(POISON.values()):
        assert f"{poisoned}:{2 * i + 2}:" in done.stdout + done.stderr, done.stdout
        assert reason in done.stdout + done.stderr


def test_a_request_id_shaped_like_a_journal_key_does_not_skip_a_line(tmp_path: Path):
    batch, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_bytes(_line("ref:in.jsonl:2") + b"\n")
    first = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                         "--rulesets", RULESETS)
    assert first.returncode == 0, first.stderr
    with batch.open("ab") as fh:  # the rest of the batch arrives; the run is resumed
        fh.write(_line("second") + b"\n")
    again = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                         "--rulesets", RULESETS)
    assert again.returncode == 0, again.stderr
    assert "skipped (done before) 1" in again.stderr
    assert [json.loads(x)["request_id"] for x in out.read_text().splitlines()] == [
        "ref:in.jsonl:2", "second"]


def test_a_journal_from_before_the_key_prefixes_still_resumes(tmp_path: Path):
    batch, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_bytes(_line("old-1") + b"\n" + _line("new-1") + b"\n")
    out.with_name("out.jsonl.progress.jsonl").write_text(
        json.dumps({"key": "old-1", "ref": "in.jsonl:1", "outcome": "approve"}) + "\n")
    done = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                        "--rulesets", RULESETS)
    assert done.returncode == 0 and "skipped (done before) 1" in done.stderr, done.stderr
    assert [json.loads(x)["request_id"] for x in out.read_text().splitlines()] == ["new-1"]


def test_a_card_number_sent_as_a_number_stays_invalid_after_scrubbing(tmp_path: Path):
    # The scrubber masked the number 4111111111111111 into a string, which made the integer
    # transaction.id (invalid) a valid text id, and the request was approved.
    raw = _line("numeric-id").replace(b'"id": "o-1"', b'"id": 4111111111111111')
    batch, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch.write_bytes(raw + b"\n")
    done = refundry_cli("run", "--source", "jsonl", "--input", batch, "--out", out,
                        "--rulesets", RULESETS)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == ""
    dead = json.loads(out.with_name("out.jsonl.dead-letter.jsonl").read_text())
    assert "field `transaction.id`: must be a string" in dead["reason"]
    assert "4111111111111111" not in json.dumps(dead)
