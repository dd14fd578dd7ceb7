"""Every sample in tests/data/rulesets_bad is rejected with exit 3, at the right
file:line:column, in one line per error, without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import DATA, ROOT

BAD = DATA / "rulesets_bad"

EXPECTED = {
    "01-bad-yaml.yaml": ("8:1", "the `{` opened on line 7 is not closed with `}` (or a `,` is missing) before line 8"),
    "02-duplicate-key.yaml": ("6:1", "duplicate key `version`"),
    "03-wrong-type.yaml": ("2:10", "`version` must be string, not `1`"),
    "04-unknown-key.yaml": ("8:5", "rule `r1`: unknown key `efect`; did you mean `effect`?"),
    "05-missing-required.yaml": ("7:5", "rule `r1`: missing required key `message`"),
    "06-duplicate-rule-id.yaml": ("12:9", "rule `r1`: duplicate rule id `r1`"),
    "07-unknown-field.yaml": ("8:19", "unknown field `transaction.delivery_date`"),
    "08-unknown-enum-value.yaml": ("10:43", "`changed_mnd` is not a value of `reason`"),
    "09-wrong-literal-type.yaml": ("8:31", "`amount` is a number; `abc` is not"),
    "10-unknown-window.yaml": ("10:20", "unknown window `withdrawl`; did you mean `withdrawal`? (windows: withdrawal)"),
    "11-bad-period.yaml": ("9:13", "`14 fortnights` is not a period"),
    "12-extends-missing.yaml": ("5:10", "extends `no-such-base`"),
    "13-extends-cycle.yaml": ("6:10", "extends forms a cycle: loop-a -> loop-a"),
    "14-floor-rule-override.yaml": ("7:9", "overrides statutory floor rule `crd-withdrawal-in-period` of `eu-consumer`"),
    "15-floor-window-shortened.yaml": ("8:13", "window `withdrawal` undercuts the statutory floor of `eu-consumer`"),
    "16-floor-calendar-undercut.yaml": ("6:1", "window `withdrawal` undercuts the statutory floor of `eu-consumer`"),
    "17-same-effective-from_bad": ("3:17", "versions 1.0.0 and 1.1.0 both take effect on 2024-01-01"),
    "18-ne-on-flag.yaml": ("8:37", "`ne` on true/false field `evidence.receipt`"),
    "19-ordering-on-text.yaml": ("8:32", "`customer.id` is text; it cannot be compared with `gt`"),
    "20-floor-without-citation.yaml": ("8:5", "a statutory floor rule needs a `citation`"),
    "21-bad-semver.yaml": ("2:10", "`version` `1.0` is not well formed"),
    "22-unknown-jurisdiction.yaml": ("5:17", "`XX` is not a known country or subdivision code"),
    "23-deadline-from-not-a-date.yaml": ("13:37", "`customer.id` is not a time field of the request"),
    "24-extends-cycle-two_bad": ("4:10", "extends forms a cycle: cyc-a -> cyc-b -> cyc-a"),
    "25-client-floor-rule.yaml": ("11:5", "rule `acme-no-returns`: a client ruleset cannot declare a statutory floor"),
    "26-client-floor-window.yaml": ("11:5", "window `goodwill`: a client ruleset cannot declare a statutory floor"),
    "27-pause-not-a-date.yaml": ("11:59", "`customer.id` is not a time field of the request"),
    "28-pause-bad-cap.yaml": ("14:198", "rule `r1`: `6 moons` is not a period"),
}


def test_every_sample_has_an_expectation():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_ruleset_is_rejected_at_the_right_place(cli, name):
    where, message = EXPECTED[name]
    r = cli("validate", BAD / name)
    assert r.code == 3, r.out + r.err
    lines = r.err.strip().splitlines()
    assert r.out == ""
    hit = [line for line in lines if message in line]
    assert hit, lines
    assert f":{where}: " in hit[0], hit[0]
    assert hit[0].split(":")[0].endswith((name, ".yaml"))


def test_directory_loads_skip_bad_samples_but_named_ones_load(cli, tmp_path):
    (tmp_path / "x_bad.yaml").write_text("ruleset: [")
    good = (ROOT / "rulesets/ecommerce/eu-consumer.yaml").read_text()
    (tmp_path / "eu.yaml").write_text(good)
    assert cli("validate", tmp_path).code == 0
    assert cli("validate", tmp_path / "x_bad.yaml").code == 3


def test_all_errors_are_reported_at_once(cli, tmp_path):
    (tmp_path / "a.yaml").write_text((BAD / "06-duplicate-rule-id.yaml").read_text())
    (tmp_path / "b.yaml").write_text((BAD / "09-wrong-literal-type.yaml").read_text())
    r = cli("validate", tmp_path)
    assert r.code == 3
    lines = r.err.strip().splitlines()
    assert any("a.yaml:12:9: rule `r1`: duplicate rule id" in line for line in lines)
    assert any("b.yaml:8:31: rule `r1`: `amount` is a number" in line for line in lines)
    # both files claim the same scope, which is an error of its own
    assert any("both cover ecommerce in `FR`" in line for line in lines)
    assert len(lines) == 3


def test_no_traceback_from_the_installed_command():
    r = subprocess.run([sys.executable, "-m", "refundry.cli", "validate", str(BAD / "01-bad-yaml.yaml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
