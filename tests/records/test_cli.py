"""The records commands as a user runs them, on real files in a working folder."""

from __future__ import annotations

import json
import sqlite3

import pytest

from refundry.cli import main

from .conftest import RULESETS, make_request


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run ``refundry`` in-process from an empty folder holding request files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFUNDRY_DB", raising=False)

    def run(*args: str) -> Run:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)
    return run


def write(tmp_path, name: str, request: dict) -> str:
    (tmp_path / name).write_text(json.dumps(request), encoding="utf-8")
    return name


def test_evaluate_record_review_verify(cli, tmp_path):
    big = write(tmp_path, "big.json", make_request("big", client_id="acme", amount="600"))
    r = cli("evaluate", big, "--rulesets", RULESETS, "--record", "--by", "alice")
    assert r.code == 0 and r.json()["outcome"] == "manual_review"
    assert "recorded: request `big` is manual_review" in r.err
    assert (tmp_path / "refundry.db").exists()  # the default store
    r = cli("evaluate", big, "--rulesets", RULESETS, "--record", "--by", "alice")
    assert r.code == 0 and "nothing appended" in r.err

    r = cli("review", "list")
    assert r.code == 0 and r.out.startswith("big  manual_review") and "approvals 0/2" in r.out
    r = cli("review", "approve", "big", "--by", "alice")
    assert r.code == 1 and "`alice` submitted request `big`" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert cli("review", "approve", "big", "--by", "bob", "--reason", "ok").code == 0
    r = cli("review", "approve", "big", "--by", "bob")
    assert r.code == 1 and "already approved" in r.err
    r = cli("review", "approve", "big", "--by", "carol")
    assert r.code == 0 and "big  approved" in r.out
    r = cli("records", "mark", "big", "refunded", "--by", "ops")
    assert r.code == 1 and "needs processed" in r.err

    r = cli("records", "verify")
    assert r.code == 0 and r.out.startswith("ok: 3 events")
    shown = cli("records", "show", "big").json()
    assert [e["type"] for e in shown["events"]] == ["evaluated", "reviewed", "approved"]
    assert cli("records", "list", "--json").json()[0]["status"] == "approved"


def test_verify_names_the_broken_event_and_exits_2(cli, tmp_path):
    for i in range(3):
        cli("evaluate", write(tmp_path, f"r{i}.json", make_request(f"r-{i}")), "--rulesets",
            RULESETS, "--record", "--by", "alice")
    head = cli("records", "checkpoint").json()
    assert head["count"] == 3
    conn = sqlite3.connect(tmp_path / "refundry.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("UPDATE events SET body = replace(body, '119.99', '999.99') WHERE seq = 2")
    r = cli("records", "verify")
    assert r.code == 2 and r.out.startswith("broken: event 2:")
    conn.execute("DELETE FROM events WHERE seq >= 2")
    # The history index, derived from the chain up to its watermark, still remembers the cut
    # events (issue 12); without it and without an anchor a clean cut would look whole.
    r = cli("records", "verify")
    assert r.code == 2 and "history_index has a row for request `r-1`" in r.out
    conn.execute("DROP TABLE history_index")
    conn.execute("DROP TABLE history_meta")
    conn.close()
    r = cli("records", "verify")
    assert r.code == 0 and "not anchored" in r.out
    r = cli("records", "verify", "--expect-head", head["head"], "--json")
    assert r.code == 2 and "checkpoint head" in r.json()["problem"]


def test_verify_in_worker_processes_prints_what_one_process_prints(cli, tmp_path, monkeypatch):
    """`--workers 2`: ranges of one event here, each read and checked in a worker."""
    from refundry.records import events

    monkeypatch.setattr(events, "VERIFY_RANGE", 1)
    for i in range(3):
        cli("evaluate", write(tmp_path, f"r{i}.json", make_request(f"r-{i}")), "--rulesets",
            RULESETS, "--record", "--by", "alice")
    whole = cli("records", "verify", "--workers", "2")
    assert whole.code == 0 and whole.out == cli("records", "verify", "--workers", "1").out
    conn = sqlite3.connect(tmp_path / "refundry.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET actor = 'mallory' WHERE seq = 3")
    conn.close()
    broken = cli("records", "verify", "--workers", "2", "--json")
    assert broken.code == 2 and broken.json()["broken_seq"] == 3
    assert broken.out == cli("records", "verify", "--workers", "1", "--json").out


def test_export_replay_and_dispute(cli, tmp_path):
    req = write(tmp_path, "r.json", make_request("r-1"))
    cli("evaluate", req, "--rulesets", RULESETS, "--record", "--by", "alice")
    r = cli("records", "replay", "r-1")
    assert r.code == 0 and r.json()["same"] is True

    r = cli("dispute", "open", "r-1", "--by", "cs", "--reason", "express shipping",
            "--rulesets", RULESETS)
    assert r.code == 0 and r.json()["status"] == "disputed"
    assert r.json()["dispute"]["current"]["outcome"] == "approve"
    r = cli("dispute", "resolve", "r-1", "--by", "lead", "--resolution", "upheld",
            "--explanation", "Express shipping is not refunded.")
    assert r.code == 0 and r.json()["status"] == "approved"

    assert cli("records", "export", "-o", "out.jsonl").code == 0
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["evaluated", "disputed", "dispute_resolved"]
    assert all(json.loads(x)["hash"].startswith("sha256:") for x in lines)


def test_readers_do_not_create_a_store(cli, tmp_path):
    r = cli("records", "verify", "--db", "typo.db")
    assert r.code == 1 and r.err.strip() == "refundry: no records store at `typo.db`"
    assert not (tmp_path / "typo.db").exists()
    r = cli("records", "settings", "--four-eyes-above", "250", "--by", "admin")
    assert r.code == 0 and r.json() == {"four_eyes_above": "250"}
    r = cli("records", "verify")
    assert r.code == 0 and r.out.startswith("ok: 1 events")


def test_user_errors_are_one_line(cli, tmp_path):
    cli("evaluate", write(tmp_path, "r.json", make_request("r-1")), "--rulesets", RULESETS,
        "--record", "--by", "alice")
    r = cli("records", "show", "nope")
    assert r.code == 1 and r.err.strip() == "refundry: no case for request `nope`"
    r = cli("records", "list", "--db", "mysql://x")
    assert r.code == 1 and "is not a records store" in r.err
    (tmp_path / "junk.db").write_text("not a database " * 100, encoding="utf-8")
    r = cli("records", "verify", "--db", "junk.db")
    assert r.code == 1 and "cannot open records store `junk.db`" in r.err
    bad = make_request("bad")
    bad["amount"] = "lots"
    r = cli("evaluate", write(tmp_path, "bad.json", bad), "--rulesets", RULESETS, "--record")
    assert r.code == 3 and "recorded" not in r.err


def test_a_damaged_store_is_reported_not_crashed_on(cli, tmp_path):
    cli("evaluate", write(tmp_path, "r.json", make_request("r-1")), "--rulesets", RULESETS,
        "--record", "--by", "alice")
    conn = sqlite3.connect(tmp_path / "refundry.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET body = '{not json' WHERE seq = 1")
    conn.close()
    r = cli("records", "show", "r-1")
    assert r.code == 1 and "event 1 cannot be read: the store is damaged" in r.err
    r = cli("records", "verify")
    assert r.code == 2 and "event 1 does not match its hash" in r.out


def test_the_commands_work_on_either_store(cli, tmp_path, store_url):
    big = write(tmp_path, "big.json", make_request("big", client_id="acme", amount="600"))
    r = cli("evaluate", big, "--rulesets", RULESETS, "--record", "--db", store_url, "--by", "alice")
    assert r.code == 0 and "recorded: request `big` is manual_review" in r.err
    assert cli("review", "approve", "big", "--by", "bob", "--db", store_url).code == 0
    r = cli("review", "approve", "big", "--by", "carol", "--db", store_url)
    assert r.code == 0 and "big  approved" in r.out
    r = cli("records", "verify", "--db", store_url)
    assert r.code == 0 and r.out.startswith("ok: 3 events")
    assert cli("records", "replay", "big", "--db", store_url).json()["same"] is True


def test_review_list_says_why_and_since_when(cli, tmp_path):
    big = write(tmp_path, "big.json", make_request("big", client_id="acme", amount="600"))
    assert cli("evaluate", big, "--rulesets", RULESETS, "--record", "--by", "alice").code == 0
    since = cli("records", "show", "big").json()["events"][0]["at"].split(".")[0].rstrip("Z") + "Z"
    r = cli("review", "list")
    assert r.code == 0
    assert (f"approvals 0/2  since {since}  why: acme-large-refund-review (Refunds above 500 are "
            "checked by a second person at Acme.); refundry.floor-held (") in r.out, r.out
    listed = cli("review", "list", "--json").json()[0]
    assert listed["waiting_since"] == since
    assert listed["waiting_for"][0].startswith("acme-large-refund-review (")


def test_records_list_shows_the_amount_of_an_overturned_denial(cli, tmp_path):
    late = make_request("late")
    late["transaction"]["delivered_at"] = "2023-01-01T10:00:00+01:00"  # long past the period
    name = write(tmp_path, "late.json", late)
    r = cli("evaluate", name, "--rulesets", RULESETS, "--record", "--by", "alice")
    assert r.code == 0 and r.json()["outcome"] == "deny" and r.json()["amount"] == "0.00"
    assert cli("dispute", "open", "late", "--by", "cs", "--reason", "late delivery",
               "--rulesets", RULESETS).code == 0
    assert cli("dispute", "resolve", "late", "--by", "lead", "--resolution", "overturned",
               "--explanation", "We refund you in full.", "--amount", "109.99").code == 0
    r = cli("records", "list")
    assert r.out.startswith("late  approved  109.99 EUR"), r.out
    listed = cli("records", "list", "--json").json()[0]
    assert listed["amount"] == "109.99" and listed["decided_amount"] == "0.00"


def test_verify_reports_a_watermark_that_is_not_a_number_in_one_line(cli, tmp_path):
    for i in range(2):
        cli("evaluate", write(tmp_path, f"r{i}.json", make_request(f"r-{i}")), "--rulesets",
            RULESETS, "--record", "--by", "alice")
    assert cli("records", "verify").code == 0  # the index exists and is in step
    conn = sqlite3.connect(tmp_path / "refundry.db", isolation_level=None)
    conn.execute("UPDATE history_meta SET value = '2\nx' WHERE key = 'seq'")
    conn.close()
    r = cli("records", "verify")
    assert r.code == 2 and r.out.startswith("broken:"), (r.out, r.err)
    assert "watermark `2\\nx` is not an event number" in r.out
    assert len(r.out.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_verify_reports_a_watermark_of_non_ascii_digits_in_one_line(cli, tmp_path):
    cli("evaluate", write(tmp_path, "r.json", make_request("r-0")), "--rulesets", RULESETS,
        "--record", "--by", "alice")
    conn = sqlite3.connect(tmp_path / "refundry.db", isolation_level=None)
    conn.execute("UPDATE history_meta SET value = '\u00b2' WHERE key = 'seq'")  # isdigit(), not int()
    conn.close()
    r = cli("records", "verify")
    assert r.code == 2 and "is not an event number" in r.out and "Traceback" not in r.err
