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
import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import attrs

from refundry.core.engine import Engine
from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.models import OUTCOMES, Decision, RefundRequest
from refundry.core.request import parse_request, printable_text, replace_fields
from refundry.plugins import (
    KINDS,
    ExecutedRefund,
    JsonLinesWriter,
    PluginError,
    Plugins,
    Sink,
    SinkWriter,
    Source,
    SourceError,
    SourceRecord,
)
from refundry.records.events import MaskedRequest, Prepared, RecordError, prepare_event, with_texts
from refundry.records.history import History, Keyed, ParsedData, key_request, masked_keys
from refundry.records.index import Pseudonyms
from refundry.records.masking import mask_text, scrub, scrub_id, scrub_request

CHUNK = 200  # requests looked up and recorded together (split between worker processes)

Recorder = Callable[[Decision, RefundRequest], Mapping[str, Any] | None]
"""Appends a decision to the approval-records store and returns the event it appended. A
recorder with a ``commit()`` method batches: what it appended is durable only once ``commit``
returns, so the runner journals those requests only then. One with a ``many`` method
(``StoreRecorder.many``) records a whole group of decisions, committed, before any of them
is written to a sink."""

LineFn = Callable[[Decision, str], str]

RECORD_BATCH = 200  # decisions per records transaction: one fsync instead of 200


@attrs.define
class Summary:
    """What a run did. ``skipped`` were journalled by an earlier run of the same input;
    ``duplicates`` repeat a ``request_id`` seen earlier in this run (one case, decided once);
    ``updated`` are later states of an object already decided (its case is updated, nothing is
    decided again). ``kinds`` counts what the source read: requests, executed refunds
    (history), context and broken records (dead letters)."""

    outcomes: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(OUTCOMES, 0))
    dead_letters: int = 0
    skipped: int = 0
    duplicates: int = 0
    updated: int = 0
    delivered: int = 0
    kinds: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(KINDS, 0))
    plugin_errors: list[str] = attrs.field(factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    terminated: bool = False
    out: str | None = None
    dead_letter: str | None = None
    journal: str | None = None

    @property
    def decided(self) -> int:
        return sum(self.outcomes.values())

    @property
    def records(self) -> int:
        return sum(self.kinds.values())

    @property
    def processed(self) -> int:
        """Records this run did something with (not skipped as done by an earlier run)."""
        return self.records - self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "decided": self.decided,
                "kinds": dict(self.kinds), "updated": self.updated, "delivered": self.delivered,
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
            # The rate is of records this run processed: skipped ones cost nothing.
            n = summary.processed
            print(f"refundry run: {summary.records} records, "
                  f"{n / max(now - self._t0, 1e-9):.0f}/s", file=self.stream, flush=True)


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
        rate = summary.processed / max(time.monotonic() - self._t0, 1e-9)
        self._bar.update(self._task, completed=summary.records, rate=f"{rate:.0f}")

    def stop(self) -> None:
        self._bar.stop()


class Shield:
    """Holds back a stop that a signal handler asks for (``stop``) while a decision is being
    written to the sinks and journalled (``held``), and raises it once that is done; outside
    such a stretch it is raised at once. ``held`` nests; one thread (the main one) uses it."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: BaseException | None = None

    def stop(self, exc: BaseException) -> None:
        if self.depth:
            self.pending = exc
            return
        raise exc

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc


@attrs.frozen
class _Result:
    ref: str
    request_id: str | None
    request: RefundRequest | None
    decision: Decision | None
    errors: tuple[str, ...] = ()
    prepared: Prepared | None = None  # the decision as the records store keeps it, if made
    # The decision's line for each sink that can take one made ahead (``_Writer.line_for``),
    # in the writers' order; empty where each sink is to write the decision itself.
    lines: tuple[str, ...] = ()


def _evaluate_one(engine: Engine, ref: str, data: Mapping[str, Any],
                  parsed: RefundRequest | None = None) -> _Result:
    """``data`` parsed (unless ``parsed``, that already) and decided."""
    # Only an id a dead-letter line can hold (UTF-8, bounded): a source may hand over anything.
    rid = printable_text(data.get("request_id"))
    try:
        req = parsed if parsed is not None else parse_request(data, source=ref)
    except InvalidRequest as exc:
        return _Result(ref, rid, None, None, tuple(str(e) for e in exc.errors))
    return _Result(ref, rid, req, engine.evaluate(req))


def _parsed_first(data: dict[str, Any], salt: bytes | None = None) -> ParsedData:
    """``data`` with the request it parses to, for the enrichers' lookups; with the records
    store's ``salt``, the fields the lookup keys masked, for the lookup and the event."""
    try:
        parsed = parse_request(data)
    except InvalidRequest:
        return ParsedData(data, None)  # decided (as a dead letter) with the errors of the whole
    return ParsedData(data, parsed, masked=None if salt is None else masked_keys(parsed, salt))


def _parsed_here(salt: bytes | None) -> Callable[[list[dict[str, Any]]], Callable[[], list[ParsedData]]]:
    """How ``_ready`` has a group parsed in this process: ``_parsed_first`` of each, when
    asked for."""
    return lambda datas: lambda: [_parsed_first(data, salt) for data in datas]


def _reparsed(before: ParsedData, enriched: Mapping[str, Any]) -> RefundRequest | None:
    """``enriched`` parsed, from ``before`` (the request its enrichers were given, parsed)
    with only the fields they changed parsed again (``replace_fields``: as parsing the whole);
    None when it is to be parsed whole, which says what is wrong with it in its own words."""
    if before.request is None or any(k not in enriched for k in before):
        return None
    # An enricher's merge keeps the very objects it did not replace.
    changes = {k: v for k, v in enriched.items() if k not in before or before[k] is not v}
    try:
        return replace_fields(before.request, changes)
    except InvalidRequest:
        return None


# A worker process gets its engine once, in the pool initializer (a copy of the parent's when
# forked, else loaded from the paths); this is that process's only copy.
_worker_engine: Engine | None = None
# The records store's salt and the actor as recorded, when the run records: a worker then masks
# and encodes each decision as the store keeps it, so the appender in the parent only places it
# in the chain.
_worker_recording: tuple[bytes, str] | None = None
# The pseudonyms this worker made keying requests for their history lookups (``_worker_keys``).
_worker_names: Pseudonyms | None = None


def _worker_init(engine: Engine | list[str], backend: str, parent: int,
                 recording: tuple[bytes, str] | None) -> None:
    global _worker_engine, _worker_recording, _worker_names
    _die_with_parent(parent)
    _worker_engine = engine if isinstance(engine, Engine) else Engine.from_path(engine, backend=backend)
    _worker_recording = recording
    _worker_names = Pseudonyms()


def _worker_keys(datas: list[dict[str, Any]]) -> list[Keyed]:
    """Each request parsed and keyed for its history lookup under the store's salt
    (``history.key_request``), so the parent only runs the lookup's SQL."""
    assert _worker_recording is not None
    return [key_request(data, _worker_recording[0], _worker_names) for data in datas]


def _die_with_parent(parent: int) -> None:
    """A worker never outlives the run: on Linux the kernel sends it SIGKILL when the parent
    dies, however it dies (kill -9 included); a parent already gone ends the worker now."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_chunk(chunk: list[tuple[str, dict[str, Any], bool]],
                  line_for: tuple[LineFn, ...] = (), wanted: bool = True) -> list[_Result]:
    """Each (ref, data, the parent has not parsed it) decided and, when the run records,
    prepared, with each of ``line_for``'s sink lines. ``wanted``: the parent needs every
    request (a sink or listener takes one). Pickling a request back cost more than parsing
    it, and unpickling it was the most of the parent's share of a result."""
    assert _worker_engine is not None
    results = [_evaluate_one(_worker_engine, ref, data) for ref, data, _back in chunk]
    if _worker_recording is not None:
        results = [attrs.evolve(res, prepared=_prepared(res, *_worker_recording))
                   for res in results]
    return [_sent(res, back, line_for, wanted)
            for res, (_ref, _data, back) in zip(results, chunk, strict=True)]


def _sent(res: _Result, back: bool, line_for: tuple[LineFn, ...], wanted: bool) -> _Result:
    """``res`` as the worker sends it: its sink lines made, and the request (where the parent
    has not parsed it) kept only where the parent needs it: ``wanted``, to prepare a decision
    the worker could not, or to have a sink whose line was not made here write (and fail)
    as it would alone."""
    lines: tuple[str, ...] = ()
    if res.decision is not None and line_for:
        try:
            lines = tuple(line(res.decision, res.ref) for line in line_for)
        except Exception:  # noqa: BLE001 - the parent's sink writes it, or says why it cannot
            wanted = True
    if _worker_recording is not None and res.prepared is None:
        wanted = True
    return _Result(res.ref, res.request_id, res.request if back and wanted else None,
                   res.decision, res.errors, res.prepared, lines)


# The collector's youngest generation during a run with workers, collected after this many
# allocations (the interpreter's default is 700); the older ones as often as before, relative.
YOUNG_COLLECTED_EVERY = 50_000


class _RareCollection:
    """The cyclic garbage collector for the runs under way, as it was before once the last of
    them ends: what was loaded before the first (the engine above all) frozen out of the
    collector's sight and the youngest generation collected after ``YOUNG_COLLECTED_EVERY``
    allocations. The run's objects die by reference count, yet the collector walked the
    engine's objects and the results' young ones again and again: about 65 µs of the parent's
    CPU a request with workers (the full collections 35), 63-97 µs of one process's full
    collections alone (3,000 requests, load 6). Frozen before the fork, the workers'
    collections skip the engine too and its pages stay shared (the ``gc`` module's advice for
    forking servers). A process that froze objects itself (a server before it forks) keeps its
    freeze: this neither adds to it nor undoes it.

    The collector is the process's, so runs in several threads share one setting, counted: the
    first saves what was and the last puts it back (each run restoring what it found would
    leave the second one's setting behind for good)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._threshold: tuple[int, ...] = ()
        self._froze = False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if not self._runs:
                self._threshold = gc.get_threshold()
                self._froze = not gc.get_freeze_count()
                if self._froze:
                    gc.freeze()
                gc.set_threshold(YOUNG_COLLECTED_EVERY, *self._threshold[1:])
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if not self._runs:
                    gc.set_threshold(*self._threshold)
                    if self._froze:
                        gc.unfreeze()


_collecting_rarely = _RareCollection().held


@attrs.define
class _Flight:
    """The groups the worker processes are deciding, oldest first: each group's parts, and
    each request as this process parsed it (None where the worker sends its own back)."""

    groups: collections.deque[tuple[list[Future[list[_Result]]], list[RefundRequest | None]]] = \
        attrs.field(factory=collections.deque)

    def __len__(self) -> int:
        return len(self.groups)

    def submit(self, pool: ProcessPoolExecutor, group: Sequence[tuple[str, dict[str, Any],
               RefundRequest | None]], workers: int, *, line_for: tuple[LineFn, ...] = (),
               wanted: bool = True) -> None:
        """``group`` split between ``workers`` (``_worker_chunk``: ``line_for``, ``wanted``)."""
        size = -(-len(group) // workers)
        # The data, not the parsed request: a worker parses it again faster than a parsed
        # one is pickled.
        items = [(ref, data, parsed is None) for ref, data, parsed in group]
        self.groups.append(([pool.submit(_worker_chunk, items[i:i + size], line_for, wanted)
                             for i in range(0, len(items), size)],
                            [parsed for _ref, _data, parsed in group]))

    def take(self) -> list[_Result]:
        """The oldest group's results in order (waiting for them), no longer in flight."""
        parts, parsed = self.groups.popleft()
        results = [res for part in parts for res in part.result()]
        # Built directly: attrs.evolve looks the class's fields up on every call.
        return [_Result(res.ref, res.request_id, req, res.decision, res.errors, res.prepared,
                        res.lines)
                if res.request is None and res.decision is not None else res
                for res, req in zip(results, parsed, strict=True)]


def _prepared(res: _Result, salt: bytes, actor: str,
              before: MaskedRequest | None = None) -> Prepared | None:
    if res.request is None or res.decision is None:
        return None
    try:
        # The ruleset texts are left to the parent's engine: shipping them back per decision
        # would cost more than looking them up.
        return prepare_event(res.request, res.decision, salt, actor=actor, texts=(),
                             before=before)
    except RecordError:
        return None  # the parent's append says why


def is_out_dir(out: Path | str | None) -> bool:
    """``--out DIR``: an existing directory, or a path given with a trailing slash."""
    if out in (None, "-"):
        return False
    return str(out).endswith(("/", os.sep)) or Path(str(out)).is_dir()


def journal_path(out: Path | None, input_path: Path, *, out_dir: bool = False) -> Path:
    """The journal lives next to the output (or next to the input when writing to stdout)."""
    if out is not None and out_dir:
        return out / "progress.jsonl"
    base = out if out is not None else input_path
    return base.with_name(base.name + ".progress.jsonl")


def sink_path(sink: Sink, out: Path | None, options: Mapping[str, str], *,
              several: bool, out_dir: bool = False) -> Path | None:
    """Where a sink writes: ``--option out.NAME=PATH``; with ``--out DIR`` one file per sink,
    ``DIR/NAME.jsonl`` (``DIR/NAME/`` for a sink that writes a file per record); else
    ``--out`` when it is the only sink, else ``OUT.NAME`` so two sinks never share a file."""
    explicit = options.get(f"out.{sink.name}")
    if explicit:
        return Path(explicit)
    if out is not None and out_dir:
        return out / (sink.name if sink.output == "dir" else f"{sink.name}.jsonl")
    if out is None or not several:
        return out
    return out.with_name(f"{out.name}.{sink.name}")


def dead_letter_path(out: Path | None, *, out_dir: bool = False) -> Path:
    if out is not None and out_dir:
        return out / "dead-letter.jsonl"
    return out.with_name(out.name + ".dead-letter.jsonl") if out is not None else Path("dead-letter.jsonl")


@attrs.define
class _Paths:
    """Where a run reads and writes: the input, the output (a file, a directory, or None for
    stdout), the dead-letter file and the progress journal."""

    input: Path
    out: Path | None
    out_dir: bool
    dead_letter: Path
    journal: Path

    @classmethod
    def of(cls, input_path: Path | str, out: Path | str | None, dead_letter: Path | str | None,
           journal: Path | str | None) -> _Paths:
        inp = Path(input_path)
        out_path = Path(out) if out not in (None, "-") else None
        out_dir = is_out_dir(out)
        if out_dir and out_path is not None:
            out_path.mkdir(parents=True, exist_ok=True)
        dl = Path(dead_letter) if dead_letter else dead_letter_path(out_path, out_dir=out_dir)
        jr = Path(journal) if journal else journal_path(out_path, inp, out_dir=out_dir)
        return cls(inp, out_path, out_dir, dl, jr)


def run(*, source: str, input_path: Path | str, sinks: Sequence[str] = ("jsonl",),
        out: Path | str | None = None, dead_letter: Path | str | None = None,
        journal: Path | str | None = None, options: Mapping[str, str] | None = None,
        workers: int = 1, rulesets: Sequence[str | Path] | None = None,
        engine: Engine | None = None, backend: str = "compiled",
        plugins: Plugins | None = None, record: Recorder | None = None,
        progress: Progress | None = None, id_key: bytes | None = None,
        shield: Shield | None = None) -> Summary:
    """Run one input through a source, the enrichers, the engine and the sinks.

    Give ``rulesets`` (paths; needed for ``workers > 1``, each worker loads them) or an
    ``engine``. ``record``, when given, appends each decision to the approval-records store
    and returns the event, which ``refundry_record_written`` listeners are then told of.
    Raises ``SourceError`` for a run that cannot start and ``PluginError`` naming the plugin
    that broke it; a ``KeyboardInterrupt`` returns the summary with ``interrupted`` set.

    Every record is scrubbed of card data as it leaves the source (``masking.scrub_request``),
    before an enricher, a sink, the journal, the dead-letter file or the store sees it. A
    request id holding a card number is tagged with ``id_key`` (the records store's salt
    under ``--db``; else a key kept beside the journal), so such ids stay distinct.

    ``shield``: the ``Shield`` a signal handler stops the run through; a stop is then held
    back while a decision is written to the sinks and journalled.
    """
    plugins = plugins or Plugins()
    options = dict(options or {})
    paths = _Paths.of(input_path, out, dead_letter, journal)
    engine = _engine(engine, workers, rulesets, backend)
    src = plugins.source(source)
    chosen_sinks = [plugins.sink(name) for name in sinks]
    plugins.check_options(options, src, chosen_sinks)
    if not paths.input.exists():
        raise SourceError(f"cannot read `{paths.input}`: no such file")
    # Pull the first record before creating any file: a source that cannot start (a missing
    # option) or a sink that cannot open leaves no journal or dead-letter file behind.
    records = _primed(_guarded(src.read(paths.input, options), src.plugin, src.name))
    with contextlib.ExitStack() as closing:
        writers = _open_writers(chosen_sinks, paths, options, closing)
        batch = Batch(source=src, paths=paths, options=options, plugins=plugins, engine=engine,
                      writers=writers, recorder=record, progress=progress or Progress(),
                      shield=shield or Shield(), ids=_IdKey(paths.journal, id_key),
                      closing=closing)
        return batch.run(records, workers=workers, rulesets=rulesets or (), backend=backend)


def _engine(engine: Engine | None, workers: int, rulesets: Sequence[str | Path] | None,
            backend: str) -> Engine:
    if workers < 1:
        raise SourceError("--workers must be at least 1")
    if engine is None:
        if not rulesets:
            raise SourceError("give rulesets or an engine")
        # Loaded here even for several workers: invalid rulesets fail now, with every error,
        # not as a broken process pool.
        return Engine.from_path([str(p) for p in rulesets], backend=backend)
    if workers > 1 and not rulesets:
        raise SourceError("several workers need ruleset paths, not an engine object")
    return engine


@attrs.frozen
class _Writer:
    name: str
    plugin: str
    writer: SinkWriter
    # The writer's ``line_for`` and ``write_line`` (the built-in ``jsonl`` sink's): a function
    # of (decision, ref) that makes the line ``write_line(request_id, line)`` writes as
    # ``write`` would, so a worker process makes it and this one only writes it.
    line_for: LineFn | None = None
    write_line: Callable[[str, str], str | None] | None = None


def _open_writers(sinks: Sequence[Sink], paths: _Paths, options: Mapping[str, str],
                  closing: contextlib.ExitStack) -> list[_Writer]:
    """Each sink's writer, closed by ``closing``; a sink that cannot open names its plugin."""
    writers = []
    for s in sinks:
        try:
            path = sink_path(s, paths.out, options, several=len(sinks) > 1,
                             out_dir=paths.out_dir)
            writer = s.open(path, options)
        except RefundryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PluginError(s.plugin, f"sink `{s.name}` cannot open: "
                              f"{type(exc).__name__}: {exc}") from None
        closing.callback(writer.close)
        line_for, write_line = getattr(writer, "line_for", None), getattr(writer, "write_line", None)
        ahead = callable(line_for) and callable(write_line)  # one without the other is no use
        writers.append(_Writer(s.name, s.plugin, writer, line_for if ahead else None,
                               write_line if ahead else None))
    return writers


class Batch:
    """One run of an input: its source, the enrichers (``plugins``), the engine, the sinks'
    writers, the records store's recorder, the progress journal and dead-letter file, the
    counters (``summary``) and the shield a stop waits behind.

    What it remembers as it goes: ``done`` (keys an earlier run journalled), ``states`` (the
    object states each decided request was seen in), ``decided_in`` (the state a request was
    decided in, for its journal line), ``seen_now`` (keys read in this run) and ``awaiting``
    (decisions the store holds but has not committed, journalled once it has).
    """

    def __init__(self, *, source: Source, paths: _Paths, options: dict[str, str],
                 plugins: Plugins, engine: Engine, writers: list[_Writer],
                 recorder: Recorder | None, progress: Progress, shield: Shield, ids: _IdKey,
                 closing: contextlib.ExitStack) -> None:
        self.source, self.paths, self.options = source, paths, options
        self.plugins, self.engine, self.writers = plugins, engine, writers
        self.recorder, self.progress, self.shield, self.ids = recorder, progress, shield, ids
        # What the recorder can do beyond recording a decision (``StoreRecorder``'s methods).
        self.on_executed = getattr(recorder, "executed", None)
        self.on_update = getattr(recorder, "updated", None)
        self.on_delivered = getattr(recorder, "delivered", None)
        self.commit = getattr(recorder, "commit", None)
        self.notify_written = plugins.listens("refundry_decision_written")
        self.record_many: Callable[[Sequence[tuple[Any, Any, Prepared | None]]],
                                   list[Mapping[str, Any] | RecordError | None]] | None = \
            getattr(recorder, "many", None)
        self.summary = Summary(out=str(paths.out) if paths.out else None,
                               dead_letter=str(paths.dead_letter), journal=str(paths.journal))
        self.summary.plugin_errors.extend(str(e) for e in plugins.errors)
        self.journal = JsonLinesWriter(paths.journal, "key")
        closing.callback(self.journal.close)
        self.done = set(self.journal.seen)
        self.states = _journal_states(paths.journal)
        self.decided_in: dict[str, str] = {}
        self.seen_now: set[str] = set()
        self.awaiting: list[tuple[_Result, Mapping[str, Any] | None]] = []
        self.history = _History()
        if source.history:
            self._read_history()
        self.dead_letters = JsonLinesWriter(paths.dead_letter, "ref")
        closing.callback(self.dead_letters.close)

    def _read_history(self) -> None:
        # Executed refunds anywhere in the input are history of every request, before or after
        # them in the input: one reading pass collects them first.
        src = self.source
        for rec in _scrubbed(_guarded(src.read(self.paths.input, self.options), src.plugin,
                                      src.name), self.ids.get):
            if rec.executed is not None:
                self.history.add(rec.executed)

    def run(self, records: Iterator[SourceRecord], *, workers: int = 1,
            rulesets: Sequence[str | Path] = (), backend: str = "compiled") -> Summary:
        """Decide every record; a stop (Ctrl-C, SIGTERM) returns the summary so far."""
        t0 = time.monotonic()
        try:
            self.progress.start()
            if workers == 1:
                # ``_ready`` enriches a request only once the one before it is handled here
                # (decided, written and recorded), as its history lookups expect.
                recording = getattr(self.recorder, "recording", None)
                salt = recording[0] if recording is not None and self.record_many else None
                with _collecting_rarely():
                    for group in self._ready(records, parse=_parsed_here(salt)):
                        self._handle_group([self._decided_here(ref, data, parsed, recording)
                                            for ref, data, parsed in group])
            else:
                with _collecting_rarely():
                    self._in_pool(records, workers, rulesets, backend)
        except KeyboardInterrupt as exc:
            self.summary.interrupted = True
            # A subclass of KeyboardInterrupt raised by a SIGTERM handler (``refundry run``).
            self.summary.terminated = type(exc) is not KeyboardInterrupt
        finally:
            try:
                self._settle()  # what was decided and recorded before a stop is not done again
            finally:
                self.progress.stop()
                self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _decided_here(self, ref: str, data: dict[str, Any], parsed: RefundRequest | None,
                      recording: tuple[bytes, str] | None) -> _Result:
        """``data`` decided in this process and, when its keyed fields were masked before its
        enrichers (``_parsed_first``), prepared for the store with them."""
        res = _evaluate_one(self.engine, ref, data, parsed)
        before = data.masked if isinstance(data, ParsedData) else None
        if before is None or recording is None:
            return res
        return _Result(res.ref, res.request_id, res.request, res.decision, res.errors,
                       _prepared(res, *recording, before))

    def _in_pool(self, records: Iterator[SourceRecord], workers: int,
                 rulesets: Sequence[str | Path], backend: str) -> None:
        context = multiprocessing.get_context()
        # A forked worker is handed this process's engine (initargs are not pickled then):
        # loading the rulesets again cost each worker about a second of CPU, most of what two
        # workers saved on a run of a few thousand requests. Spawned ones load the paths.
        engine: Engine | list[str] = self.engine if context.get_start_method() == "fork" \
            else [str(p) for p in rulesets]
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_worker_init,
                                   initargs=(engine, backend, os.getpid(),
                                             getattr(self.recorder, "recording", None)))
        flight = _Flight()

        def land(keep: int = 0) -> int:
            while len(flight) > keep:
                self._handle_group(flight.take())
            return len(flight)

        try:
            # A group is split between the workers. The next is looked up while they decide
            # it only where no answer could depend on its records (``_ready`` asks the
            # enrichers ``ahead``), else once it is recorded: with groups in flight blindly, a
            # request's history missed the records of requests before it still in the pool
            # (64 of tests/fraudgen's 314 differed). Meanwhile this process reads and scrubs
            # the next group (the workers key it: ``_keying``), and records the one before.
            line_for = tuple(w.line_for for w in self.writers if w.line_for is not None)
            wanted = self._wants_requests()
            for group in self._ready(records, parse=self._keying(pool, workers), land=land):
                flight.submit(pool, group, workers, line_for=line_for, wanted=wanted)
            land()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _wants_requests(self) -> bool:
        """Whether this process needs every decided request (the workers then send each
        back): for a sink that makes no line ahead (``_Writer.line_for``), a
        ``decision_written`` listener, or a recorder the workers do not prepare decisions
        for. Else it needs only those whose decision a worker could not prepare."""
        if self.notify_written or any(w.line_for is None for w in self.writers):
            return True
        return self.recorder is not None and (
            self.record_many is None or getattr(self.recorder, "recording", None) is None)

    def _keying(self, pool: ProcessPoolExecutor, workers: int,
                ) -> Callable[[list[dict[str, Any]]], Callable[[], list[ParsedData]]] | None:
        """How ``_ready`` has a group parsed for the history lookups, when they are made (the
        run records with the store's salt): by the workers, who parse and key the group
        (``_worker_keys``) while this process looks up the one before, and parse each
        request again once enriched; this process never parses it. Else nobody parses
        before the workers do."""
        recording = getattr(self.recorder, "recording", None)
        if self.record_many is None or recording is None:
            return None

        def start(datas: list[dict[str, Any]]) -> Callable[[], list[ParsedData]]:
            size = -(-len(datas) // workers)
            parts = [pool.submit(_worker_keys, datas[i:i + size])
                     for i in range(0, len(datas), size)]
            return lambda: [ParsedData(data, None, keyed) for data, keyed in
                            zip(datas, (k for part in parts for k in part.result()), strict=True)]
        return start

    def _ready(self, records: Iterable[SourceRecord], *,
               parse: Callable[[list[dict[str, Any]]], Callable[[], list[ParsedData]]] | None = None,
               land: Callable[[int], int] | None = None,
               ) -> Iterator[list[tuple[str, dict[str, Any], RefundRequest | None]]]:
        """The requests to decide, enriched, as lists of (ref, data, data parsed or None). The
        enrichers look up a group together (``Plugins.prefetch``): a prefix of it whose answers
        cannot depend on each other's records (one list), then the rest; the next list is
        looked up only when the caller asks for it, so a caller that records each list first
        keeps them true. ``parse(datas)`` starts parsing a group's requests for the lookups
        and returns what finishes it (``ParsedData``, each parsed once, before its enrichers,
        and what they changed parsed again: ``_reparsed``); with ``land`` (workers) the next
        group is read, and its parsing started, before this one is looked up, so the workers
        key it meanwhile. Without ``parse`` the caller parses.
        ``land(keep)``: a caller that decides lists while this reads and looks up the next
        has all but the newest ``keep`` of them handled (decided, recorded, written) when
        called, and says how many are left in flight. A list is looked up with one in flight
        only as far as the enrichers can answer ``ahead`` of its records
        (``Plugins.prefetch``), else once all are landed; all are landed before a record
        that is not a new request is dealt with, so the store sees the source's order."""
        held: tuple[list[tuple[str, Any, dict[str, Any]]], Callable[[], list[ParsedData]] | None] | None = None
        group: list[tuple[str, Any, dict[str, Any]]] = []
        for item in itertools.chain(self._pending(records), [None]):  # None: the end decides the rest
            if item is not None:
                group.append(item)
                if len(group) < CHUNK:
                    continue
            started = None if not group else \
                (group, None if parse is None else parse([data for _ref, _rid, data in group]))
            group = []
            # One group read ahead only where workers key it meanwhile.
            ahead = land is not None and item is not None
            for one in (held,) if ahead else (held, started):
                if one is not None:
                    yield from self._looked_up(*one, land)
            held = started if ahead else None
            if item is None and land is not None:
                land(0)

    def _looked_up(self, group: list[tuple[str, Any, dict[str, Any]]],
                   parsed: Callable[[], list[ParsedData]] | None, land: Callable[[int], int] | None,
                   ) -> Iterator[list[tuple[str, dict[str, Any], RefundRequest | None]]]:
        """A group ``_ready`` read, its parsing finished, looked up and enriched."""
        datas: Sequence[dict[str, Any]] = [data for _ref, _rid, data in group] if parsed is None \
            else parsed()
        items = [(ref, rid, data) for (ref, rid, _raw), data in zip(group, datas, strict=True)]
        while items:
            n = self._prefetch([data for _ref, _rid, data in items], land)
            ready = []
            for ref, rid, data in items[:n]:
                enriched = self._enrich(ref, rid, data, land)
                if enriched is not None:
                    again = _reparsed(data, enriched) if isinstance(data, ParsedData) else None
                    if again is not None and isinstance(data, ParsedData) \
                            and data.masked is not None:  # made in this process only
                        # Its masked fields go on with it, to its event (``_decided_here``).
                        enriched = ParsedData(enriched, again, masked=data.masked)
                    ready.append((ref, enriched, again))
            del items[:n]
            if ready:
                yield ready

    def _prefetch(self, datas: Sequence[dict[str, Any]], land: Callable[[int], int] | None) -> int:
        """``Plugins.prefetch`` of ``datas``: ahead of the newest list in flight when the
        enrichers can, else after landing every list."""
        n = 0
        if land is not None and land(1):
            n = self.plugins.prefetch(datas, ahead=True)
        if n == 0:
            if land is not None:
                land(0)
            n = self.plugins.prefetch(datas)
        return n

    def _pending(self, records: Iterable[SourceRecord]) -> Iterator[tuple[str, Any, dict[str, Any]] | None]:
        """The requests to decide, not yet enriched, as (ref, request id, data); every other
        record is dealt with here (dead letters, executed refunds, skips, duplicates and case
        updates), after a None that tells the caller to decide what it holds first, so the
        records store sees everything in the order the source gave it."""
        for rec in _flushing(_scrubbed(records, self.ids.get)):
            if rec is None:
                yield None
                continue
            if rec.kind == "request":
                fresh = self._request(rec)
                if fresh is not None:
                    yield fresh  # counted when its turn comes, so progress counts what is done
                    continue
            yield None
            self.summary.kinds[rec.kind] += 1
            if rec.kind == "broken":
                if f"ref:{rec.ref}" in self.done:
                    self.summary.skipped += 1
                else:
                    self._dead(rec.ref, rec.error or "the source gave no request", None)
            elif rec.kind == "executed":
                self._executed(rec)
            elif rec.kind == "request":
                self._seen_before(rec, self._key(rec))
            self.progress.advance(self.summary)

    @staticmethod
    def _key(rec: SourceRecord) -> str:
        assert rec.request is not None
        rid = rec.request.get("request_id")
        return journal_key(rid) if isinstance(rid, str) and rid else f"ref:{rec.ref}"

    def _request(self, rec: SourceRecord) -> tuple[str, Any, dict[str, Any]] | None:
        """A request read for the first time, as (ref, request id, data with the run's
        history); None when it was seen before (``_seen_before`` then deals with it)."""
        assert rec.request is not None
        key = self._key(rec)
        if self._known(rec, key):
            return None
        self.seen_now.add(key)
        if rec.state:
            self.states[key] = {rec.state}
            self.decided_in[key] = rec.state
        return rec.ref, rec.request.get("request_id"), self.history.merge(rec.request)

    def _enrich(self, ref: str, rid: Any, data: dict[str, Any],
                land: Callable[[int], int] | None = None) -> dict[str, Any] | None:
        """``data`` enriched; None (and a dead letter, after what is in flight: the input's
        order) when an enricher broke on it."""
        try:
            return self.plugins.enrich(data, ref, self.options)
        except PluginError as exc:
            if land is not None:
                land(0)
            self.summary.kinds["request"] += 1  # an enriched one is counted once handled
            self._dead(ref, str(exc), rid if isinstance(rid, str) else None)
            self.progress.advance(self.summary)
            return None

    def _known(self, rec: SourceRecord, key: str) -> bool:
        return key in self.done or f"ref:{rec.ref}" in self.done or key in self.seen_now

    def _seen_before(self, rec: SourceRecord, key: str) -> None:
        """Skip, count as a duplicate, or (a state of a decided object not seen before)
        update its case."""
        earlier = key in self.done or f"ref:{rec.ref}" in self.done
        known = self.states.get(key)
        if rec.state and known and rec.state not in known:
            known.add(rec.state)
            if self.on_update is not None:
                self.on_update(request_id_of(key), rec.state, rec.ref)
            self.journal.write({"key": f"{key}@{rec.state}", "ref": rec.ref,
                                "outcome": "updated"})
            self.summary.updated += 1
        elif earlier:
            self.summary.skipped += 1
        else:
            self.summary.duplicates += 1

    def _executed(self, rec: SourceRecord) -> None:
        assert rec.executed is not None
        self.history.add(rec.executed)
        if f"ref:{rec.ref}" in self.done:
            self.summary.skipped += 1
            return
        if self.on_executed is not None:
            self.on_executed(rec.executed, rec.ref)
        self.journal.write({"key": f"ref:{rec.ref}", "ref": rec.ref, "outcome": "executed"})

    def _handle_group(self, results: Sequence[_Result]) -> None:
        """Decisions and dead letters in input order. With a recorder that records groups
        (``many``) the group's decisions are recorded and committed first, then each is
        written to the sinks and journalled: a journal line never names a decision the store
        might still lose. A store that fails raises before anything of the group is written
        (its transaction rolled back), so a re-run decides the whole group again; a decision
        the store refuses stops the run as ``record`` does, after the ones before it."""
        if self.record_many is None:
            for res in results:
                self._handle(res)
            return
        with self.shield.held():
            decided = [res for res in results if res.decision is not None]
            answers = iter(self.record_many([(res.decision, res.request, res.prepared)
                                             for res in decided]))
            for res in results:
                if res.decision is None:
                    self._dead_result(res)
                else:
                    event = next(answers)
                    if isinstance(event, RecordError):
                        raise event
                    self._written(res, event)
                self._advance()

    def _handle(self, res: _Result) -> None:
        with self.shield.held():  # the sinks, the dead letter and the journal line, whole
            if res.decision is None:
                self._dead_result(res)
            else:
                self._decided(res)
        self._advance()

    def _advance(self) -> None:
        """One request handled: counted now, so progress counts what is done."""
        self.summary.kinds["request"] += 1
        self.progress.advance(self.summary)

    def _dead_result(self, res: _Result) -> None:
        first = res.errors[0] if res.errors else "invalid request"
        self._dead(res.ref, f"invalid request: {first}", res.request_id, res.errors)

    def _dead(self, ref: str, reason: str, rid: str | None, errors: Sequence[str] = ()) -> None:
        self.dead_letters.write(scrub({"ref": ref, "source": self.source.name,
                                       "request_id": rid, "reason": reason,
                                       "errors": list(errors)}))
        self.journal.write({"key": f"ref:{ref}", "ref": ref, "outcome": "dead_letter"})
        self.summary.dead_letters += 1
        self.summary.plugin_errors.extend(
            str(e) for e in self.plugins.dead_letter_written(ref, reason, rid))

    def _decided(self, res: _Result) -> None:
        assert res.decision is not None
        made = self._write(res)
        if self.recorder is None:
            event = None
        else:
            assert res.request is not None  # sent back for a recorder (``_wants_requests``)
            event = self.recorder(res.decision, res.request) if res.prepared is None else \
                self.recorder(res.decision, res.request, res.prepared)  # type: ignore[call-arg]
        self._delivered(res, made)
        self.awaiting.append((res, event))
        if self.commit is None or len(self.awaiting) >= RECORD_BATCH:
            self._settle()
        self._counted(res)

    def _written(self, res: _Result, event: Mapping[str, Any] | None) -> None:
        """A decision the store has committed (``event``: what it appended, None if the case
        was there before): to the sinks, then the journal."""
        self._delivered(res, self._write(res))
        self._journalled(res, event)
        self._counted(res)

    def _delivered(self, res: _Result, made: list[tuple[str, str]]) -> None:
        assert res.decision is not None
        self.summary.delivered += len(made)
        for name, created in made:
            if self.on_delivered is not None:
                self.on_delivered(res.decision.request_id, created, name)

    def _counted(self, res: _Result) -> None:
        assert res.decision is not None
        self.summary.outcomes[res.decision.outcome] += 1
        if self.notify_written:  # else the workers need not send the request back
            assert res.request is not None
            self.summary.plugin_errors.extend(str(e) for e in self.plugins.decision_written(
                res.decision, res.request, res.ref, [w.name for w in self.writers]))

    def _write(self, res: _Result) -> list[tuple[str, str]]:
        """The decision to every sink; (sink, the platform's id) for each that delivered."""
        assert res.decision is not None
        made: list[tuple[str, str]] = []
        lines = iter(res.lines)
        for w in self.writers:
            try:
                if w.write_line is not None and res.lines:
                    created = w.write_line(res.decision.request_id, next(lines))
                else:
                    assert res.request is not None  # sent back for such a sink (``_sent``)
                    created = w.writer.write(res.decision, res.request, res.ref)
            except Exception as exc:  # noqa: BLE001 - stop: the journal still says where
                raise PluginError(w.plugin, f"sink `{w.name}` failed on `{res.ref}`: "
                                  f"{type(exc).__name__}: {exc}") from None
            if isinstance(created, str) and created:
                made.append((w.name, created))
        return made

    def _settle(self) -> None:
        """Journal what the records store now holds for good, and tell its listeners."""
        if self.commit is not None:
            self.commit()
        for res, event in self.awaiting:
            self._journalled(res, event)
        self.awaiting.clear()

    def _journalled(self, res: _Result, event: Mapping[str, Any] | None) -> None:
        """Tell the store's listeners of ``event`` (committed) and journal the decision."""
        assert res.decision is not None
        if event is not None:
            self.summary.plugin_errors.extend(str(e) for e in self.plugins.record_written(event))
        key = journal_key(res.decision.request_id)
        line = {"key": key, "ref": res.ref, "outcome": res.decision.outcome}
        state = self.decided_in.get(key)
        self.journal.write({**line, "state": state} if state else line)


def _flushing(records: Iterator[SourceRecord]) -> Iterator[SourceRecord | None]:
    """``records``; when reading them fails, a None first, so the requests read before the
    failure are decided before it stops the run (as when each was decided as it was read)."""
    while True:
        try:
            rec = next(records)
        except StopIteration:
            return
        except Exception:
            yield None
            raise
        yield rec


class _IdKey:
    """The key that tags request ids holding a card number (``masking.scrub_id``): the one
    given, else a random key kept beside the journal, made only when an id first needs it, so
    a resumed run tags ids as the first one did."""

    def __init__(self, journal: Path, key: bytes | None) -> None:
        self._path = journal.with_name(journal.name + ".key")
        self._key = key

    def get(self) -> bytes:
        if self._key is None:
            try:
                fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._key = bytes.fromhex(self._path.read_text(encoding="ascii").strip())
            else:
                self._key = secrets.token_bytes(32)
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    f.write(self._key.hex() + "\n")
        return self._key


def _scrubbed(records: Iterable[SourceRecord], key: Callable[[], bytes]) -> Iterator[SourceRecord]:
    """The source's records with card data scrubbed out of every field and message."""
    def text(value: str | None) -> str | None:
        return None if value is None else mask_text(value)

    for rec in records:
        executed = rec.executed
        if executed is not None:  # its amount is money; its ids and case key are not
            executed = attrs.evolve(
                executed, refund_id=mask_text(executed.refund_id),
                transaction_id=mask_text(executed.transaction_id),
                case=None if executed.case is None else scrub_id(executed.case, key))
        # Every field anew, so built directly: attrs.evolve looks the fields up on each call.
        yield SourceRecord(mask_text(rec.ref),
                           None if rec.request is None else scrub_request(rec.request, key),
                           text(rec.error), executed, text(rec.context), text(rec.state))


class _History:
    """Executed refunds read in this run, by transaction: each becomes a ``prior_refunds``
    entry of every later request for that transaction."""

    def __init__(self) -> None:
        self._by_transaction: dict[str, list[dict[str, Any]]] = {}
        self._seen: set[str] = set()

    def add(self, refund: ExecutedRefund) -> None:
        # One entry per refund: the same refund read twice (two exports) is counted once, two
        # refunds of one case (a partial, then the rest) are two.
        if refund.refund_id not in self._seen:
            self._seen.add(refund.refund_id)
            self._by_transaction.setdefault(refund.transaction_id, []).append(refund.prior_refund())

    def merge(self, request: dict[str, Any]) -> dict[str, Any]:
        tx = request.get("transaction")
        entries = self._by_transaction.get(str(tx.get("id"))) if isinstance(tx, Mapping) else None
        if not entries:
            return request
        return {**request, "prior_refunds": [*(request.get("prior_refunds") or []), *entries]}


def journal_key(request_id: str) -> str:
    """The journal key of a request id. Input records are journalled as ``ref:FILE:LINE``; a
    request id that itself starts with ``ref:`` (or ``id:``) is written as ``id:`` + the id, so
    it can never mark another line done (a request `ref:in.jsonl:3` made a resumed run skip
    line 3 unread). Every other id is its own key, as in journals written before."""
    return f"id:{request_id}" if request_id.startswith(("ref:", "id:")) else request_id


def request_id_of(key: str) -> str:
    return key[3:] if key.startswith("id:") else key


def _journal_states(path: Path) -> dict[str, set[str]]:
    """request_id -> every state of its object that a run decided or updated its case with."""
    states: dict[str, set[str]] = {}
    if not path.exists():
        return states
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line; the writer drops it
            key = entry.get("key") if isinstance(entry, dict) else None
            if not isinstance(key, str):
                continue
            if entry.get("outcome") == "updated" and "@" in key:
                rid, _, state = key.rpartition("@")
                states.setdefault(rid, set()).add(state)
            elif isinstance(entry.get("state"), str):
                states.setdefault(key, set()).add(entry["state"])
    return states


def preview(*, source: str, input_path: Path | str, count: int,
            options: Mapping[str, str] | None = None,
            plugins: Plugins | None = None) -> list[dict[str, Any]]:
    """The first ``count`` records the source reads, each with its kind, as JSON-safe dicts:
    nothing is enriched, decided, journalled or written."""
    plugins = plugins or Plugins()
    options = dict(options or {})
    src = plugins.source(source)
    plugins.check_options(options, src, [])
    path = Path(input_path)
    if not path.exists():
        raise SourceError(f"cannot read `{path}`: no such file")
    out: list[dict[str, Any]] = []
    # Scrubbed as a run would scrub them; a throw-away key, since the output is all it reaches.
    for rec in _scrubbed(_guarded(src.read(path, options), src.plugin, src.name),
                         lambda: secrets.token_bytes(32)):
        if len(out) >= count:
            break
        item: dict[str, Any] = {"ref": rec.ref, "kind": rec.kind}
        if rec.request is not None:
            item["request"] = rec.request
        elif rec.executed is not None:
            item["executed"] = attrs.asdict(rec.executed)
        elif rec.context is not None:
            item["context"] = rec.context
        else:
            item["error"] = rec.error
        if rec.state:
            item["state"] = rec.state
        out.append(item)
    return out


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


def print_summary(summary: Summary, stream: TextIO, *, rich_table: bool) -> None:
    rows = [(outcome, str(n)) for outcome, n in summary.outcomes.items()]
    rows += [("dead letters", str(summary.dead_letters)),
             ("skipped (done before)", str(summary.skipped)),
             ("duplicates", str(summary.duplicates)),
             ("updated (later state)", str(summary.updated)),
             ("delivered", str(summary.delivered))]
    rows += [(f"read: {kind}", str(n)) for kind, n in summary.kinds.items()]
    rows += [("plugin errors", str(len(summary.plugin_errors))),
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


class _Refused(Exception):
    """Raised inside a records batch to roll it back: decision ``at`` of the group was refused."""

    def __init__(self, at: int, error: RecordError) -> None:
        super().__init__(at)
        self.at, self.error = at, error


class StoreRecorder:
    """Records each decision in an approval-records store, a batch per transaction.

    ``request_id`` is the idempotency key, so a request decided again after a kill (its batch
    never committed, or its journal line never written) still makes one case.
    """

    def __init__(self, store: Any, engine: Engine | None, actor: str, *,
                 index: History | None = None) -> None:
        self.store, self.engine, self.actor = store, engine, actor
        # The history index of ``store``, given the cases a group opens in the group's own
        # transaction: the next lookup's sync then has nothing to read back and decode.
        self.index = index
        self._batch: contextlib.ExitStack | None = None  # holds the open store.batch()
        # The ruleset texts of decisions prepared in worker processes, by ruleset digest.
        self._texts: dict[str, tuple[tuple[str, str, str, str], ...]] = {}

    @property
    def recording(self) -> tuple[bytes, str]:
        """The store's salt and the actor as recorded, for worker processes to prepare
        decisions with (``events.prepare_event``)."""
        return bytes(self.store.salt), self.store.recorded_actor(self.actor)

    def __call__(self, decision: Decision, request: RefundRequest,
                 prepared: Prepared | None = None) -> Mapping[str, Any] | None:
        if self._batch is None:
            self._batch = contextlib.ExitStack()
            self._batch.enter_context(self.store.batch())
        case, created = self.store.record(request, decision, engine=self.engine, actor=self.actor,
                                          prepared=prepared)
        return case.events[-1].to_dict() if created else None

    def many(self, decisions: Sequence[tuple[Decision, RefundRequest | None, Prepared | None]]
             ) -> list[Mapping[str, Any] | RecordError | None]:
        """Record a group of decisions in one transaction (``RecordStore.record_many``: a few
        round trips for the group, not a few per decision), committed when this returns. One
        answer per decision, in order: the event appended, or None when its case was recorded
        before. A decision the store refuses is answered with the ``RecordError`` ``record``
        raises and ends the list: the group is rolled back and the decisions before it recorded
        alone, so nothing after a refusal is recorded, as when each was recorded in turn. A
        store that fails raises, and nothing of the group is written. The request may be None
        where the decision is prepared (``recording``): the prepared event holds it."""
        ready: list[Prepared] = []
        refused: list[RecordError] = []
        for decision, request, prepared in decisions:
            try:
                if prepared is None and request is None:
                    raise RecordError(f"decision `{decision.request_id}` came without its request")
                ready.append(with_texts(prepared, decision, self.engine, self._texts)
                             if prepared is not None
                             else self.store.prepare(request, decision, engine=self.engine,
                                                     actor=self.actor))
            except RecordError as exc:
                refused.append(exc)
                break
        got = self._committed(ready)
        if refused and not any(isinstance(g, RecordError) for g in got):
            got.append(refused[0])
        return [g if isinstance(g, RecordError) else g[0].events[-1].to_dict() if g[1] else None
                for g in got]

    def _committed(self, items: list[Prepared]) -> list[Any]:
        """``record_many(items)`` committed, cut after its first refusal (see ``many``)."""
        try:
            with self.store.batch():
                got = self.store.record_many(items)
                cut = next((i for i, g in enumerate(got) if isinstance(g, RecordError)), None)
                if cut is not None:
                    raise _Refused(cut, got[cut])  # rolls the whole group back
                if self.index is not None:
                    self.index.sync([g[0].events[-1] for g in got if g[1]])
        except _Refused as refused:
            return [*self._committed(items[:refused.at]), refused.error]
        return list(got)

    def executed(self, refund: ExecutedRefund, ref: str) -> None:
        """An executed refund of a case in the store: the money has moved, so an approved case
        becomes processed and refunded (with the platform's refund id as reference); any other
        case gets a note."""
        if not refund.case:
            return
        try:
            case = self.store.case(refund.case)
        except RecordError:
            return  # not a case of this store: it stays history of its transaction only
        if any(e.details.get("reference") == refund.refund_id for e in case.events):
            return  # the same refund read again (another export, a re-run): recorded once
        if case.status in ("approved", "processed"):
            if case.status == "approved":
                self.store.mark(refund.case, "processed", actor=self.actor,
                                reference=refund.refund_id)
            self.store.mark(refund.case, "refunded", actor=self.actor, reference=refund.refund_id)
        else:
            self.store.note(refund.case, f"executed refund `{refund.refund_id}` of "
                            f"{refund.amount} {refund.currency} read from `{ref}`", actor=self.actor)

    def delivered(self, request_id: str, refund_id: str, sink: str) -> None:
        """A sink delivered the case's refund and the platform made it: `processed`, with
        the platform's refund id as the reference."""
        case = self.store.case(request_id)
        if case.status == "approved":
            self.store.mark(request_id, "processed", actor=self.actor,
                            reference=f"{sink}: {refund_id}")

    def updated(self, request_id: str, state: str, ref: str) -> None:
        """A later state of the object a case was decided for: a note on the case."""
        # A case decided by an earlier run without a store has nothing to update.
        with contextlib.suppress(RecordError):
            self.store.note(request_id, f"the source object is now `{state}` (`{ref}`)",
                            actor=self.actor)

    def commit(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.close()  # the batch's transaction commits


