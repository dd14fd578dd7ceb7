"""The CLI as an analyst uses it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import BASE_REQUEST, ROOT


def test_validate_the_shipped_rulesets(cli):
    r = cli("validate", "rulesets")
    assert r.code == 0, r.err
    assert r.out.startswith("ok: ")


def test_test_command_passes_with_full_coverage(cli):
    r = cli("test", "rulesets", "--coverage")
    assert r.code == 0, r.out + r.err
    assert "not covered" not in r.out
    last = r.out.strip().splitlines()[-1]
    passed, failed = [int(part.split()[0]) for part in last.split(",")]
    assert passed > 20 and failed == 0


def test_a_failing_yaml_test_exits_2_and_names_the_case(cli, tmp_path):
    suite = (ROOT / "rulesets/ecommerce/acme-eu.test.yaml").read_text()
    (tmp_path / "rules.yaml").write_text((ROOT / "rulesets/ecommerce/eu-consumer.yaml").read_text())
    (tmp_path / "acme.yaml").write_text((ROOT / "rulesets/ecommerce/acme-eu.yaml").read_text())
    (tmp_path / "acme.test.yaml").write_text(suite.replace('amount: "650.00"\n', 'amount: "640.00"\n', 1)
                                             .replace("amount: \"650.00\"\n\n", "", 0))
    r = cli("test", tmp_path, "--coverage")
    assert r.code == 2
    assert "FAIL " in r.out and "a large refund is held for review" in r.out
    assert r.out.strip().endswith("1 failed")
    assert "not covered" in r.out  # the EU rules have no tests in this folder


def test_evaluate_prints_the_decision(cli, tmp_path):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(BASE_REQUEST))
    r = cli("evaluate", path)
    assert r.code == 0
    d = r.json()
    assert d["outcome"] == "approve" and d["amount"] == "119.99"
    assert {x["name"]: x["due"] for x in d["deadlines"]} == {
        "period_ends": "2024-03-15", "refund_due_by": "2024-04-02", "goods_back_by": "2024-04-02"}


def test_evaluate_as_of_and_explain(cli, tmp_path):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(BASE_REQUEST))
    r = cli("evaluate", path, "--explain=json", "--as-of", "2024-03-15T12:00:00+00:00")
    assert r.code == 0
    out = r.json()
    assert out["decision"]["as_of"] == "2024-03-15T12:00:00+00:00"
    assert out["facts"]["window.withdrawal.end"] == "2024-03-15"
    assert any(rule["rule_id"] == "crd-excluded-goods" and rule["matched"] is False for rule in out["rules"])


def test_evaluate_an_invalid_request_exits_3_and_is_not_approved(cli, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**BASE_REQUEST, "amount": "lots"}))
    r = cli("evaluate", path)
    assert r.code == 3
    assert r.json()["outcome"] == "manual_review"
    assert "field `amount`" in r.err and "`lots`" in r.err


def test_evaluate_broken_json_names_line_and_column(cli, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "request_id": "x",\n  oops\n}')
    r = cli("evaluate", path)
    assert r.code == 3
    assert r.err.startswith(f"refundry: {path}:3:3: invalid json")


def test_missing_file_is_a_usage_error(cli):
    r = cli("evaluate", "no/such/file.json")
    assert r.code == 1 and "cannot read `no/such/file.json`" in r.err


def test_console_script_runs_outside_the_checkout_on_the_shipped_baselines(tmp_path):
    req = tmp_path / "req.json"
    req.write_text(json.dumps(BASE_REQUEST))
    exe = [sys.executable, "-m", "refundry.cli"]
    r = subprocess.run([*exe, "evaluate", str(req)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outcome"] == "approve"
    r = subprocess.run([*exe, "validate", "nowhere"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "nowhere: no such file or directory"


def test_usage_errors_exit_1_not_2(cli):
    import pytest

    for argv in (["no-such-command"], ["test", "rulesets", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            cli(*argv)
        assert exc.value.code == 1, argv
    # the request is optional to argparse (it may follow --explain), so evaluate says it
    missing = cli("evaluate")
    assert missing.code == 1 and "evaluate needs a request" in missing.err


@pytest.mark.parametrize("command", [
    "records show", "records replay", "records note", "records mark", "review approve",
    "review deny", "dispute open", "dispute resolve", "status", "receipt"])
def test_every_positional_id_is_described_in_help(capsys, command):
    from refundry.cli import main

    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "positional arguments:\n  ID " in text
    assert "the request_id of the refund request as it was evaluated" in " ".join(text.split())
