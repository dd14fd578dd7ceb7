"""`refundry run --db` records a group of decisions in one transaction (``record_many``)
before it writes any of them to a sink or the journal. A store that fails partway through a
group loses nothing and half-writes nothing; a request the store refuses stops the run as
``record`` did, after the requests before it, with nothing after it recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from refundry.app.runner import StoreRecorder, run
from refundry.plugins import Plugins, Sink, hookimpl
from refundry.records.events import RecordError, RecordStore

from .conftest import make_request


def write_input(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(make_request(f"g-{i:04d}")) + "\n" for i in range(n)))
    return path


def journalled(tmp: Path) -> list[str]:
    path = tmp / "out.jsonl.progress.jsonl"
    return [json.loads(line)["key"] for line in path.read_text().splitlines()] \
        if path.exists() else []


def written(tmp: Path) -> list[str]:
    return [json.loads(line)["request_id"]
            for line in (tmp / "out.jsonl").read_text().splitlines()]


def run_into(store: RecordStore, engine: Any, src: Path, tmp: Path) -> Any:
    return run(source="jsonl", input_path=src, out=tmp / "out.jsonl", engine=engine,
               record=StoreRecorder(store, engine, "batch"), id_key=store.salt)


def test_a_store_failing_in_a_group_writes_nothing_of_it_and_a_rerun_completes(
        store, engine, tmp_path, monkeypatch) -> None:
    src = write_input(tmp_path / "in.jsonl", 500)
    real = store.record_many
    calls: list[int] = []

    def failing(items):
        calls.append(len(items))
        got = real(items)  # the group's events are inserted, then the store fails
        if len(calls) == 2:
            raise RecordError("records store: the event was not written: disk full")
        return got

    monkeypatch.setattr(store, "record_many", failing)
    with pytest.raises(RecordError, match="disk full"):
        run_into(store, engine, src, tmp_path)
    recorded = sorted(c.request_id for c in store.cases())
    # The first group is whole everywhere; of the second nothing reached the store, the sinks
    # or the journal.
    assert recorded and len(recorded) == calls[0] < 500
    assert sorted(journalled(tmp_path)) == recorded == sorted(written(tmp_path))
    assert store.verify().ok

    monkeypatch.setattr(store, "record_many", real)
    summary = run_into(store, engine, src, tmp_path)
    assert summary.decided == 500 - len(recorded) and summary.skipped == len(recorded)
    assert len(store.cases()) == 500 == len(list(store.events()))  # one event per request
    assert sorted(journalled(tmp_path)) == sorted(written(tmp_path)) == \
        sorted(c.request_id for c in store.cases())
    assert store.verify().ok


def test_a_refused_request_stops_the_run_after_the_ones_before_it(store, engine,
                                                                  tmp_path) -> None:
    other = make_request("g-0005", amount="12.00")  # the same id with other content
    store.record(other, engine.evaluate(other), engine=engine, actor="earlier")
    src = write_input(tmp_path / "in.jsonl", 20)
    for attempt in range(2):  # a re-run stops at the same request and records nothing twice
        with pytest.raises(RecordError, match="`g-0005` is already recorded with different"):
            run_into(store, engine, src, tmp_path)
        before = [f"g-{i:04d}" for i in range(5)]
        assert journalled(tmp_path) == before == written(tmp_path)[:5] and \
            len(written(tmp_path)) == 5, attempt
        # Nothing after the refused one was recorded, as when each was recorded in turn.
        assert sorted(c.request_id for c in store.cases()) == [*before, "g-0005"]
        assert len(list(store.events())) == 6
    assert store.verify().ok


def test_two_workers_give_every_request_the_history_one_worker_gives_it(
        store_url, engine, tmp_path, monkeypatch) -> None:
    """A group is recorded before the next is looked up, with worker processes too: before,
    groups in flight in the pool were looked up without the records of those before them."""
    from refundry.plugins.history import plugins_with_history
    from refundry.records import stores
    from refundry.records.history import History

    from .conftest import PG_ENV, RULESETS, drop_pg_schema
    from .test_history_batched import SALT, requests, second_url

    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in requests()))
    facts = []
    try:
        for workers, url in ((1, store_url), (2, second_url(store_url))):
            with stores.open_store(url) as store:
                summary = run(source="jsonl", input_path=src, out=tmp_path / f"o{workers}.jsonl",
                              rulesets=[RULESETS], workers=workers,
                              plugins=plugins_with_history(store), id_key=store.salt,
                              # The run with workers indexes its groups as it records
                              # them, as `refundry run --db` does; the other leaves it to sync.
                              record=StoreRecorder(store, engine, "batch",
                                                   index=History(store) if workers > 1 else None))
                assert summary.decided == len(requests())
                facts.append({c.request_id: c.request["facts"]["history"]
                              for c in store.cases()})
    finally:
        if store_url.startswith("postgresql://"):
            drop_pg_schema(os.environ[PG_ENV], store_url.rsplit("schema=", 1)[1] + "b")
    assert facts[0] == facts[1]
    # What the sinks were handed (with workers, the request as this process parsed it) is the
    # same too.
    assert (tmp_path / "o1.jsonl").read_text() == (tmp_path / "o2.jsonl").read_text()
    assert facts[1]["again"]["requests_by_customer_30d"] >= 2  # an earlier group's record counted


def test_two_workers_record_byte_for_byte_what_one_process_records(
        store_url, engine, tmp_path, monkeypatch) -> None:
    """The workers mask and encode each decision's event: the chain the parent then builds
    from them is the one a single process builds, body and hash, and verifies."""
    from refundry.plugins.history import plugins_with_history
    from refundry.records import stores
    from refundry.records.history import History

    from .conftest import PG_ENV, RULESETS, StepClock, drop_pg_schema
    from .test_history_batched import SALT, requests, second_url

    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    odd = [make_request("odd-1", reason="defective",
                        customer={"id": "c-ü 4111 1111 1111 1111 \U0001f600",
                                  "email": "Ünï@example.com"}),
           make_request("odd-2", customer={"id": "c-\U0001f600", "address": "Straße 1"},
                        facts={"n": 12345678901234567, "text": "4111111111111111 \U0001f600"}),
           make_request("odd-3", client_id="acme", amount="600")]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [*requests(), *odd]))
    chains, texts = [], []
    try:
        for workers, url in ((1, store_url), (2, second_url(store_url))):
            with stores.open_store(url, clock=StepClock()) as store:
                summary = run(source="jsonl", input_path=src, out=tmp_path / f"o{workers}.jsonl",
                              rulesets=[RULESETS], workers=workers,
                              plugins=plugins_with_history(store), id_key=store.salt,
                              record=StoreRecorder(store, engine, "batch", index=History(store)))
                assert summary.decided > len(requests()) and not summary.dead_letters
                assert store.verify().ok
                chains.append([(e.seq, e.request_id, e.type, e.at, e.actor, e.hash, e.body)
                               for e in store.events()])
                texts.append([store.ruleset_text(d) for _id, _v, d in store.ruleset_versions()])
    finally:
        if store_url.startswith("postgresql://"):
            drop_pg_schema(os.environ[PG_ENV], store_url.rsplit("schema=", 1)[1] + "b")
    assert len(chains[0]) == summary.decided
    assert chains[0] == chains[1]  # the hashes cover each body's text and the one before
    assert texts[0] == texts[1]
    # The workers made the jsonl sink's lines (``line_for``): the output and the journal are
    # what one process writes, to the byte.
    for name in ("o{}.jsonl", "o{}.jsonl.progress.jsonl"):
        assert (tmp_path / name.format(1)).read_bytes() == (tmp_path / name.format(2)).read_bytes()


class _Capture:
    """A listener of ``decision_written`` and a sink that keeps what it is handed."""

    def __init__(self, sink: bool, listen: bool) -> None:
        self.name = f"capture-{sink}-{listen}"
        self.sink, self.listen = sink, listen
        self.handed: list[tuple[str, Any, Any, str]] = []

    @hookimpl
    def refundry_sinks(self) -> list[Sink]:
        return [Sink("capture", lambda path, options: self)] if self.sink else []

    def write(self, decision: Any, request: Any, ref: str) -> None:
        self.handed.append(("sink", decision, request, ref))

    def close(self) -> None:
        pass

    def listened(self, decision: Any, request: Any, ref: str, sinks: Any) -> None:
        if self.listen:
            self.handed.append(("listener", decision, request, ref))


def _with(plugins: Plugins, capture: _Capture) -> Plugins:
    class Listener:
        @hookimpl
        def refundry_decision_written(self, decision, request, ref, sinks) -> None:
            capture.listened(decision, request, ref, sinks)

    plugins.pm.register(capture, name=capture.name)
    plugins.pm.register(Listener(), name=capture.name + "-listener")
    return plugins


@pytest.mark.parametrize(("sink", "listen"), [(True, False), (False, True)])
def test_with_workers_sinks_and_listeners_are_handed_the_objects_one_process_hands_them(
        engine, tmp_path, monkeypatch, sink, listen) -> None:
    """The workers send a request back only where the parent needs it: a sink that makes no
    line ahead, or a ``decision_written`` listener, is handed what one process hands it."""
    from refundry.plugins.history import plugins_with_history
    from refundry.records import stores
    from refundry.records.history import History

    from .conftest import RULESETS
    from .test_history_batched import SALT, requests

    monkeypatch.setattr(stores, "new_salt", lambda: SALT)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in requests()[:120]))
    handed = []
    for workers in (1, 2):
        capture = _Capture(sink, listen)
        with stores.open_store(tmp_path / f"s{workers}.db") as store:
            run(source="jsonl", input_path=src, out=tmp_path / f"o{workers}",
                sinks=["jsonl", "capture"] if sink else ["jsonl"], rulesets=[RULESETS],
                workers=workers, plugins=_with(plugins_with_history(store), capture),
                id_key=store.salt, record=StoreRecorder(store, engine, "batch",
                                                       index=History(store)))
        assert len(capture.handed) == 120 and all(h[2] is not None for h in capture.handed)
        handed.append(capture.handed)
    assert handed[0] == handed[1]


def _no_line(decision: Any, ref: str) -> str:
    raise ValueError("no line for this one")


class _Lineless:
    """A sink whose line a worker cannot make: ``write`` is asked, with the request."""

    line_for = staticmethod(_no_line)

    def __init__(self) -> None:
        self.written: list[tuple[str, bool]] = []

    def write(self, decision: Any, request: Any, ref: str) -> None:
        self.written.append((decision.request_id, request is not None))

    def write_line(self, request_id: str, line: str) -> None:
        raise AssertionError("never made")

    def close(self) -> None:
        pass


def test_a_sink_line_no_worker_could_make_is_written_by_the_sink(engine, tmp_path) -> None:
    from refundry.plugins.history import plugins_with_history
    from refundry.records import stores

    from .conftest import RULESETS

    writer = _Lineless()

    class Plugin:
        @hookimpl
        def refundry_sinks(self) -> list[Sink]:
            return [Sink("lineless", lambda path, options: writer)]

    src = write_input(tmp_path / "in.jsonl", 30)
    with stores.open_store(tmp_path / "s.db") as store:
        plugins = plugins_with_history(store)
        plugins.pm.register(Plugin(), name="lineless")
        summary = run(source="jsonl", input_path=src, out=tmp_path / "o", sinks=["lineless"],
                      rulesets=[RULESETS], workers=2, plugins=plugins, id_key=store.salt,
                      record=StoreRecorder(store, engine, "batch"))
        assert summary.decided == 30 == len(store.cases())
    assert writer.written == [(f"g-{i:04d}", True) for i in range(30)]
