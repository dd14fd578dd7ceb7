"""Issue 12, defect 10: `refundry report` output is safe to open and safe to write."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from .conftest import BASE_REQUEST, RULESETS


@pytest.fixture
def db(tmp_path: Path, cli) -> Path:
    """A store whose client ids are spreadsheet formulas, as a hostile source could send."""
    store = tmp_path / "records.db"
    for i, client in enumerate(["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-3", "@SUM(A1)", "plain"]):
        req = tmp_path / f"r{i}.json"
        req.write_text(json.dumps({**BASE_REQUEST, "request_id": f"r-{i}", "client_id": client}))
        done = cli("evaluate", req, "--rulesets", RULESETS, "--record", "--db", store)
        assert done.code == 0, done.err
    return store


def test_csv_cells_never_start_a_formula(cli, db: Path, tmp_path: Path):
    out = tmp_path / "report.csv"
    done = cli("report", "--db", db, "--format", "csv", "--out", out)
    assert done.code == 0, done.err
    rows = list(csv.reader(io.StringIO(out.read_text())))
    keys = {row[1] for row in rows if row[0] == "approval_rate_by_client"}
    assert "'=HYPERLINK(\"http://x\",\"y\")" in keys and "'+1+2" in keys and "plain" in keys
    for row in rows:
        assert not any(cell[:1] in ("=", "+", "-", "@") for cell in row), row


def test_report_never_writes_through_a_planted_tmp_symlink(cli, db: Path, tmp_path: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "report.html"
    (tmp_path / "report.html.tmp").symlink_to(victim)
    done = cli("report", "--db", db, "--out", out)
    assert done.code == 0, done.err
    assert victim.read_text() == "keep me"
    assert out.read_text().lower().startswith("<!doctype html>") and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.glob("*report*")) == ["report.html", "report.html.tmp"]


@pytest.mark.parametrize("where", ["missing-folder/r.html", ".", "/proc/refundry/r.html"])
def test_a_bad_out_path_is_one_line_not_a_traceback(cli, db: Path, tmp_path: Path, where: str):
    out = where if where.startswith("/") else str(tmp_path / where)
    done = cli("report", "--db", db, "--out", out)
    assert done.code == 1 and done.err.startswith("refundry: cannot write `"), done.err
    assert done.err.count("\n") == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
