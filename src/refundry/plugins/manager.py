"""The plugin manager and the typed facade over its hooks.

``make_plugin_manager()`` builds a fresh manager every time (no manager exists at import time):
the plugins of the ``refundry`` entry point group first, then refundry's own built-ins through
the very same hooks, then ``check_pending()`` so a misspelt hook fails at start-up, not halfway
through a batch. ``Plugins`` wraps it with typed methods; each calls the implementations one by
one so that any failure is reported with the plugin's name.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from refundry.core.models import Decision, RefundRequest
from refundry.plugins import spec as hookspecs
from refundry.plugins.types import PluginError, Sink, Source, SourceError

ENTRY_POINT_GROUP = "refundry"
BUILTIN = "refundry"


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
    from refundry.plugins import builtin as builtin_plugins

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
    from refundry import __version__

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
