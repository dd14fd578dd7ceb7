"""`refundry test` and `evaluate` as an analyst uses them on a client layer of their own: a
single test file, the shipped baselines added under it, a per-case listing, a filter, condition
coverage, and a wrong expected outcome reported at its line."""

from __future__ import annotations

import json
import shutil

from .conftest import ROOT

SHIPPED = ROOT / "rulesets" / "ecommerce"


def client_layer(tmp_path):
    """GadgetCo's layer and its tests in a folder of their own, without the baselines."""
    folder = tmp_path / "gadgetco"
    folder.mkdir()
    shutil.copy(SHIPPED / "gadgetco-ca.yaml", folder)
    shutil.copy(SHIPPED / "gadgetco-ca.test.yaml", folder)
    return folder


def test_a_single_test_file_runs_with_the_baselines_added(cli, tmp_path):
    folder = client_layer(tmp_path)
    r = cli("test", folder / "gadgetco-ca.test.yaml")
    assert r.code == 0, r.out + r.err
    assert r.out.strip().splitlines()[-1] == "6 passed, 0 failed"


def test_a_ruleset_file_runs_the_test_file_of_its_name(cli, tmp_path):
    folder = client_layer(tmp_path)
    r = cli("test", folder / "gadgetco-ca.yaml")
    assert r.code == 0, r.out + r.err
    assert r.out.strip().endswith("6 passed, 0 failed")


def test_no_baselines_opts_out_for_test_validate_and_evaluate(cli, tmp_path, request_json):
    folder = client_layer(tmp_path)
    for args in (("test", folder / "gadgetco-ca.test.yaml"), ("validate", folder / "gadgetco-ca.yaml")):
        r = cli(*args, "--no-baselines")
        assert r.code == 3 and "extends `us-ca-consumer`" in r.err, r.err
        assert cli(*args).code == 0
    req = tmp_path / "req.json"
    req.write_text(json.dumps(_gadgetco_request(request_json)))
    r = cli("evaluate", req, "--rulesets", folder / "gadgetco-ca.yaml", "--no-baselines")
    assert r.code == 3 and "extends `us-ca-consumer`" in r.err


def _gadgetco_request(req: dict) -> dict:
    req.update(client_id="gadgetco", jurisdiction="US-CA", currency="USD", amount="200.00",
               requested_at="2024-07-31T10:00:00-07:00", reason="changed_mind")
    req["transaction"] = {"id": "t-7", "amount": "200.00",
                          "purchased_at": "2024-07-01T10:00:00-07:00"}
    req["disclosures"] = {"refund_policy_posted": True, "refund_policy": "exchange_only"}
    req["items"] = [{"sku": "PHONE", "quantity": 1, "unit_price": "200.00", "condition": "opened"}]
    return req


def test_evaluate_with_a_client_layer_file_adds_the_baselines(cli, tmp_path, request_json):
    folder = client_layer(tmp_path)
    req = tmp_path / "req.json"
    req.write_text(json.dumps(_gadgetco_request(request_json)))
    r = cli("evaluate", req, "--rulesets", folder / "gadgetco-ca.yaml")
    assert r.code == 0, r.err
    d = r.json()
    assert d["outcome"] == "approve" and d["amount"] == "170.00"
    assert [layer["id"] for layer in d["ruleset"]["layers"]] == ["us-ftc", "us-ca-consumer", "gadgetco-ca"]


def test_verbose_lists_every_case_with_its_time_and_run_filters(cli, tmp_path):
    folder = client_layer(tmp_path)
    r = cli("test", folder, "-v", "--run", "posted policy")
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    cases = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert len(cases) == 2 and lines[-1] == "2 passed, 0 failed"
    for line in cases:
        status, ms, unit = line.split()[:3]
        assert status == "PASS" and float(ms) >= 0 and unit == "ms"
        assert "posted policy" in line and "gadgetco-ca.test.yaml:" in line
    r = cli("test", folder, "--run", "no case is called this")
    assert r.code == 0 and r.out.strip() == "0 passed, 0 failed"
    bad = cli("test", folder, "--run", "(")
    assert bad.code == 1 and "--run `(` is not a regular expression" in bad.err


def test_coverage_is_per_condition_too(cli, tmp_path):
    folder = client_layer(tmp_path)
    r = cli("test", folder, "--coverage", "--run", "posted")
    assert r.code == 0, r.err
    # the three cases about posting all give `changed_mind`: `reason in [...]` is never false,
    # and none is above USD 200: the large-refund rule and its one condition are not covered
    assert "coverage: 3/4 rules, 6/11 conditions seen both true and false" in r.out
    assert ("gadgetco-ca.yaml:65:11: `gadgetco-ca` rule `gadgetco-large-refund-review`: "
            "condition `amount gt 200` was never true") in r.out
    assert ("gadgetco-ca.yaml:28:11: `gadgetco-ca` rule `ca-1723-posted-policy-governs`: "
            "condition `reason in [changed_mind, other]` was never false") in r.out
    full = cli("test", folder, "--coverage")
    assert "coverage: 4/4 rules, 11/11 conditions" in full.out, full.out
    assert cli("test", folder, "--coverage", "--json").json()["coverage"]["conditions"] == 11


def test_a_wrong_expected_outcome_lists_the_valid_ones_at_its_line(cli, tmp_path):
    folder = client_layer(tmp_path)
    tests = folder / "gadgetco-ca.test.yaml"
    text = tests.read_text()
    tests.write_text(text.replace("expect: {outcome: deny, rules: [gadgetco-posted-policy-expired]}",
                                  "expect: {outcome: denied, rules: [gadgetco-posted-policy-expired]}"))
    r = cli("test", tests)
    assert r.code == 3
    line = next(i for i, t in enumerate(tests.read_text().splitlines(), 1) if "denied" in t)
    assert (f"gadgetco-ca.test.yaml:{line}:23: `denied` is not an outcome; expected one of: "
            "approve, deny, manual_review; did you mean `deny`?") in r.err


def test_an_unknown_key_in_a_case_is_reported_at_the_key(cli, tmp_path):
    folder = client_layer(tmp_path)
    tests = folder / "gadgetco-ca.test.yaml"
    tests.write_text(tests.read_text().replace("    expect: {outcome: approve, amount: \"200.00\"}",
                                               "    expct: {outcome: approve, amount: \"200.00\"}"))
    r = cli("test", tests)
    assert r.code == 3
    assert "gadgetco-ca.test.yaml:30:5: a case needs `name`, `request` and `expect`" in r.err


def test_a_ruleset_file_without_a_test_file_says_so(cli, tmp_path):
    folder = client_layer(tmp_path)
    (folder / "gadgetco-ca.test.yaml").unlink()
    r = cli("test", folder / "gadgetco-ca.yaml")
    assert r.code == 0 and r.out.strip() == "0 passed, 0 failed"
    assert "no test file found" in r.err
