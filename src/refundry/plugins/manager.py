"""The plugin manager and the typed facade over its hooks.

``make_plugin_manager()`` builds a fresh manager every time (no manager exists at import time):
the plugins of the ``refundry`` entry point group first, then refundry's own built-ins through
the very same hooks, then ``check_pending()`` so a misspelt hook fails at start-up, not halfway
through a batch. ``Plugins`` wraps it with typed methods; each calls the implementations one by
one so that any failure is reported with the plugin's name.
"""
from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import pluggy

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import spec as hookspecs
from refundry.plugins.types import Option, PluginError, Sink, Source, SourceError, as_options

ENTRY_POINT_GROUP = "refundry"
BUILTIN = "refundry"
T = TypeVar("T")


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None


def make_plugin_manager(*, entry_points: bool = True,
                        extra: Iterable[tuple[str, object]] = (),
                        errors: list[PluginError] | None = None) -> pluggy.PluginManager:
    """A new plugin manager: entry-point plugins, then ``extra`` (name, plugin) pairs, then the
    built-ins; every hook implementation is checked against the specs.

    A plugin that cannot be imported or registered, or implements a misspelt hook, raises
    ``PluginError`` naming it; given an ``errors`` list, the error is appended there instead,
    the plugin is left out and every other plugin keeps working.
    """
    from refundry.plugins import builtin as builtin_plugins

    def failed(error: PluginError) -> None:
        if errors is None:
            raise error
        errors.append(error)

    pm = pluggy.PluginManager(hookspecs.NAME)
    pm.add_hookspecs(hookspecs)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue  # the same distribution seen twice on sys.path
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import error is the plugin's
                failed(PluginError(ep.name, f"cannot be loaded from `{ep.value}`: "
                                   f"{type(exc).__name__}: {exc}"))
                continue
            _register(pm, plugin, ep.name, failed)
    for name, plugin in extra:
        _register(pm, plugin, name, failed)
    _register(pm, builtin_plugins, BUILTIN, failed)
    while True:
        try:
            pm.check_pending()
            return pm
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            failed(PluginError(name, " ".join(str(exc).split())))
            pm.unregister(exc.plugin)


def _distributions() -> dict[str, PluginInfo]:
    """Entry-point name -> the distribution that declares it (what `refundry plugins` shows)."""
    infos = {BUILTIN: PluginInfo(BUILTIN, "refundry", _own_version())}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if ep.name not in infos and dist is not None:
            infos[ep.name] = PluginInfo(ep.name, dist.metadata["Name"], dist.version)
    return infos


def _register(pm: pluggy.PluginManager, plugin: object, name: str,
              failed: Callable[[PluginError], None]) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        failed(PluginError(name, " ".join(str(exc).split())))


def _own_version() -> str:
    from refundry import __version__

    return __version__


class Plugins:
    """The typed facade over ``pm.hook``: what the runner and the CLI call."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        # Plugins that failed (to import, to register, or returned a wrong object): each is
        # left out and reported in one line naming it; the others keep working.
        self.errors: list[PluginError] = []
        self.pm = pm if pm is not None else make_plugin_manager(errors=self.errors)
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
        wanted = Source if kind == "source" else Sink
        found: dict[str, Any] = {}
        for plugin, fn in self._impls(hook_name):
            try:
                items = list(fn() or ())
                wrong = [i for i in items if not isinstance(i, wanted)]
                if wrong:
                    raise TypeError(f"returned a {type(wrong[0]).__name__}, not a "
                                    f"refundry.plugins.{wanted.__name__}")
            except Exception as exc:  # noqa: BLE001 - name the plugin, whatever it raised
                self.errors.append(PluginError(plugin, f"{hook_name} raised "
                                               f"{type(exc).__name__}: {exc}"
                                               if not isinstance(exc, TypeError)
                                               else f"{hook_name} {exc}"))
                continue
            for item in items:
                if item.name in found:
                    self.errors.append(PluginError(plugin, f"{kind} `{item.name}` is already "
                                                   f"provided by plugin `{found[item.name].plugin}`;"
                                                   " this one is left out"))
                    continue
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
        return self._named("source", self.sources, name)

    def sink(self, name: str) -> Sink:
        return self._named("sink", self.sinks, name)

    def _named(self, kind: str, installed: Mapping[str, T], name: str) -> T:
        try:
            return installed[name]
        except KeyError:
            raise SourceError(f"no {kind} `{name}`; installed: "
                              f"{', '.join(sorted(installed)) or 'none'}"
                              + self._failed_note()) from None

    def _failed_note(self) -> str:
        names = sorted({e.plugin for e in self.errors})
        return f" (failed to load: {', '.join(f'`{n}`' for n in names)})" if names else ""

    def plugin_options(self) -> list[tuple[str, Option]]:
        """(plugin, option) for every option declared through ``refundry_options``."""
        found = []
        for plugin, fn in self._impls("refundry_options"):
            try:
                found += [(plugin, o) for o in as_options(fn() or ())]
            except Exception as exc:  # noqa: BLE001 - name the plugin, whatever it raised
                raise PluginError(plugin, f"refundry_options raised {type(exc).__name__}: {exc}") from None
        return found

    def check_options(self, options: Mapping[str, str], source: Source,
                      sinks: Sequence[Sink]) -> None:
        """Raise ``SourceError`` (one line) for an option nothing in this run declares, a value
        of the wrong type, or a missing required source option; before any record is read."""
        declared: dict[str, Option] = {}
        items: list[Source | Sink] = [source, *sinks]
        for item in items:
            for opt in item.options:
                declared.setdefault(opt.name, opt)
        for _, opt in self.plugin_options():
            declared.setdefault(opt.name, opt)
        sink_names = {s.name for s in sinks}
        for key, value in options.items():
            if key.startswith("out.") and key[4:] in sink_names:
                continue
            found = declared.get(key)
            if found is None:
                raise SourceError(unknown_option(key, [*declared, *(f"out.{n}" for n in sink_names)],
                                                 source.name))
            problem = found.check(value)
            if problem:
                raise SourceError(problem)
        for opt in source.options:
            if opt.required and not str(options.get(opt.name, "")).strip():
                raise SourceError(f"source `{source.name}` needs `--option {opt.name}=...`")

    def enrich(self, request: Mapping[str, Any], ref: str,
               options: Mapping[str, str]) -> dict[str, Any]:
        """The request with every enricher's additions merged; raises ``PluginError``."""
        merged = dict(request)
        given = merged.get("facts")
        if given is not None and not isinstance(given, Mapping):
            return merged  # the request parser refuses such facts; nothing to merge into
        facts = dict(given or {})
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
            # An enricher that answers from a trusted store (refundry's history) names the
            # fields its answer replaces; every other answer only fills in what is missing.
            replaces = getattr(getattr(fn, "__self__", None), "replaces", ())
            for key, value in extra.items():
                if key == "facts" and isinstance(value, Mapping):
                    for fk, fv in value.items():
                        if "facts" in replaces:
                            facts[fk] = fv
                        else:
                            facts.setdefault(fk, fv)
                elif key in replaces or key not in merged or merged[key] is None:
                    merged[key] = value
        if facts:
            merged["facts"] = facts
        return merged

    def prefetch(self, requests: Sequence[Mapping[str, Any]], *, ahead: bool = False) -> int:
        """Let enrichers that can (a ``prefetch`` method, as refundry's history has) look up a
        prefix of ``requests`` together before ``enrich`` is called for each; returns how many
        (at least one) may be enriched and decided together, before any of them is recorded,
        and the rest only after they are; one when an enricher cannot look ahead. An enricher whose prefetch fails answers
        each request in ``enrich`` instead, where a failure is that request's dead letter.

        ``ahead``: the requests of the previous call are still being decided, not recorded;
        how many may be enriched now all the same, which may be none (then the caller records
        those first and asks without ``ahead``): none unless every enricher can look ahead
        (a ``prefetch`` and ``looks_ahead``), and none when one fails."""
        n = len(requests)
        for _plugin, fn in self._impls("refundry_enrich_request"):
            owner = getattr(fn, "__self__", None)
            prefetch = getattr(owner, "prefetch", None)
            if ahead and (prefetch is None or not getattr(owner, "looks_ahead", False)):
                return 0
            if prefetch is None:
                # It answers when asked, maybe from what was recorded just before: the caller
                # decides and records up to here before that request is enriched.
                return 1
            if n <= 1 and not ahead:
                continue
            try:
                n = min(n, int(prefetch(requests[:n], ahead=True) if ahead
                               else prefetch(requests[:n])))
            except Exception:  # noqa: BLE001 - enrich() reports it, request by request
                n = 0 if ahead else 1
        return n if ahead else max(n, 1)

    def _notify(self, hook_name: str, **kwargs: Any) -> list[PluginError]:
        errors = []
        for plugin, fn in self._impls(hook_name):
            try:
                fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a listener never breaks the batch
                errors.append(PluginError(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}"))
        return errors

    def listens(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name``: a caller need not make what only its
        listeners would be given."""
        return bool(self._impls(hook_name))

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
        sources, sinks = self.sources, self.sinks  # collected first: their errors are listed
        out = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda np: (np[0] == BUILTIN, np[0])):
            caller_names = sorted(c.name for c in self.pm.get_hookcallers(plugin) or ())
            info = infos.get(name, PluginInfo(name, None, None))
            out.append({
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": caller_names,
                "sources": [_describe(s) for s in sorted(sources.values(), key=lambda s: s.name)
                            if s.plugin == name],
                "sinks": [_describe(s) for s in sorted(sinks.values(), key=lambda s: s.name)
                          if s.plugin == name],
                "options": [o.describe() for p, o in self.plugin_options() if p == name],
            })
            errors = [str(e) for e in self.errors if e.plugin == name]
            if errors:
                out[-1]["errors"] = errors
        listed = {p["name"] for p in out}
        for error in self.errors:
            if error.plugin not in listed:
                listed.add(error.plugin)
                info = infos.get(error.plugin, PluginInfo(error.plugin, None, None))
                out.append({"name": error.plugin, "distribution": info.distribution,
                            "version": info.version, "error": str(error)})
        return out


def _describe(item: Source | Sink) -> dict[str, Any]:
    return {"name": item.name, "description": item.description,
            "options": [o.describe() for o in item.options]}


def unknown_option(key: str, known: Sequence[str], source: str) -> str:
    """One line for an option nothing declares, naming the nearest declared one."""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean `{near[0]}`?" if near else \
        f"; `refundry plugins` lists what source `{source}` and the sinks read"
    return f"unknown option `{key}`{hint}"


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
