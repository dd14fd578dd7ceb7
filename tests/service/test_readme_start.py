"""The README's start, as written there: ``refundry serve`` on SQLite from an empty folder, then
its ``curl`` example, run by curl with the token the first start printed."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess

import pytest

from ..conftest import ROOT
from .test_serve_cli import shown_tokens, start

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_block(after: str) -> str:
    """The first ``sh`` block after the heading ``after``."""
    section = README[README.index(after):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_start_and_curl_example_work(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    start_command = _readme_block("## As a service").strip()
    assert start_command == ".venv/bin/refundry serve"
    proc, url = start(tmp_path)  # the same command, on a free port instead of 8080
    try:
        shown = shown_tokens(proc)
        example = _readme_block("In a second\nterminal")
        curl = " ".join(ln.rstrip("\\").strip() for ln in example.splitlines()
                        if not ln.startswith("SERVICE_TOKEN="))
        curl = curl.replace("http://127.0.0.1:8080", url)
        curl = curl.replace("$SERVICE_TOKEN", shown["service"])
        out = subprocess.run(shlex.split(curl), cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60)
        decision = json.loads(out.stdout)
        assert (decision["outcome"], decision["currency"]) == ("approve", "EUR")
        # The sentence right after the example, not any line of the README that names the
        # same decision (the start's figure once went stale while the top's stayed right).
        said = re.search(r"answers the decision \((.*?)\)", README[README.index(example):], re.S)
        assert said is not None and said.group(1).replace("\n", " ") == \
            f"`{decision['outcome']}`, {decision['amount']} {decision['currency']}"
        assert (tmp_path / "refundry.db").exists()  # recorded on SQLite by default
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
