"""``refundry run``: a batch from a source through enrichers and the engine to sinks (and the
records store with ``--db``), resumable, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refundry.app.runner import (
    BarProgress,
    PlainProgress,
    Shield,
    StoreRecorder,
    preview,
    print_summary,
    run,
)
from refundry.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    add_backend_option,
    anchoring_from_env,
    default_rulesets,
)
from refundry.core.engine import Engine
from refundry.core.models import json_default
from refundry.plugins import SourceError
from refundry.plugins.history import plugins_with_history
from refundry.records.history import History
from refundry.records.stores import open_store


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option `{pair}` is not KEY=VALUE")
        out[key.strip()] = value
    return out


EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is so that it stops like Ctrl-C: what was decided is
    written and journalled (a clean checkpoint), then the summary is printed."""


def cmd_run(args: argparse.Namespace) -> int:
    options = parse_options(args.option or [])
    if args.preview is not None:
        return _preview(args, options)
    shield = Shield()

    def on_sigterm(signum: int, frame: Any) -> None:
        # Raised now, or (mid-way through a decision's sink writes and journal line) as soon
        # as that decision is whole: a stop never leaves a written decision unjournalled.
        shield.stop(Terminated())

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _run(args, options, shield)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _preview(args: argparse.Namespace, options: dict[str, str]) -> int:
    if args.preview < 1:
        raise UsageError("--preview needs a count of at least 1")
    try:
        items = preview(source=args.source, input_path=args.input, count=args.preview,
                        options=options)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    for item in items:
        print(json.dumps(item, ensure_ascii=False, default=json_default))
    return EXIT_OK


def _run(args: argparse.Namespace, options: dict[str, str], shield: Shield) -> int:
    tty = sys.stderr.isatty()
    rulesets = [str(args.rulesets or default_rulesets())]
    store = None
    engine = None
    record: StoreRecorder | None = None
    plugins = None
    new_file = _new_sqlite_file(args.db)
    if args.db:
        engine = Engine.from_path(rulesets, backend=args.backend)
        store = open_store(args.db, **anchoring_from_env())
        history = History(store)
        record = StoreRecorder(store, engine, args.by or getpass.getuser(), index=history)
        plugins = plugins_with_history(store, history)
    try:
        summary = run(source=args.source, input_path=args.input, sinks=args.sink or ["jsonl"],
                      out=args.out, dead_letter=args.dead_letter, journal=args.journal,
                      options=options, workers=args.workers, rulesets=rulesets,
                      engine=engine, backend=args.backend, record=record, plugins=plugins,
                      progress=BarProgress(sys.stderr) if tty else PlainProgress(sys.stderr),
                      # Under --db the store's key: an id is tagged as the store tags it.
                      id_key=store.salt if store is not None else None, shield=shield)
    except BaseException as exc:
        if store is not None:
            store.close()
            store = None
            _remove_if_empty(new_file)
        if isinstance(exc, SourceError):
            raise UsageError(str(exc)) from None
        raise
    finally:
        if store is not None:
            store.close()
    print_summary(summary, sys.stderr, rich_table=tty)
    if summary.interrupted:
        return EXIT_TERMINATED if summary.terminated else EXIT_INTERRUPTED
    return EXIT_OK


def _new_sqlite_file(db: str | None) -> Path | None:
    """The SQLite file `--db` names when this run would create it, else None."""
    if not db or "://" in db.replace("sqlite:///", ""):
        return None
    path = Path(db[len("sqlite:///"):] if db.startswith("sqlite:///") else db)
    return None if path.exists() else path


def _remove_if_empty(path: Path | None) -> None:
    """A run that could not start leaves no store behind: only one it created and that holds
    no event (the store is opened before the source, which may still refuse to start)."""
    if path is None or not path.exists():
        return
    with open_store(path, create=False) as store:
        if next(iter(store.events()), None) is not None:
            return
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a batch: source -> enrichers -> engine -> sinks")
    p.add_argument("--source", required=True, help="a source name (see `refundry plugins`)")
    p.add_argument("--input", required=True, metavar="PATH", help="the file the source reads")
    p.add_argument("--sink", action="append", metavar="NAME",
                   help="a sink name; repeat for several (default: jsonl)")
    p.add_argument("--out", metavar="PATH", help="where the sinks write (default: stdout); a "
                   "directory (existing, or given with a trailing /) gets one file per sink, "
                   "NAME.jsonl, with progress.jsonl and dead-letter.jsonl beside them")
    p.add_argument("--preview", type=int, metavar="N", help="print the first N records the "
                   "source reads (canonical requests and their kinds) as JSON lines; decide "
                   "and write nothing")
    p.add_argument("--dead-letter", metavar="PATH", help="records that cannot be evaluated, "
                   "with the reason (default: OUT.dead-letter.jsonl or ./dead-letter.jsonl)")
    p.add_argument("--journal", metavar="PATH", help="the progress journal a re-run continues "
                   "from (default: OUT.progress.jsonl, or INPUT.progress.jsonl without --out)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="evaluating processes")
    p.add_argument("--option", action="append", metavar="K=V",
                   help="an option for the source, sinks and enrichers; repeatable")
    p.add_argument("--rulesets", help="rulesets (default: ./rulesets or the shipped baselines)")
    add_backend_option(p)
    p.add_argument("--db", metavar="URL", help="also record every decision in this approval-records "
                   "store (a SQLite path or postgresql://...)")
    p.add_argument("--by", metavar="WHO", help="who submits the batch (default: the login name)")
    p.set_defaults(func=cmd_run)
