"""Hypothesis runs the same examples on every run (CI and a newcomer's machine alike), so a
failure is reproducible and never a coin toss; ``HYPOTHESIS_PROFILE=explore`` draws new ones,
for a developer hunting bugs (what it finds becomes a fixed example or a fix)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
