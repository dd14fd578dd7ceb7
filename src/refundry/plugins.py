"""The plugin manager and the typed facade over its hooks.

``make_plugin_manager()`` builds a fresh manager every time (no manager exists at import time):
the plugins of the ``refundry`` entry point group first, then refundry's own built-ins through
the very same hooks, then ``check_pending()`` so a misspelt hook fails at start-up, not halfway
through a batch. ``Plugins`` wraps it with typed methods; each calls the implementations one by
one so that any failure is reported with the plugin's name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Protocol

import attrs
import pluggy

from . import hookspecs
from .errors import RefundryError
from .models import Decision, RefundRequest, json_default
from .money import minor_units

ENTRY_POINT_GROUP = "refundry"
BUILTIN = "refundry"


class PluginError(RefundryError):
    """A plugin failed to load or raised; ``plugin`` names it."""

    def __init__(self, plugin: str, message: str, **kw: Any) -> None:
        self.plugin = plugin
        super().__init__(f"plugin `{plugin}`: {message}", **kw)


class SourceError(RefundryError):
    """A source cannot run at all (a missing option, an unreadable file); not one bad record."""


# --- what plugins provide -------------------------------------------------------------------


@attrs.frozen
class SourceRecord:
    """One record a source read: ``request`` (a canonical request dict) or ``error`` (why the
    record cannot become one; it goes to the dead-letter output), never both."""

    ref: str
    request: dict[str, Any] | None = None
    error: str | None = None


ReadFn = Callable[[Path, Mapping[str, str]], Iterable[SourceRecord]]


@attrs.frozen
class Source:
    """A named reader: ``read(path, options)`` yields a ``SourceRecord`` per input record.

    ``read`` raises ``SourceError`` when it cannot start (e.g. a required option is missing);
    a record it cannot map is a ``SourceRecord`` with ``error``, never an exception.
    ``options`` documents each option the source reads (name -> one-line description).
    """

    name: str
    read: ReadFn
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    plugin: str = ""


class SinkWriter(Protocol):
    """What ``Sink.open`` returns. ``write`` must be idempotent per ``request_id``: a run that
    was killed after writing but before journalling a decision writes it again on resume."""

    def write(self, decision: Decision, request: RefundRequest, ref: str) -> None: ...

    def close(self) -> None: ...


OpenFn = Callable[[Path | None, Mapping[str, str]], SinkWriter]


@attrs.frozen
class Sink:
    """A named writer: ``open(path, options)`` (``path`` is ``--out``, ``None`` for stdout)."""

    name: str
    open: OpenFn
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict)
    plugin: str = ""


# --- helpers for adapters ---------------------------------------------------------------------


def option(options: Mapping[str, str], name: str, source: str, default: str | None = None) -> str:
    """``options[name]``, else ``default``; raises ``SourceError`` naming the ``--option`` when
    neither is there, so a whole batch never runs on a guessed client or jurisdiction."""
    value = options.get(name, default)
    if value is None or not str(value).strip():
        raise SourceError(f"source `{source}` needs `--option {name}=...`")
    return str(value)


def from_minor_units(amount: int, currency: str) -> Decimal:
    """Stripe-style integer minor units to a decimal amount (``100 usd`` -> ``1.00``, ``100 jpy``
    -> ``100``). Raises ``KeyError`` for an unknown currency, ``TypeError`` for a non-integer."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError("amount in minor units must be an integer")
    return Decimal(amount).scaleb(-minor_units(currency))


def to_minor_units(amount: Decimal, currency: str) -> int:
    """The inverse of ``from_minor_units``; raises ``ValueError`` when ``amount`` has more
    decimals than the currency has minor units (it is never rounded silently)."""
    scaled = amount.scaleb(minor_units(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"`{amount}` has more decimals than {currency.upper()} allows")
    return int(scaled)


def epoch_to_rfc3339(seconds: int) -> str:
    """Unix seconds (UTC) to RFC 3339 with an explicit ``+00:00`` offset."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError("a unix time must be an integer")
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def record_error(exc: BaseException) -> str:
    """One lower-case line saying why a record could not be mapped, for its dead letter.

    Sources catch every exception per record: a malformed payload (a list where an object
    belongs, a number where text belongs) is that record's problem, never the batch's.
    """
    if isinstance(exc, KeyError):
        return f"field `{str(exc.args[0])[:60]}` is missing"
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, ValueError) and text:
        return text
    return f"malformed payload ({type(exc).__name__}: {text})" if text else \
        f"malformed payload ({type(exc).__name__})"


def money_text(value: object, currency: str) -> str:
    """An amount as a canonical decimal string at the currency's minor unit (``"348.0"`` ->
    ``"348.00"``). Raises ``ValueError`` for floats, non-numbers, or more decimals than the
    currency has: an amount is never rounded on the way in."""
    if isinstance(value, (bool, float)):
        raise ValueError(f"`{value}` must be read as a decimal, not a float")
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (str, int, Decimal)) else None
    except ArithmeticError:
        amount = None
    if amount is None or not amount.is_finite():
        raise ValueError(f"`{str(value)[:40]}` is not a decimal amount")
    exp = Decimal(1).scaleb(-minor_units(currency))
    quantized = amount.quantize(exp)
    if quantized != amount:
        raise ValueError(f"`{value}` has more decimals than {currency.upper()} allows")
    return str(quantized)


def day_start(day: str, zone: str) -> str:
    """A date without a time (``2014-08-16``) as the start of that day in ``zone``, RFC 3339:
    formats such as FHIR ``date`` and X12 ``CCYYMMDD`` state days, not instants."""
    from zoneinfo import ZoneInfo

    text = day.strip()
    if len(text) == 8 and text.isdigit():
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"
    d = dt.date.fromisoformat(text)
    return dt.datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(zone)).isoformat()


def request_defaults(options: Mapping[str, str], source: str, industry: str, *,
                     jurisdiction: str | None = None) -> dict[str, Any]:
    """The canonical fields no payload carries, from the run's options: ``client_id``
    (required), ``jurisdiction`` (required unless the format implies one), ``timezone``."""
    out: dict[str, Any] = {
        "client_id": option(options, "client_id", source),
        "industry": industry,
        "jurisdiction": option(options, "jurisdiction", source, jurisdiction),
    }
    if options.get("timezone"):
        out["timezone"] = options["timezone"]
    return out


def zone_for(request: Mapping[str, Any]) -> str:
    """The IANA zone a date-only value is read in: the request's ``timezone`` or its
    jurisdiction's default (UTC when there is none; ``parse_request`` then asks for one)."""
    from . import jurisdictions

    zone = request.get("timezone") or jurisdictions.default_timezone(str(request["jurisdiction"]))
    return zone or "UTC"


def iter_json_documents(path: Path) -> Iterable[tuple[str, Any, str | None]]:
    """``(name, document, error)`` for a ``.json`` file, each line of a ``.jsonl``/``.ndjson``
    file, or every such file in a directory (sorted). Numbers are read as ``Decimal``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".ndjson"))
    else:
        files = [path]
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceError(f"cannot read `{file}`: {(exc.strerror or str(exc)).lower()}") from None
        if file.suffix in (".jsonl", ".ndjson"):
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    yield _decode(f"{file.name}:{number}", line)
        else:
            yield _decode(file.name, text)


def iter_api_objects(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(ref, object, error)`` for every object in the input, with API list envelopes
    (``{"object": "list", "data": [...]}``) and JSON arrays unwrapped, as Stripe and similar
    APIs return them. An object is yielded as found; the source decides what it accepts."""
    for name, doc, error in iter_json_documents(path):
        if error:
            yield name, None, error
        elif isinstance(doc, dict) and doc.get("object") == "list":
            for i, obj in enumerate(doc.get("data") or []):
                yield f"{name}#data[{i}]", obj, None
        elif isinstance(doc, list):
            for i, obj in enumerate(doc):
                yield f"{name}[{i}]", obj, None
        else:
            yield name, doc, None


def _decode(name: str, text: str) -> tuple[str, Any, str | None]:
    try:
        return name, json.loads(text, parse_float=Decimal), None
    except json.JSONDecodeError as exc:
        return name, None, f"{name}:{exc.lineno}:{exc.colno}: invalid json: {exc.msg.lower()}"


class JsonLinesWriter:
    """Append-only JSON lines, each keyed (e.g. by ``request_id``), safe to re-open after a kill.

    Opening an existing file drops a torn last line and remembers the keys already written, so
    writing the same key again is a no-op: that is what makes a resumed run exactly-once.
    """

    def __init__(self, path: Path | None, key: str, *, stream: IO[str] | None = None) -> None:
        self.path = path
        self.key = key
        self.seen: set[str] = set()
        if path is None:
            self._fh: IO[str] = stream if stream is not None else _stdout()
            self._owned = False
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._repair(path)
        self._fh = path.open("a", encoding="utf-8")
        self._owned = True

    def _repair(self, path: Path) -> None:
        with path.open("r+b") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                fh.truncate(end)
        for line in data[:end].splitlines():
            try:
                value = json.loads(line).get(self.key)
            except (ValueError, AttributeError):
                continue
            if isinstance(value, str):
                self.seen.add(value)

    def write(self, obj: Mapping[str, Any]) -> bool:
        """Write ``obj`` unless its key was written before; returns whether it wrote."""
        key = obj.get(self.key)
        if isinstance(key, str):
            if key in self.seen:
                return False
            self.seen.add(key)
        self._fh.write(json.dumps(obj, ensure_ascii=False, sort_keys=False, default=json_default)
                       + "\n")
        self._fh.flush()
        return True

    def write_line(self, key: str, line: str) -> bool:
        """Write an already serialised JSON line (e.g. with exact decimals as numbers) under
        ``key``, which must be the line's own value of the key field."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self._fh.write(line + "\n")
        self._fh.flush()
        return True

    def close(self) -> None:
        if self._owned:
            self._fh.close()
        else:
            self._fh.flush()


def _stdout() -> IO[str]:
    import sys

    return sys.stdout


# --- the manager ------------------------------------------------------------------------------


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None


def make_plugin_manager(*, entry_points: bool = True,
                        extra: Iterable[tuple[str, object]] = ()) -> pluggy.PluginManager:
    """A new plugin manager: entry-point plugins, then ``extra`` (name, plugin) pairs, then the
    built-ins; every hook implementation is checked against the specs.

    Raises ``PluginError`` naming the plugin that cannot be imported or registered.
    """
    from . import builtin_plugins

    pm = pluggy.PluginManager(hookspecs.NAME)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error is the plugin's
                raise PluginError(ep.name, f"cannot be loaded from `{ep.value}`: "
                                  f"{type(exc).__name__}: {exc}") from None
            _register(pm, plugin, ep.name)
    for name, plugin in extra:
        _register(pm, plugin, name)
    _register(pm, builtin_plugins, BUILTIN)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or "?"
        raise PluginError(name, " ".join(str(exc).split())) from None
    return pm


def _distributions() -> dict[str, PluginInfo]:
    """Entry-point name -> the distribution that declares it (what `refundry plugins` shows)."""
    infos = {BUILTIN: PluginInfo(BUILTIN, "refundry", _own_version())}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if ep.name not in infos and dist is not None:
            infos[ep.name] = PluginInfo(ep.name, dist.metadata["Name"], dist.version)
    return infos


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(name, " ".join(str(exc).split())) from None


def _own_version() -> str:
    from . import __version__

    return __version__


class Plugins:
    """The typed facade over ``pm.hook``: what the runner and the CLI call."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else make_plugin_manager()
        self._sources: dict[str, Source] | None = None
        self._sinks: dict[str, Sink] | None = None
        # Looked up once: the per-record hooks would otherwise walk pluggy's lists every time.
        self._impl_cache: dict[str, list[tuple[str, Callable[..., Any]]]] = {}

    def _impls(self, hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
        found = self._impl_cache.get(hook_name)
        if found is None:
            caller = getattr(self.pm.hook, hook_name)
            # pluggy calls the last registered (and tryfirst) implementations first; keep that.
            found = [(impl.plugin_name, impl.function) for impl in reversed(caller.get_hookimpls())
                     if not (impl.hookwrapper or impl.wrapper)]
            self._impl_cache[hook_name] = found
        return found

    def _collect(self, hook_name: str, kind: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for plugin, fn in self._impls(hook_name):
            try:
                items = list(fn() or ())
            except Exception as exc:  # noqa: BLE001 - name the plugin, whatever it raised
                raise PluginError(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}") from None
            for item in items:
                if item.name in found:
                    raise PluginError(plugin, f"{kind} `{item.name}` is already provided by "
                                      f"plugin `{found[item.name].plugin}`")
                found[item.name] = attrs.evolve(item, plugin=plugin)
        return found

    @property
    def sources(self) -> dict[str, Source]:
        if self._sources is None:
            self._sources = self._collect("refundry_sources", "source")
        return self._sources

    @property
    def sinks(self) -> dict[str, Sink]:
        if self._sinks is None:
            self._sinks = self._collect("refundry_sinks", "sink")
        return self._sinks

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            raise SourceError(f"no source `{name}`; installed: "
                              f"{', '.join(sorted(self.sources)) or 'none'}") from None

    def sink(self, name: str) -> Sink:
        try:
            return self.sinks[name]
        except KeyError:
            raise SourceError(f"no sink `{name}`; installed: "
                              f"{', '.join(sorted(self.sinks)) or 'none'}") from None

    def enrich(self, request: Mapping[str, Any], ref: str,
               options: Mapping[str, str]) -> dict[str, Any]:
        """The request with every enricher's additions merged; raises ``PluginError``."""
        merged = dict(request)
        facts = dict(merged.get("facts") or {})
        for plugin, fn in self._impls("refundry_enrich_request"):
            try:
                extra = fn(request=_ReadOnly(merged), ref=ref, options=options)
            except Exception as exc:  # noqa: BLE001
                raise PluginError(plugin, f"refundry_enrich_request raised "
                                  f"{type(exc).__name__}: {exc}") from None
            if extra is None:
                continue
            if not isinstance(extra, Mapping):
                raise PluginError(plugin, "refundry_enrich_request must return a mapping or None")
            for key, value in extra.items():
                if key == "facts" and isinstance(value, Mapping):
                    for fk, fv in value.items():
                        facts.setdefault(fk, fv)
                elif key not in merged or merged[key] is None:
                    merged[key] = value
        if facts:
            merged["facts"] = facts
        return merged

    def _notify(self, hook_name: str, **kwargs: Any) -> list[PluginError]:
        errors = []
        for plugin, fn in self._impls(hook_name):
            try:
                fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a listener never breaks the batch
                errors.append(PluginError(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}"))
        return errors

    def decision_written(self, decision: Decision, request: RefundRequest, ref: str,
                         sinks: Sequence[str]) -> list[PluginError]:
        return self._notify("refundry_decision_written", decision=decision, request=request,
                            ref=ref, sinks=tuple(sinks))

    def dead_letter_written(self, ref: str, reason: str, request_id: str | None) -> list[PluginError]:
        return self._notify("refundry_dead_letter_written", ref=ref, reason=reason,
                            request_id=request_id)

    def record_written(self, event: Mapping[str, Any]) -> list[PluginError]:
        return self._notify("refundry_record_written", event=event)

    def describe(self) -> list[dict[str, Any]]:
        """What ``refundry plugins`` prints: each plugin, its hooks, sources and sinks."""
        infos = _distributions()
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: (np[0] == BUILTIN, np[0])):
            caller_names = sorted(c.name for c in self.pm.get_hookcallers(plugin) or ())
            info = infos.get(name, PluginInfo(name, None, None))
            out.append({
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": caller_names,
                "sources": [_describe(s) for s in sorted(self.sources.values(), key=lambda s: s.name)
                            if s.plugin == name],
                "sinks": [_describe(s) for s in sorted(self.sinks.values(), key=lambda s: s.name)
                          if s.plugin == name],
            })
        return out


def _describe(item: Source | Sink) -> dict[str, Any]:
    return {"name": item.name, "description": item.description, "options": dict(item.options)}


class _ReadOnly(Mapping[str, Any]):
    """The request as enrichers see it: they return additions, they do not edit it in place."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# --- `refundry plugins` -----------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    print(json.dumps(Plugins().describe(), indent=2, ensure_ascii=False))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plugins", help="list installed plugins, their hooks, sources "
                              "and sinks as JSON")
    p.set_defaults(func=cmd_plugins)

