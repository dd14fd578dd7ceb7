"""``refundry run`` in one process keeps what existed before the run (the engine and its
rulesets, the store, the plugins) out of the garbage collector's full collections while it
runs (``gc.freeze``, as a run with workers does: ``_collecting_rarely``), and gives it back
afterwards; a process that froze objects itself keeps its freeze. Timing is
bench/bench_run_parent.py's, never here."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.app.runner import run

from .test_plugins import RULESETS, plugins_with, request, write_jsonl


class _Watch:
    """An enricher that notes how many objects the collector has frozen when it is asked."""

    def __init__(self) -> None:
        self.frozen: list[int] = []

    @refundry.hookimpl
    def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                options: Mapping[str, str]) -> Mapping[str, Any] | None:
        self.frozen.append(gc.get_freeze_count())
        return None


def _run(tmp_path: Path, workers: int = 1) -> _Watch:
    watch = _Watch()
    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  plugins=plugins_with(("watch", watch)), workers=workers)
    assert summary.decided == 2
    return watch


@pytest.fixture
def unfrozen() -> Any:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_exists_before_a_run_is_frozen_while_it_runs_and_given_back_after(
        tmp_path, unfrozen) -> None:
    threshold = gc.get_threshold()
    watch = _run(tmp_path)
    assert len(watch.frozen) == 2 and all(n > 1_000 for n in watch.frozen)  # the engine's
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold


def test_a_process_that_froze_objects_itself_keeps_its_freeze(tmp_path, unfrozen) -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    watch = _run(tmp_path)
    assert watch.frozen == [before, before]  # nothing frozen anew, nothing given back
    assert gc.get_freeze_count() == before


def test_a_run_that_fails_gives_the_frozen_objects_back(tmp_path, unfrozen) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [request(1)])

    def failing(decision: Any, request: Any) -> None:
        raise RuntimeError("the store's disk is gone")

    with pytest.raises(RuntimeError, match="disk is gone"):
        run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            record=failing)
    assert gc.get_freeze_count() == 0
