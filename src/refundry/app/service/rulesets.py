"""The engine in force, and reloading it without a restart.

A reload builds a whole new ``Engine`` from the same paths first; only when every file
validates does one reference assignment swap it in. A request takes the engine once at its
start, so it is decided by one version from beginning to end, and a refused version leaves
the old one serving.
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
        self.current = Loaded(Engine.from_path(self.paths, backend=backend), 1,
                              dt.datetime.now(dt.UTC))

    @property
    def engine(self) -> Engine:
        return self.current.engine

    def reload(self) -> Reload:
        with self._lock:
            generation = self.current.generation
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
