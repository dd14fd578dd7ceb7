"""Shared helpers: run the installed `refundry` command the way a user does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULESETS = ROOT / "rulesets"


def refundry_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "refundry"
    command = [str(exe)] if exe.exists() else [shutil.which("refundry") or "refundry"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          timeout=600)
