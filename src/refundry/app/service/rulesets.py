"""The engine in force, and reloading it without a restart.

A reload builds a whole new ``Engine`` from the same paths first; only when every file
validates does one reference assignment swap it in. A request takes the engine once at its
start, so it is decided by one version from beginning to end, and a refused version leaves
the old one serving.

Every server process watches the ruleset files (``changed``: names, sizes and modification
times) and reloads when they change, so all processes of a ``--workers N`` server, and all
replicas reading the same files, pick a new version up without being told one by one. A
version that was refused is not tried again until the files change again.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from refundry.core.engine import Engine
from refundry.core.errors import ErrorGroup, RefundryError


@attrs.frozen
class Loaded:
    engine: Engine
    generation: int
    loaded_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
                "rulesets": [r.to_dict() for r in self.engine.rulesets]}


@attrs.frozen
class Reload:
    ok: bool
    generation: int
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "generation": self.generation, "errors": list(self.errors)}


class Rulesets:
    """Holds the current ``Loaded``; ``reload`` is serialised, reading never locks."""

    def __init__(self, paths: Sequence[str | Path], *, backend: str = "compiled") -> None:
        self.paths = [str(p) for p in paths]
        self.backend = backend
        self._lock = threading.Lock()
        self._seen = self.fingerprint()
        self.current = Loaded(Engine.from_path(self.paths, backend=backend), 1,
                              dt.datetime.now(dt.UTC))

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        files: list[Path] = []
        for path in map(Path, self.paths):
            files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue  # removed while listing: the next look sees the new state
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def changed(self) -> bool:
        """Whether the files differ from what was last loaded or refused."""
        return self.fingerprint() != self._seen

    @property
    def engine(self) -> Engine:
        return self.current.engine

    def reload(self) -> Reload:
        with self._lock:
            generation = self.current.generation
            self._seen = self.fingerprint()  # taken before reading: a later edit is seen later
            try:
                engine = Engine.from_path(self.paths, backend=self.backend)
            except ErrorGroup as exc:
                return Reload(False, generation, tuple(str(e) for e in exc.errors))
            except RefundryError as exc:
                return Reload(False, generation, (str(exc),))
            # Old engines are not closed: a request may still be evaluating with one, and a
            # compiled engine holds nothing outside Python that the collector would not free.
            self.current = Loaded(engine, generation + 1, dt.datetime.now(dt.UTC))
            return Reload(True, generation + 1)
