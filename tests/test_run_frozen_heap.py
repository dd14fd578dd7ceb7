"""``refundry run`` in one process keeps what existed before the run (the engine and its
rulesets, the store, the plugins) out of the garbage collector's full collections while it
runs (``gc.freeze``, as a run with workers does: ``_collecting_rarely``), and gives it back
afterwards; a process that froze objects itself keeps its freeze. Timing is
bench/bench_run_parent.py's, never here."""

from __future__ import annotations

import gc
import threading
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
    mine = [["the process's own"]]  # a container the collector tracks, frozen below
    gc.freeze()
    before = gc.get_freeze_count()
    watch = _run(tmp_path)
    # Nothing frozen anew (frozen objects may still die by reference count, so the count may
    # fall a little), and nothing given back: the process's own object is still frozen (the
    # collector's generations, which ``get_objects`` lists, do not hold it).
    assert len(watch.frozen) == 2 and all(before - 1_000 < n <= before for n in watch.frozen)
    assert 0 < gc.get_freeze_count() <= before
    assert not any(o is mine for o in gc.get_objects())


def test_a_run_that_fails_gives_the_frozen_objects_back(tmp_path, unfrozen) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [request(1)])

    def failing(decision: Any, request: Any) -> None:
        raise RuntimeError("the store's disk is gone")

    with pytest.raises(RuntimeError, match="disk is gone"):
        run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            record=failing)
    assert gc.get_freeze_count() == 0


class _Meet:
    """An enricher that holds its run at its first request until the other run is there too,
    and, for the run that must end last, at its second until the other has ended."""

    def __init__(self, met: threading.Barrier, arrived: threading.Event,
                 wait_for: threading.Event | None) -> None:
        self.met, self.arrived, self.wait_for, self.calls = met, arrived, wait_for, 0

    @refundry.hookimpl
    def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                options: Mapping[str, str]) -> Mapping[str, Any] | None:
        self.calls += 1
        if self.calls == 1:
            self.arrived.set()
            self.met.wait(timeout=60)
        elif self.wait_for is not None and not self.wait_for.wait(timeout=60):
            raise RuntimeError("the other run never ended")
        return None


def test_runs_in_two_threads_give_the_collector_back_as_it_was_when_the_last_ends(
        tmp_path, unfrozen) -> None:
    # The second run starts while the first holds the collector and ends after it: the
    # setting it found is the first run's, not the process's.
    threshold = gc.get_threshold()
    met, first_in, second_in, first_done = (threading.Barrier(2), threading.Event(),
                                            threading.Event(), threading.Event())
    errors: list[BaseException] = []

    def one(name: str, n: int, meet: _Meet, done: threading.Event | None) -> None:
        try:
            src = write_jsonl(tmp_path / f"{name}.jsonl", [request(i) for i in range(n)])
            summary = run(source="jsonl", input_path=src, out=tmp_path / f"{name}-out.jsonl",
                          rulesets=[RULESETS], plugins=plugins_with(("meet", meet)))
            assert summary.decided == n
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
            met.abort()
        finally:
            if done is not None:
                done.set()

    first = threading.Thread(target=one, args=("a", 1, _Meet(met, first_in, None), first_done))
    second = threading.Thread(target=one, args=("b", 3, _Meet(met, second_in, first_done), None))
    first.start()
    assert first_in.wait(timeout=60)
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)
    assert not errors, errors
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
