"""The contract kit (``refundry.plugins.testing``) passes a plugin that keeps the contract and
names every way a plugin can break it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.plugins import Sink, Source, SourceRecord, idempotency_key
from refundry.plugins.testing import (
    SAMPLE_REQUEST,
    ContractError,
    check_plugin,
    check_sink,
    check_source,
    contract_tests,
)


class Ledger:
    """A sink that keeps the contract: one line per case, the key in it, executed skipped."""

    def __init__(self, path: Path | None, *, idempotent: bool = True, guard: bool = True) -> None:
        assert path is not None
        self.path, self.idempotent, self.guard = path, idempotent, guard
        self.seen = set(path.read_text().split()) if path.exists() else set()

    def write(self, decision: Any, request: Any, ref: str) -> None:
        key = idempotency_key(request.request_id)
        if self.guard and any(p.request_id == request.request_id for p in request.prior_refunds):
            return
        if self.idempotent and key in self.seen:
            return
        self.seen.add(key)
        with self.path.open("a") as fh:
            fh.write(f"{key} {decision.amount}\n")

    def close(self) -> None:
        pass


def _read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        yield SourceRecord(f"{path.name}:{n}", request=json.loads(line))


def make_plugin(*, read: Any = _read, sink_kwargs: dict[str, Any] | None = None,
                sources: Any = None) -> object:
    kwargs = sink_kwargs or {}

    class Plugin:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Any]:
            return sources if sources is not None else [Source("good", read, "test")]

        @refundry.hookimpl
        def refundry_sinks(self) -> list[Sink]:
            return [Sink("ledger", lambda path, options: Ledger(path, **kwargs), "test")]

    return Plugin()


SAMPLE_FILE = Path(__file__).resolve().parent / "data" / "contract" / "in.jsonl"  # SAMPLE_REQUEST


@pytest.fixture
def data(tmp_path: Path) -> Path:
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(SAMPLE_REQUEST) + "\n")
    return f


def test_a_plugin_that_keeps_the_contract_passes(data: Path) -> None:
    plugins = check_plugin(make_plugin(), name="good")
    (rec,) = check_source(plugins, "good", data, {})
    assert rec.kind == "request"
    assert check_sink(plugins, "ledger", {}) == "refundry-contract-1 12.34\n"


# What a third-party adapter writes in its own tests: one line, three tests.
TestGoodContract = contract_tests(make_plugin(), name="good", source="good", input=SAMPLE_FILE,
                                  sink="ledger")


def test_a_wrong_object_from_a_hook_is_named() -> None:
    with pytest.raises(ContractError, match=r"plugin `bad`: refundry_sources returned a dict"):
        check_plugin(make_plugin(sources=[{"name": "x"}]), name="bad")


def test_a_read_with_the_wrong_signature_is_named(data: Path) -> None:
    def read(path: Path, options: Mapping[str, str], extra: int = 0) -> Iterator[SourceRecord]:
        yield from _read(path, options)

    plugins = check_plugin(make_plugin(read=read), name="bad")
    with pytest.raises(ContractError, match=r"read\(\) takes 3 parameters, not \(path, options\)"):
        check_source(plugins, "good", data, {})


def test_an_invalid_request_or_a_wrong_record_is_named(data: Path) -> None:
    def read(path: Path, options: Mapping[str, str]) -> Iterator[Any]:
        yield SourceRecord("a", request={**SAMPLE_REQUEST, "amount": "-1"})
        yield {"ref": "b"}

    plugins = check_plugin(make_plugin(read=read), name="bad")
    with pytest.raises(ContractError) as info:
        check_source(plugins, "good", data, {})
    assert info.value.problems == [
        "source `good`: `a`: not a valid request: a: field `amount`: must not be negative",
        "source `good`: yielded a dict, not a SourceRecord"]


def test_refs_that_change_between_reads_are_named(data: Path) -> None:
    calls = iter(range(100))

    def read(path: Path, options: Mapping[str, str]) -> Iterator[SourceRecord]:
        yield SourceRecord(f"r{next(calls)}", context="a payment")

    plugins = check_plugin(make_plugin(read=read), name="bad")
    with pytest.raises(ContractError, match=r"refs differ between two reads"):
        check_source(plugins, "good", data, {})


def test_a_sink_that_writes_twice_is_named() -> None:
    plugins = check_plugin(make_plugin(sink_kwargs={"idempotent": False}), name="bad")
    with pytest.raises(ContractError, match=r"the same decision written twice is not written once"):
        check_sink(plugins, "ledger", {})


def test_a_sink_that_pays_an_executed_refund_again_is_named() -> None:
    plugins = check_plugin(make_plugin(sink_kwargs={"guard": False}), name="bad")
    with pytest.raises(ContractError, match=r"wrote an instruction for a case already refunded"):
        check_sink(plugins, "ledger", {})
