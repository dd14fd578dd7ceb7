"""The batch runner behind ``refundry run``: source -> enrichers -> engine -> sinks.

Exactly-once across interruptions: after every sink has written a decision, its ``request_id``
is appended to a progress journal (JSON lines, flushed per record). A re-run of the same input
skips what the journal lists; the sinks and the dead-letter file skip keys they already hold,
which covers a kill between a sink's write and the journal line. A torn last line (a kill in the
middle of a write) is dropped when a file is re-opened.

A record that cannot become a valid request (the source says why, an enricher raised, or
``parse_request`` refuses it) goes to the dead-letter file with the reason; it is never
evaluated, so it can never be approved. A sink or source that raises stops the run with the
plugin named; everything written before it stays consistent and a re-run continues.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import attrs

from refundry.core.engine import Engine
from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.models import OUTCOMES, Decision, RefundRequest
from refundry.core.request import parse_request, printable_text
from refundry.plugins import (
    JsonLinesWriter,
    PluginError,
    Plugins,
    SinkWriter,
    SourceError,
    SourceRecord,
)

CHUNK = 200  # records per task sent to a worker process: big enough to amortise pickling

Recorder = Callable[[Decision, RefundRequest], Mapping[str, Any] | None]
"""Appends a decision to the approval-records store and returns the event it appended. A
recorder with a ``commit()`` method batches: what it appended is durable only once ``commit``
returns, so the runner journals those requests only then."""

RECORD_BATCH = 200  # decisions per records transaction: one fsync instead of 200


@attrs.define
class Summary:
    """What a run did. ``skipped`` were journalled by an earlier run of the same input;
    ``duplicates`` repeat a ``request_id`` seen earlier in this run (one case, decided once)."""

    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))
    dead_letters: int = 0
    skipped: int = 0
    duplicates: int = 0
    plugin_errors: list[str] = attrs.field(factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    out: str | None = None
    dead_letter: str | None = None
    journal: str | None = None

    @property
    def decided(self) -> int:
        return sum(self.outcomes.values())

    @property
    def records(self) -> int:
        return self.decided + self.dead_letters + self.skipped + self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "decided": self.decided,
                "dead_letters": self.dead_letters, "skipped": self.skipped,
                "duplicates": self.duplicates, "plugin_errors": list(self.plugin_errors),
                "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                "out": self.out, "dead_letter": self.dead_letter, "journal": self.journal}


class Progress:
    """Told of each record; the default says nothing (library use)."""

    def start(self) -> None:
        pass

    def advance(self, summary: Summary) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainProgress(Progress):
    """One line every few seconds, for logs and pipes where a bar would be noise."""

    def __init__(self, stream: TextIO, every: float = 2.0) -> None:
        self.stream, self.every = stream, every
        self._t0 = self._last = 0.0

    def start(self) -> None:
        self._t0 = self._last = time.monotonic()

    def advance(self, summary: Summary) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            n = summary.records
            print(f"refundry run: {n} records, {n / max(now - self._t0, 1e-9):.0f}/s",
                  file=self.stream, flush=True)


class BarProgress(Progress):
    """A rich progress bar on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(TextColumn("refundry run"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}/s"), TimeElapsedColumn(),
                                 console=Console(file=stream), transient=True)
        self._task = self._bar.add_task("run", total=None, rate="0")
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._bar.start()

    def advance(self, summary: Summary) -> None:
        n = summary.records
        rate = n / max(time.monotonic() - self._t0, 1e-9)
        self._bar.update(self._task, completed=n, rate=f"{rate:.0f}")

    def stop(self) -> None:
        self._bar.stop()


@attrs.frozen
class _Result:
    ref: str
    request_id: str | None
    request: RefundRequest | None
    decision: Decision | None
    errors: tuple[str, ...] = ()


def _evaluate_one(engine: Engine, ref: str, data: Mapping[str, Any]) -> _Result:
    # Only an id a dead-letter line can hold (UTF-8, bounded): a source may hand over anything.
    rid = printable_text(data.get("request_id"))
    try:
        req = parse_request(data, source=ref)
    except InvalidRequest as exc:
        return _Result(ref, rid, None, None, tuple(str(e) for e in exc.errors))
    return _Result(ref, rid, req, engine.evaluate(req))


# A worker process builds its engine once, in the pool initializer; this is that process's only
# copy, never touched by the parent.
_worker_engine: Engine | None = None


def _worker_init(paths: list[str], backend: str) -> None:
    global _worker_engine
    _worker_engine = Engine.from_path(paths, backend=backend)


def _worker_chunk(chunk: list[tuple[str, dict[str, Any]]]) -> list[_Result]:
    assert _worker_engine is not None
    return [_evaluate_one(_worker_engine, ref, data) for ref, data in chunk]


def journal_path(out: Path | None, input_path: Path) -> Path:
    """The journal lives next to the output (or next to the input when writing to stdout)."""
    base = out if out is not None else input_path
    return base.with_name(base.name + ".progress.jsonl")


def sink_path(name: str, out: Path | None, options: Mapping[str, str], *,
              several: bool) -> Path | None:
    """Where sink ``name`` writes: ``--option out.NAME=PATH``, else ``--out`` when it is the only
    sink, else ``OUT.NAME`` so that two sinks never write into one file."""
    explicit = options.get(f"out.{name}")
    if explicit:
        return Path(explicit)
    if out is None or not several:
        return out
    return out.with_name(f"{out.name}.{name}")


def dead_letter_path(out: Path | None) -> Path:
    return out.with_name(out.name + ".dead-letter.jsonl") if out is not None else Path("dead-letter.jsonl")


def run(*, source: str, input_path: Path | str, sinks: Sequence[str] = ("jsonl",),
        out: Path | str | None = None, dead_letter: Path | str | None = None,
        journal: Path | str | None = None, options: Mapping[str, str] | None = None,
        workers: int = 1, rulesets: Sequence[str | Path] | None = None,
        engine: Engine | None = None, backend: str = "compiled",
        plugins: Plugins | None = None, record: Recorder | None = None,
        progress: Progress | None = None) -> Summary:
    """Run one input through a source, the enrichers, the engine and the sinks.

    Give ``rulesets`` (paths; needed for ``workers > 1``, each worker loads them) or an
    ``engine``. ``record``, when given, appends each decision to the approval-records store
    and returns the event, which ``refundry_record_written`` listeners are then told of.
    Raises ``SourceError`` for a run that cannot start and ``PluginError`` naming the plugin
    that broke it; a ``KeyboardInterrupt`` returns the summary with ``interrupted`` set.
    """
    plugins = plugins or Plugins()
    options = dict(options or {})
    input_path = Path(input_path)
    out_path = Path(out) if out not in (None, "-") else None
    dl_path = Path(dead_letter) if dead_letter else dead_letter_path(out_path)
    jr_path = Path(journal) if journal else journal_path(out_path, input_path)
    if workers < 1:
        raise SourceError("--workers must be at least 1")
    if engine is None:
        if not rulesets:
            raise SourceError("give rulesets or an engine")
        # Loaded here even for several workers: invalid rulesets fail now, with every error,
        # not as a broken process pool.
        engine = Engine.from_path([str(p) for p in rulesets], backend=backend)
    elif workers > 1 and not rulesets:
        raise SourceError("several workers need ruleset paths, not an engine object")
    src = plugins.source(source)
    chosen_sinks = [plugins.sink(name) for name in sinks]
    if not input_path.exists():
        raise SourceError(f"cannot read `{input_path}`: no such file")
    # Pull the first record before creating any file: a source that cannot start (a missing
    # option) or a sink that cannot open leaves no journal or dead-letter file behind.
    records = _primed(_guarded(src.read(input_path, options), src.plugin, src.name))
    writers: list[tuple[str, str, SinkWriter]] = []
    try:
        for s in chosen_sinks:
            try:
                path = sink_path(s.name, out_path, options, several=len(chosen_sinks) > 1)
                writers.append((s.name, s.plugin, s.open(path, options)))
            except RefundryError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise PluginError(s.plugin, f"sink `{s.name}` cannot open: "
                                  f"{type(exc).__name__}: {exc}") from None
    except BaseException:
        for _, _, writer in writers:
            writer.close()
        raise

    summary = Summary(out=str(out_path) if out_path else None, dead_letter=str(dl_path),
                      journal=str(jr_path))
    progress = progress or Progress()
    jr = JsonLinesWriter(jr_path, "key")
    done = {_journal_key(k) for k in jr.seen}
    dl = JsonLinesWriter(dl_path, "ref")
    pool: ProcessPoolExecutor | None = None
    t0 = time.monotonic()
    commit = getattr(record, "commit", None)
    awaiting: list[tuple[_Result, Mapping[str, Any] | None]] = []

    def settle() -> None:
        """Journal what the records store now holds for good, and tell its listeners."""
        if commit is not None:
            commit()
        for done_res, event in awaiting:
            assert done_res.decision is not None
            if event is not None:
                summary.plugin_errors.extend(str(e) for e in plugins.record_written(event))
            jr.write({"key": f"id:{done_res.decision.request_id}", "ref": done_res.ref,
                      "outcome": done_res.decision.outcome})
        awaiting.clear()

    try:
        seen_now: set[str] = set()

        def dead(ref: str, reason: str, rid: str | None, errors: Sequence[str] = ()) -> None:
            dl.write({"ref": ref, "source": source, "request_id": rid, "reason": reason,
                      "errors": list(errors)})
            jr.write({"key": f"ref:{ref}", "ref": ref, "outcome": "dead_letter"})
            summary.dead_letters += 1
            summary.plugin_errors.extend(str(e) for e in plugins.dead_letter_written(ref, reason, rid))

        def decided(res: _Result) -> None:
            assert res.decision is not None and res.request is not None
            for name, plugin, writer in writers:
                try:
                    writer.write(res.decision, res.request, res.ref)
                except Exception as exc:  # noqa: BLE001 - stop: the journal still says where
                    raise PluginError(plugin, f"sink `{name}` failed on `{res.ref}`: "
                                      f"{type(exc).__name__}: {exc}") from None
            event = record(res.decision, res.request) if record is not None else None
            awaiting.append((res, event))
            if commit is None or len(awaiting) >= RECORD_BATCH:
                settle()
            summary.outcomes[res.decision.outcome] += 1
            summary.plugin_errors.extend(str(e) for e in plugins.decision_written(
                res.decision, res.request, res.ref, [n for n, _, _ in writers]))

        def handle(res: _Result) -> None:
            if res.decision is None:
                first = res.errors[0] if res.errors else "invalid request"
                dead(res.ref, f"invalid request: {first}", res.request_id, res.errors)
            else:
                decided(res)
            progress.advance(summary)

        def ready() -> Iterator[tuple[str, dict[str, Any]]]:
            for rec in records:
                if rec.error is not None or rec.request is None:
                    if f"ref:{rec.ref}" in done:
                        summary.skipped += 1
                    else:
                        dead(rec.ref, rec.error or "the source gave no request", None)
                    progress.advance(summary)
                    continue
                rid = rec.request.get("request_id")
                key = f"id:{rid}" if isinstance(rid, str) and rid else f"ref:{rec.ref}"
                if key in done or f"ref:{rec.ref}" in done:
                    summary.skipped += 1
                    progress.advance(summary)
                    continue
                if key in seen_now:
                    summary.duplicates += 1
                    progress.advance(summary)
                    continue
                seen_now.add(key)
                try:
                    data = plugins.enrich(rec.request, rec.ref, options)
                except PluginError as exc:
                    dead(rec.ref, str(exc), rid if isinstance(rid, str) else None)
                    progress.advance(summary)
                    continue
                yield rec.ref, data

        progress.start()
        if workers == 1:
            assert engine is not None
            for ref, data in ready():
                handle(_evaluate_one(engine, ref, data))
        else:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                       initargs=([str(p) for p in rulesets or ()], backend))
            pending: collections.deque[Future[list[_Result]]] = collections.deque()
            for chunk in _chunks(ready(), CHUNK):
                pending.append(pool.submit(_worker_chunk, chunk))
                while len(pending) >= workers * 3:
                    for res in pending.popleft().result():
                        handle(res)
            while pending:
                for res in pending.popleft().result():
                    handle(res)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        try:
            settle()  # what was decided and recorded before a stop is not done again
        finally:
            progress.stop()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for _, _, writer in writers:
            writer.close()
        jr.close()
        dl.close()
        summary.seconds = time.monotonic() - t0
    return summary


def _journal_key(key: str) -> str:
    """Journal keys say what they name: ``id:`` a request id, ``ref:`` a record of the input.
    A bare request id held the same namespace as refs, so a request whose id was
    ``ref:in.jsonl:3`` marked line 3 done and a resumed run skipped it unread. A journal written
    before the prefix keeps its bare ids; they read as ``id:``."""
    return key if key.startswith(("id:", "ref:")) else f"id:{key}"


def _guarded(records: Iterable[SourceRecord], plugin: str, name: str) -> Iterator[SourceRecord]:
    """The source's records; an exception from inside it names the plugin and stops the run."""
    it = iter(records)
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except RefundryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(plugin, f"source `{name}` raised {type(exc).__name__}: {exc}") from None
        if not isinstance(rec, SourceRecord):
            raise PluginError(plugin, f"source `{name}` yielded a {type(rec).__name__}, "
                              "not a SourceRecord")
        yield rec


def _primed(records: Iterator[SourceRecord]) -> Iterator[SourceRecord]:
    """``records`` with its first item already read (so that its errors surface now)."""
    first = next(records, None)

    def chain() -> Iterator[SourceRecord]:
        if first is not None:
            yield first
            yield from records
    return chain()


def _chunks(items: Iterable[tuple[str, dict[str, Any]]], size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    chunk: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def print_summary(summary: Summary, stream: TextIO, *, rich_table: bool) -> None:
    rows = [(outcome, str(n)) for outcome, n in summary.outcomes.items()]
    rows += [("dead letters", str(summary.dead_letters)),
             ("skipped (done before)", str(summary.skipped)),
             ("duplicates", str(summary.duplicates)),
             ("plugin errors", str(len(summary.plugin_errors))),
             ("seconds", f"{summary.seconds:.2f}"),
             ("requests/s", f"{summary.decided / max(summary.seconds, 1e-9):.0f}")]
    for err in summary.plugin_errors[:20]:
        print(f"refundry: {err}", file=stream)
    title = "refundry run" + (" (interrupted: re-run to continue)" if summary.interrupted else "")
    if rich_table:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("")
        table.add_column("count", justify="right")
        for row in rows:
            table.add_row(*row)
        Console(file=stream).print(table)
    else:
        print(title + ": " + ", ".join(f"{k} {v}" for k, v in rows), file=stream)
    if summary.dead_letters:
        print(f"dead letters: {summary.dead_letter}", file=stream)


# --- `refundry run` ---------------------------------------------------------------------------


class StoreRecorder:
    """Records each decision in an approval-records store, a batch per transaction.

    ``request_id`` is the idempotency key, so a request decided again after a kill (its batch
    never committed, or its journal line never written) still makes one case.
    """

    def __init__(self, store: Any, engine: Engine | None, actor: str) -> None:
        self.store, self.engine, self.actor = store, engine, actor
        self._batch: Any = None

    def __call__(self, decision: Decision, request: RefundRequest) -> Mapping[str, Any] | None:
        if self._batch is None:
            self._batch = self.store.batch()
            self._batch.__enter__()
        case, created = self.store.record(request, decision, engine=self.engine, actor=self.actor)
        return case.events[-1].to_dict() if created else None

    def commit(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.__exit__(None, None, None)


