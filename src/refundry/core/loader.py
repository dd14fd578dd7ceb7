"""Loading rulesets: files -> checked documents -> composed, layered rulesets.

Order of checks, all errors collected before anything is reported: YAML syntax (with duplicate
keys), the JSON schema (``schemas/ruleset.schema.json``), then the semantics no schema can see:
unknown fields and windows, literal types, duplicate rule ids, ``extends`` cycles and missing
bases, versions that collide, baselines that claim the same scope, and any layer that overrides
or undercuts a statutory floor of a layer below it.
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import difflib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import jsonschema_rs
import yaml

from refundry.core import fields as fieldreg
from refundry.core import jurisdictions, yamlsrc
from refundry.core.errors import InvalidRulesets, RulesetError, did_you_mean
from refundry.core.language import (
    All,
    AnyOf,
    Compare,
    Items,
    Literal,
    ParseContext,
    parse_condition,
    positions_of,
)
from refundry.core.language import Node as ConditionNode
from refundry.core.models import INDUSTRIES, Layer, Reason, RulesetRef
from refundry.core.periods import (
    WEEKDAYS,
    CalendarSpec,
    HolidayCalendars,
    Period,
    WorkingDays,
    add_period,
    roll_forward,
)
from refundry.core.resources import schema

if TYPE_CHECKING:  # imported where it is used: only a document with a schema error needs it
    import jsonschema

RULESET_SUFFIXES = (".yaml", ".yml")
TEST_SUFFIXES = (".test.yaml", ".test.yml")
MAX_EXTENDS_DEPTH = 8
MAX_FILE_BYTES = 262_144  # 20 times the largest shipped ruleset; bigger loads are not bounded in time


# --- what a ruleset is made of -------------------------------------------------------------


@attrs.frozen
class PauseDef:
    """Days a clock does not count: from ``start`` to ``until``, capped ``at_most`` after the
    clock's own start (CRA s22(7) repairs; 42 CFR 401.305(b)(2) investigations)."""

    start: str
    until: str
    inclusive: bool = False
    at_most: Period | None = None


@attrs.frozen
class WindowDef:
    name: str
    start: str
    period: Period
    notice: str
    floor: bool
    citation: str
    calendar: CalendarSpec | None = None  # the ruleset's calendar with this window's own keys
    pause: PauseDef | None = None


@attrs.frozen
class DeadlineDef:
    name: str
    citation: str
    start: str | None = None
    period: Period | None = None
    window: str | None = None
    calendar: CalendarSpec | None = None  # set when the deadline has calendar keys of its own
    pause: PauseDef | None = None


@attrs.frozen
class Adjustment:
    kind: str  # deduct | deduct_percent | cap
    path: str | None = None
    value: Decimal | None = None


BASES = ("request", "transaction", "lines")


@attrs.frozen
class ActionDef:
    """An interim step a rule orders (``provisional_credit``): its amount by a base, its due
    date counted like a deadline."""

    type: str
    base: str
    due: DeadlineDef


@attrs.frozen
class Rule:
    id: str
    effect: str
    floor: bool
    when: ConditionNode  # with `lines:` folded in: the rule matches only if some line qualifies
    reason: Reason
    adjustments: tuple[Adjustment, ...]
    deadlines: tuple[DeadlineDef, ...]
    layer: str
    path: str
    line: int
    column: int
    base: str | None = None  # what the amount starts from; None: the requested amount
    lines: ConditionNode | None = None  # the item lines this rule decides; None: every line
    actions: tuple[ActionDef, ...] = ()


@attrs.frozen
class RulesetDoc:
    """One ruleset file, checked on its own; rules are parsed when layers are composed."""

    id: str
    version: str
    effective_from: dt.date
    path: str
    text: str
    digest: str
    data: Any = attrs.field(eq=False, repr=False)
    industry: str | None = None
    jurisdictions: tuple[str, ...] | None = None
    client: str | None = None
    extends: tuple[str, str | None] | None = None
    title: str = ""

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split("."))

    @property
    def layer(self) -> Layer:
        return Layer(self.id, self.version, self.digest)


@attrs.frozen
class CompiledRuleset:
    """A ruleset with every layer it extends folded in, ready for a backend."""

    ref: RulesetRef
    layers: tuple[RulesetDoc, ...]
    industry: str | None
    jurisdictions: tuple[str, ...]
    client: str | None
    calendar: CalendarSpec
    windows: tuple[WindowDef, ...]
    rules: tuple[Rule, ...]
    matcher: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def top(self) -> RulesetDoc:
        return self.layers[-1]

    def paths(self) -> frozenset[str]:
        """The request facts this ruleset reads, so the engine derives no others."""
        out: set[str] = set()
        for rule in self.rules:
            out |= rule.when.paths()
            for adj in rule.adjustments:
                if adj.path:
                    out.add(adj.path)
            for d in (*rule.deadlines, *(a.due for a in rule.actions)):
                if d.start:
                    out.add(d.start)
                if d.pause:
                    out.update((d.pause.start, d.pause.until))
        for w in self.windows:
            out.update((w.start, w.notice))
            if w.pause:
                out.update((w.pause.start, w.pause.until))
        return frozenset(out)


# --- error reporting -----------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.errors: list[RulesetError] = []
        self._seen: set[str] = set()

    def add(self, message: str, path: str, pos: tuple[int, int] | None = (1, 1), *,
            rule_id: str | None = None) -> None:
        line, column = pos if pos is not None else (None, None)
        err = RulesetError(message, path=path, line=line, column=column, rule_id=rule_id)
        if str(err) not in self._seen:
            self._seen.add(str(err))
            self.errors.append(err)

    def extend(self, errors: Iterable[RulesetError]) -> None:
        for err in errors:
            if str(err) not in self._seen:
                self._seen.add(str(err))
                self.errors.append(err)

    def at(self, path: str) -> Any:
        def report(message: str, container: Any, key: Any = None, *, rule_id: str | None = None,
                   value: bool = False) -> None:
            self.add(message, path, positions_of(container, key, value), rule_id=rule_id)
        return report


# --- reading files -------------------------------------------------------------------------


def is_test_file(path: Path) -> bool:
    return path.name.endswith(TEST_SUFFIXES)


def _is_bad_sample(path: Path) -> bool:
    stem = path.name.split(".")[0]
    return stem.endswith("_bad")


def discover(paths: Iterable[str | Path], *, tests: bool = False) -> list[Path]:
    """Ruleset files (or test files) under each path. In a directory, files and folders whose
    name ends in ``_bad`` are deliberately broken samples and are skipped; name one to load it."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p).parts
                if any(part.startswith(".") or part.split(".")[0].endswith("_bad") for part in rel):
                    continue
                if f.is_file() and f.name.endswith(RULESET_SUFFIXES) and is_test_file(f) == tests:
                    found.append(f)
        elif p.is_file() or not p.exists():
            found.append(p)
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def read_yaml(path: Path, report: Report) -> tuple[str, Any] | None:
    shown = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        report.add(f"cannot read the file: {exc.strerror or exc}".lower(), shown, None)
        return None
    if len(raw) > MAX_FILE_BYTES:
        report.add(f"the file is larger than {MAX_FILE_BYTES} bytes", shown)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(f"the file is not utf-8 (byte {exc.start})", shown)
        return None
    try:
        data = yamlsrc.load(text)
    except yaml.YAMLError as exc:
        report.add(yamlsrc.error_message(exc), shown, yamlsrc.error_pos(exc))
        return None
    except RecursionError:
        report.add("the yaml nests too deeply", shown)
        return None
    return text, data


def _jsonable(value: Any, decimal: Callable[[Decimal], Any] | None = None) -> Any:
    """The document as JSON Schema reads it: dates as text; ``decimal`` maps each ``Decimal``."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v, decimal) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v, decimal) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if decimal is not None and isinstance(value, Decimal):
        return decimal(value)
    return value


class _NotPlain(Exception):
    """A value the fast check could read differently from ``jsonschema``."""


def _exact_float(value: Decimal) -> float:
    """A decimal as ``jsonschema_rs`` reads it as ``jsonschema`` reads the ``Decimal``: the
    float equal to it; one no float equals, or an integral one (``3.0``: an integer to the
    Rust checker, not to ``jsonschema``), is not sent at all."""
    as_float = float(value)
    if value == value.to_integral_value() or Decimal(as_float) != value:
        raise _NotPlain
    return as_float


@functools.cache
def _fast_validator() -> Any:
    full = copy.deepcopy(schema("ruleset.schema.json"))
    full["$defs"]["condition"] = True
    return jsonschema_rs.validator_for(full)


def _known_valid(data: Any) -> bool:
    """True when the compiled (Rust) checker finds no error. It only ever sees values it reads
    as ``jsonschema`` does, and its patterns end at the end of the text (``$``), never looser
    than Python's; so when it finds none, ``jsonschema`` would find none either. Any other
    answer (an error, a value it cannot take) leaves the verdict and the messages to
    ``jsonschema``, whose import a valid document then never pays (a third of a one-shot's
    imports)."""
    try:
        return bool(_fast_validator().is_valid(_jsonable(data, _exact_float)))
    except Exception:  # noqa: BLE001 - _NotPlain, or a key or value the Rust side refuses
        return False


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The ruleset schema without its condition grammar. Errors under ``when`` are left to the
    condition parser, which says more; validating conditions here only cost time (80 % of a
    load: every condition was tried against each ``oneOf`` branch), so they are not checked
    twice. Editors still get the full grammar from the file."""
    full = copy.deepcopy(schema("ruleset.schema.json"))  # the cached schema is shared
    full["$defs"]["condition"] = True
    import jsonschema

    return jsonschema.Draft202012Validator(_inline_refs(full, full["$defs"], ()))


def _inline_refs(node: Any, defs: Mapping[str, Any], inside: tuple[str, ...]) -> Any:
    """The schema with each bare ``{"$ref": "#/$defs/x"}`` replaced by ``x`` itself: jsonschema
    looks a reference up in its registry on every instance it checks, a third of validating a
    file of 400 rules. A definition that refers to itself keeps its reference."""
    if isinstance(node, list):
        return [_inline_refs(v, defs, inside) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if len(node) == 1 and isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in defs and name not in inside:
            return _inline_refs(defs[name], defs, (*inside, name))
    return {k: _inline_refs(v, defs, inside) for k, v in node.items()}


def _schema_errors(data: Any, path: str, report: Report) -> bool:
    if _known_valid(data):
        return True
    found = []
    for error in _validator().iter_errors(_jsonable(data)):
        where = list(error.absolute_path)
        # Conditions get better messages from the condition parser itself.
        if "when" in where or (len(where) > 2 and where[0] == "rules" and where[2] == "lines"):
            continue
        if error.context:
            error = min(error.context, key=lambda e: (-len(e.absolute_path), len(e.message)))
            where = list(error.absolute_path)
        found.append((error, where))
    # A key that is misspelt (`efect`) or indented under another key is reported once, as that;
    # the "missing required key" it causes is the same mistake seen from the other side.
    explained = {(tuple(w), k) for e, w in found for k in _misplaced_keys(e, _locate_value(data, w))}
    for error, where in found:
        if error.validator == "required" and (tuple(where), _missing_key(error)) in explained:
            continue
        message, container, key, value = _friendly(error, data, where)
        report.add(message, path, positions_of(container, key, value),
                   rule_id=_rule_id_at(data, where))
    return not found


def _locate(data: Any, where: Sequence[Any]) -> tuple[Any, Any]:
    container, key = data, None
    for step in where:
        if key is not None:
            try:
                container = container[key]
            except (KeyError, IndexError, TypeError):
                break
        key = step
    return container, key


def _locate_value(data: Any, where: Sequence[Any]) -> Any:
    node = data
    for step in where:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _missing_key(error: jsonschema.ValidationError) -> str | None:
    return error.message.split("'")[1] if "'" in error.message else None


def _misplaced_keys(error: jsonschema.ValidationError, node: Any) -> list[str]:
    """The required keys an unknown key stands for: a near spelling of a missing required key."""
    if error.validator != "additionalProperties" or not isinstance(node, Mapping):
        return []
    props = error.schema.get("properties", {})
    missing = [k for k in error.schema.get("required", ()) if k not in node]
    extra = [k for k in node if k not in props and isinstance(k, str)]
    return [m for m in missing if difflib.get_close_matches(m, extra, n=1, cutoff=0.75)]


def _rule_id_at(data: Any, where: Sequence[Any]) -> str | None:
    if len(where) >= 2 and where[0] == "rules" and isinstance(data, Mapping):
        try:
            rid = data["rules"][where[1]].get("id")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return rid if isinstance(rid, str) else None
    return None


def _shown(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return f"a {'mapping' if isinstance(value, Mapping) else 'list'}"
    return str(value)[:60].encode("ascii", "backslashreplace").decode()


def _friendly(error: jsonschema.ValidationError, data: Any,
              where: Sequence[Any]) -> tuple[str, Any, Any, bool]:
    """The message, and the container and key whose position the error is reported at."""
    node = _locate_value(data, where)
    container, key = _locate(data, where)
    name = f"`{key}`" if isinstance(key, str) else "this value"
    v = error.validator
    if v == "additionalProperties" and isinstance(node, Mapping):
        props = error.schema.get("properties", {})
        extra = [k for k in node if k not in props]
        bad = extra[0] if extra else key
        return f"unknown key `{bad}`{did_you_mean(bad, props)}", node, bad, False
    if v == "required" and isinstance(node, Mapping):
        missing = _missing_key(error) or "a key"
        nested = _nested_under(node, missing)
        if nested is not None:
            parent, inner = nested
            return (f"`{missing}` is indented under `{parent}`, so it belongs to `{parent}`; "
                    f"line it up with `{next(iter(node))}` to make it a key of its own",
                    inner, missing, False)
        return f"missing required key `{missing}`", container, key, False
    # A hostile file can hold a value of megabytes: messages show at most a short prefix.
    shown = _shown(error.instance)
    if v == "enum":
        return (f"{name} is `{shown}`; expected one of: "
                f"{', '.join(map(str, error.validator_value))}"
                f"{did_you_mean(shown, map(str, error.validator_value))}"), container, key, True
    if v == "type":
        return f"{name} must be {error.validator_value}, not `{shown}`", container, key, True
    if v == "pattern" and error.schema.get("x-refundry-kind") == "period":
        try:
            Period.parse(error.instance)
        except ValueError as exc:
            return str(exc), container, key, True
    if v == "pattern":
        return f"{name} `{shown}` is not well formed", container, key, True
    if v == "maxLength":
        return f"{name} is longer than {error.validator_value} characters", container, key, True
    if v == "format":
        return f"{name} `{shown}` is not a {error.validator_value}", container, key, True
    if v in ("minItems", "minProperties", "maxProperties"):
        return f"{name} has too few or too many entries", container, key, True
    return " ".join(error.message.split())[:200], container, key, True


def _nested_under(node: Mapping[str, Any], missing: str) -> tuple[str, Any] | None:
    """The key whose value holds ``missing``: the analyst indented it one level too deep."""
    for parent, value in node.items():
        if isinstance(value, Mapping) and missing in value:
            return parent, value
    return None


def load_document(path: Path, report: Report) -> RulesetDoc | None:
    read = read_yaml(path, report)
    if read is None:
        return None
    text, data = read
    shown = str(path)
    if not isinstance(data, yamlsrc.LocDict):
        report.add("a ruleset file must be a mapping with `ruleset`, `version`, "
                   "`effective_from` and `rules`", shown)
        return None
    if not _schema_errors(data, shown, report):
        return None
    # Schema-valid: each field has its shape; only semantics are left.
    eff = data["effective_from"]
    if not isinstance(eff, dt.date):
        try:
            eff = dt.date.fromisoformat(str(eff))
        except ValueError:
            report.add(f"`effective_from` `{eff}` is not a date", shown, data.vpos("effective_from"))
            return None
    extends = None
    if "extends" in data:
        base, _, pin = data["extends"].partition("@")
        extends = (base, pin or None)
    if data.get("client") is not None:
        _check_floor_authority(data, shown, report)
    scopes = data.get("jurisdictions")
    if scopes is not None:
        for i, scope in enumerate(scopes):
            if not jurisdictions.valid_scope(scope):
                report.add(f"`{scope}` is not a known country or subdivision code", shown, scopes.pos(i))
    return RulesetDoc(
        id=data["ruleset"], version=data["version"], effective_from=eff, path=shown, text=text,
        digest="sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest(), data=data,
        industry=data.get("industry"), jurisdictions=tuple(scopes) if scopes else None,
        client=data.get("client"), extends=extends, title=data.get("title", ""),
    )


def _check_floor_authority(data: Any, shown: str, report: Report) -> None:
    """Statutory floors come from the law, so only a baseline (no `client`) may declare one: a
    client that could mark its own rule a floor could deny or cut a statutory refund with it."""
    why = "a client ruleset cannot declare a statutory floor; only baselines (no `client`) can"
    for raw in data.get("rules") or ():
        if raw.get("floor") is True:
            report.add(why, shown, raw.pos("floor"), rule_id=raw.get("id"))
    for name, spec in (data.get("windows") or {}).items():
        if isinstance(spec, yamlsrc.LocDict) and spec.get("floor") is True:
            report.add(f"window `{name}`: {why}", shown, spec.pos("floor"))


# --- composing layers ----------------------------------------------------------------------


_STANDARD_CALENDAR = CalendarSpec()


def _calendar(layers: Sequence[RulesetDoc]) -> CalendarSpec:
    merged: dict[str, Any] = {}
    for doc in layers:
        merged.update(doc.data.get("calendar") or {})
    return _calendar_spec(merged)


def _own_calendar(base: CalendarSpec, raw: Any) -> CalendarSpec:
    """A window's or deadline's own `calendar` keys over the ruleset's calendar: one regime
    (a federal clock) can count its way inside a ruleset whose other clocks count another way."""
    merged: dict[str, Any] = {"weekend": [WEEKDAYS[d] for d in sorted(base.weekend)],
                              "holidays": base.holidays, "period_end": base.period_end}
    merged.update(raw or {})
    return _calendar_spec(merged)


def _calendar_spec(merged: Mapping[str, Any]) -> CalendarSpec:
    weekend = frozenset(WEEKDAYS.index(d) for d in merged.get("weekend", ("saturday", "sunday")))
    return CalendarSpec(weekend=weekend, holidays=merged.get("holidays", "consumer"),
                        period_end=merged.get("period_end", "as_is"))


def _check_time_field(path: str, report: Report, doc: RulesetDoc, container: Any, key: Any,
                      rule_id: str | None = None) -> bool:
    info = fieldreg.lookup(path)
    if info is None or info.kind not in ("instant", "date"):
        times = [f.path for f in fieldreg.request_fields().values() if f.kind in ("instant", "date")]
        report.add(f"`{path}` is not a time field of the request{did_you_mean(path, times)}", doc.path,
                   positions_of(container, key, True), rule_id=rule_id)
        return False
    return True


def _windows(layers: Sequence[RulesetDoc], calendar: CalendarSpec, report: Report,
             probe: HolidayCalendars) -> dict[str, WindowDef]:
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[RulesetDoc, Any]] = {}
    floors: dict[str, tuple[RulesetDoc, int]] = {}  # window -> layer that made it a floor
    for index, doc in enumerate(layers):
        for name, spec in (doc.data.get("windows") or {}).items():
            if name in floors:
                floor_doc, _ = floors[name]
                for key in ("from", "notice", "pause"):
                    if key in spec and spec[key] != merged[name].get(key, "requested_at" if key == "notice" else None):
                        report.add(f"window `{name}` is a statutory floor of `{floor_doc.id}`; "
                                   f"its `{key}` cannot change", doc.path, spec.pos(key))
                if spec.get("floor") is False:
                    report.add(f"window `{name}` is a statutory floor of `{floor_doc.id}`; "
                               "it cannot be un-marked", doc.path, spec.pos("floor"))
            merged[name] = {**merged.get(name, {}), **spec}
            origin[name] = (doc, spec)
            if spec.get("floor") and name not in floors:
                floors[name] = (doc, index)
    out: dict[str, WindowDef] = {}
    for name, spec in merged.items():
        doc, raw = origin[name]
        if "from" not in spec or "period" not in spec:
            report.add(f"window `{name}` needs `from` and `period`", doc.path, raw.pos())
            continue
        try:
            period = Period.parse(spec["period"])
        except ValueError as exc:
            report.add(str(exc), doc.path, raw.vpos("period") if "period" in raw else raw.pos())
            continue
        ok = _check_time_field(spec["from"], report, doc, raw, "from")
        notice = spec.get("notice", "requested_at")
        ok = _check_time_field(notice, report, doc, raw, "notice") and ok
        pause_ok, pause = _pause(spec.get("pause"), report, doc)
        if not ok or not pause_ok:
            continue
        out[name] = WindowDef(name, spec["from"], period, notice, bool(spec.get("floor")),
                              str(spec.get("citation", "")),
                              _own_calendar(calendar, spec.get("calendar")), pause)
    for name, (floor_doc, index) in floors.items():
        if name not in out or index == len(layers) - 1:
            continue
        below = _windows(layers[: index + 1], _calendar(layers[: index + 1]), Report(), probe)
        if name in below:
            _check_not_shorter(below[name], _calendar(layers[: index + 1]), out[name], calendar,
                               layers, floor_doc, report, probe)
    return out


def _check_not_shorter(base: WindowDef, base_cal: CalendarSpec, mine: WindowDef,
                       cal: CalendarSpec, layers: Sequence[RulesetDoc], floor_doc: RulesetDoc,
                       report: Report, probe: HolidayCalendars) -> None:
    """A floor window may only get longer: compare both ends over two years of start dates."""
    base_cal = base.calendar or base_cal
    cal = mine.calendar or cal
    if base == mine and base_cal == cal:
        return
    country = _probe_country(layers)

    def working(spec: CalendarSpec) -> WorkingDays:
        code = country if spec.holidays == "consumer" else (None if spec.holidays == "none" else spec.holidays)
        if code is None:
            return WorkingDays(spec.weekend, lambda _y: frozenset())
        c, sub = jurisdictions.split(code)
        return WorkingDays(spec.weekend, lambda y: probe.dates(c, sub, y))

    wb, wm = working(base_cal), working(cal)
    start = dt.date(2024, 1, 1)
    for offset in range(0, 731):
        day = start + dt.timedelta(days=offset)
        end_base = _end(base.period, day, wb, base_cal)
        end_mine = _end(mine.period, day, wm, cal)
        if end_base is not None and end_mine is not None and end_mine < end_base:
            top = layers[-1]
            raw = (top.data.get("windows") or {}).get(mine.name)
            pos = raw.vpos("period") if raw is not None and "period" in raw else (
                top.data.pos("calendar") if "calendar" in top.data else top.data.pos())
            report.add(
                f"window `{mine.name}` undercuts the statutory floor of `{floor_doc.id}`: from "
                f"{day.isoformat()} it ends {end_mine.isoformat()}, before {end_base.isoformat()}",
                top.path, pos)
            return


def _end(period: Period, start: dt.date, working: WorkingDays, cal: CalendarSpec) -> dt.date | None:
    rolls = cal.period_end == "next_working_day"
    end = add_period(period, start, working, closing_day=15, roll=rolls)
    if end is not None and rolls:
        end = roll_forward(end, working)
    return end


def _probe_country(layers: Sequence[RulesetDoc]) -> str | None:
    for doc in reversed(layers):
        for scope in doc.jurisdictions or ():
            if scope == "EU":
                return "DE"
            if scope != "*":
                return scope
    return None


def _adjustments(raw: Any, doc: RulesetDoc, rule_id: str,
                 report: Report) -> tuple[str | None, tuple[Adjustment, ...]]:
    out = []
    base = None
    for index, adj in enumerate(raw or ()):
        (kind, value), = adj.items()
        if kind == "base":
            if index != 0:
                report.add("`base` comes first: it is what the deductions and caps apply to",
                           doc.path, adj.pos(kind), rule_id=rule_id)
            base = value
        elif kind == "deduct_percent":
            out.append(Adjustment(kind, value=Decimal(value)))
        elif isinstance(value, str):
            info = fieldreg.lookup(value)
            if info is None or info.kind not in ("money", "any"):
                report.add(f"`{kind}` needs an amount field; `{value}` is not one", doc.path,
                           adj.vpos(kind), rule_id=rule_id)
                continue
            out.append(Adjustment(kind, path=value))
        else:
            out.append(Adjustment(kind, value=Decimal(value)))
    return base, tuple(out)


def _actions(raw: Any, doc: RulesetDoc, rule_id: str, report: Report,
             calendar: CalendarSpec) -> tuple[ActionDef, ...]:
    out = []
    for spec in raw or ():
        due = _deadlines([spec], doc, rule_id, {}, report, calendar)
        if due:
            out.append(ActionDef(spec["type"], spec.get("amount", "request"), due[0]))
    return tuple(out)


def _deadlines(raw: Any, doc: RulesetDoc, rule_id: str, windows: Mapping[str, WindowDef],
               report: Report, calendar: CalendarSpec = _STANDARD_CALENDAR) -> tuple[DeadlineDef, ...]:
    out = []
    for spec in raw or ():
        citation = str(spec.get("citation", ""))
        if "window" in spec:
            if spec["window"] not in windows:
                if spec["window"] not in _defined_windows(doc):
                    report.add(f"unknown window `{spec['window']}`"
                               f"{did_you_mean(spec['window'], windows)}", doc.path,
                               spec.vpos("window"), rule_id=rule_id)
                continue
            if "calendar" in spec:
                report.add("a `window` deadline counts with its window's calendar; put "
                           "`calendar` on the window", doc.path, spec.pos("calendar"),
                           rule_id=rule_id)
            out.append(DeadlineDef(spec["name"], citation or windows[spec["window"]].citation,
                                   window=spec["window"]))
            continue
        try:
            period = Period.parse(spec["period"])
        except ValueError as exc:
            report.add(str(exc), doc.path, spec.vpos("period"), rule_id=rule_id)
            continue
        if not _check_time_field(spec["from"], report, doc, spec, "from", rule_id):
            continue
        pause_ok, pause = _pause(spec.get("pause"), report, doc, rule_id)
        if not pause_ok:
            continue
        own = _own_calendar(calendar, spec["calendar"]) if spec.get("calendar") else None
        out.append(DeadlineDef(spec.get("name") or spec.get("type"), citation,
                               start=spec["from"], period=period, calendar=own,
                               pause=pause))
    return tuple(out)


def _pause(raw: Any, report: Report, doc: RulesetDoc,
           rule_id: str | None = None) -> tuple[bool, PauseDef | None]:
    """A window's or deadline's ``pause``, and whether it is right (a wrong one is reported)."""
    if raw is None:
        return True, None
    ok = all([_check_time_field(raw[key], report, doc, raw, key, rule_id)
              for key in ("from", "until")])
    at_most = None
    if "at_most" in raw:
        try:
            at_most = Period.parse(raw["at_most"])
        except ValueError as exc:
            report.add(str(exc), doc.path, raw.vpos("at_most"), rule_id=rule_id)
            ok = False
    if not ok:
        return False, None
    return True, PauseDef(raw["from"], raw["until"], bool(raw.get("inclusive", False)), at_most)


def _some_line(lines: ConditionNode) -> ConditionNode:
    """A `lines:` rule matches when some line qualifies. A request without items is one line
    whose item fields are all unknown: `not excluded` holds for it, `excluded` does not."""
    some = Items("any_item", lines)
    if not lines.evaluate({}, ()):
        return some
    no_items = Compare("items.count", "eq", Literal(0), typed=True)
    return AnyOf((no_items, some))


def _languages(layers: Sequence[RulesetDoc], doc: RulesetDoc) -> tuple[str, ...] | None:
    """The languages in force for ``doc``'s rules: its own `languages`, else the nearest layer
    below that sets them; None when none does (then one text is enough)."""
    upto = list(layers[: layers.index(doc) + 1]) if doc in layers else [doc]
    for layer in reversed(upto):
        if "languages" in layer.data:
            return tuple(layer.data["languages"])
    return None


def _customer_texts(raw: Any, languages: tuple[str, ...] | None, doc: RulesetDoc, rid: str,
                    report: Report) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A rule's customer_message: the default text and, when given per language, each one.
    A language the client writes to without a text would leave its customers a message in
    another language, so it is a load error."""
    given = raw.get("customer_message", "")
    texts = dict(given) if isinstance(given, Mapping) else {}
    if languages and "customer_message" in raw:
        missing = [lang for lang in languages if lang not in texts]
        if not texts and languages != ("en",):
            missing = [lang for lang in languages if lang != "en"]
        if missing:
            report.add(f"`customer_message` has no {', '.join(f'`{m}`' for m in missing)} text; "
                       f"this client writes to customers in {', '.join(languages)}: give "
                       "`customer_message: {" + ", ".join(f"{lang}: ..." for lang in languages) + "}`",
                       doc.path, raw.vpos("customer_message"), rule_id=rid)
    if not texts:
        return str(given), ()
    default = texts.get("en", next(iter(texts.values())))
    return str(default), tuple((k, str(v)) for k, v in texts.items())


def _defined_windows(*layers: RulesetDoc) -> set[str]:
    """Window names written in these layers, valid or not: a window whose definition was
    rejected is not reported again as unknown at each rule that uses it."""
    return {name for doc in layers for name in (doc.data.get("windows") or {})}


def _rules(layers: Sequence[RulesetDoc], windows: Mapping[str, WindowDef],
           report: Report, calendar: CalendarSpec = _STANDARD_CALENDAR,
           memo: dict[Any, Any] | None = None) -> tuple[Rule, ...]:
    rules: dict[str, Rule] = {}
    unknown = frozenset(_defined_windows(*layers) - set(windows))
    for doc in layers:
        languages = _languages(layers, doc)
        # what else a rule is built from; hashed once per layer, not once per rule
        context = (tuple(windows.items()), calendar, unknown, languages)
        built = memo.setdefault(context, {}) if memo is not None else None
        own: dict[str, int] = {}  # rule id -> line of its first definition
        for index, raw in enumerate(doc.data.get("rules") or ()):
            rid = raw["id"]
            pos = doc.data["rules"].pos(index)
            if rid in own:
                report.add(f"duplicate rule id `{rid}` (first defined on line {own[rid]})",
                           doc.path, raw.vpos("id"), rule_id=rid)
                continue
            own[rid] = raw.vpos("id")[0]
            if rid in rules and rules[rid].floor:
                base = rules[rid]
                report.add(f"overrides statutory floor rule `{rid}` of `{base.layer}` "
                           f"({base.reason.citation or 'no citation'})", doc.path, raw.vpos("id"),
                           rule_id=rid)
                continue
            rules[rid] = _built(built, (doc.id, doc.version, index), report, raw, rid, pos, doc,
                                windows, unknown, languages, calendar)
    return tuple(rules.values())


def _built(memo: dict[Any, Any] | None, key: tuple[str, str, int], report: Report, *args: Any) -> Rule:
    """A layer's rule is built once per context it can be built in (the windows, calendar and
    languages of its stack), not once per stack it is composed into: 2,000 rules in 21 stacks
    were 42,000 condition parses at load. The errors building it reported are replayed, so each
    stack reports what building it there would have."""
    found = memo.get(key) if memo is not None else None
    if found is None:
        sub = Report()
        found = (_rule(sub, *args), tuple(sub.errors))
        if memo is not None:
            memo[key] = found
    report.extend(found[1])
    return found[0]


def _rule(report: Report, raw: Any, rid: str, pos: tuple[int, int], doc: RulesetDoc,
          windows: Mapping[str, WindowDef], unknown: frozenset[str],
          languages: tuple[str, ...] | None, calendar: CalendarSpec) -> Rule:
    floor = bool(raw.get("floor", False))
    effect = raw["effect"]
    citation = str(raw.get("citation", ""))
    if floor and not citation:
        report.add("a statutory floor rule needs a `citation`", doc.path, raw.pos("floor"),
                   rule_id=rid)
    if effect != "adjust" and "customer_message" not in raw:
        report.add(f"a rule with effect `{effect}` needs a `customer_message`", doc.path,
                   raw.pos("effect"), rule_id=rid)
    if effect == "adjust" and not any(raw.get(k) for k in ("amount", "deadlines", "actions")):
        report.add("an `adjust` rule needs `amount`, `deadlines` or `actions`", doc.path,
                   raw.pos("effect"), rule_id=rid)
    ctx = ParseContext(report.at(doc.path), windows, rid, set(unknown))
    when = parse_condition(raw["when"], ctx, parent=raw, key="when") if "when" in raw else parse_condition({"all": [{"field": "request_id", "exists": True}]}, ctx)
    lines = None
    if "lines" in raw:
        lines = parse_condition(raw["lines"], ctx, item=True, parent=raw, key="lines")
        when = All((when, _some_line(lines)))
    amount_base, adjustments = _adjustments(raw.get("amount"), doc, rid, report)
    text, texts = _customer_texts(raw, languages, doc, rid, report)
    reason = Reason(
        rule_id=rid, effect=effect, code=raw.get("code", rid.replace("-", "_").replace(".", "_")),
        message=raw["message"], customer_message=text, customer_messages=texts,
        citation=citation, floor=floor, ruleset=doc.id)
    return Rule(
        id=rid, effect=effect, floor=floor, when=when, reason=reason,
        adjustments=adjustments,
        deadlines=_deadlines(raw.get("deadlines"), doc, rid, windows, report, calendar),
        layer=doc.id, path=doc.path, line=pos[0], column=pos[1], base=amount_base, lines=lines,
        actions=_actions(raw.get("actions"), doc, rid, report, calendar))


def compose(layers: Sequence[RulesetDoc], report: Report, probe: HolidayCalendars,
            memo: dict[Any, Any] | None = None) -> CompiledRuleset:
    top = layers[-1]
    calendar = _calendar(layers)
    windows = _windows(layers, calendar, report, probe)
    rules = _rules(layers, windows, report, calendar, memo)
    industry = next((d.industry for d in reversed(layers) if d.industry), None)
    scopes = next((d.jurisdictions for d in reversed(layers) if d.jurisdictions), ("*",))
    client = next((d.client for d in reversed(layers) if d.client), None)
    digest = hashlib.sha256("\n".join(d.digest for d in layers).encode()).hexdigest()
    ref = RulesetRef(top.id, top.version, "sha256:" + digest, tuple(d.layer for d in layers))
    return CompiledRuleset(ref=ref, layers=tuple(layers), industry=industry, jurisdictions=scopes,
                           client=client, calendar=calendar, windows=tuple(windows.values()),
                           rules=rules)


# --- the library of everything loaded ------------------------------------------------------


class Library:
    """Every ruleset version loaded, and every layered combination of them that can be in force.

    Built once. Every layered combination a request can meet is composed at load; a stack no
    load-time representative reached (a jurisdiction no ruleset names) is composed on first
    use under a lock, so any number of threads may resolve against it.
    """

    def __init__(self, docs: Sequence[RulesetDoc], report: Report) -> None:
        self.versions: dict[str, list[RulesetDoc]] = {}
        for doc in docs:
            self.versions.setdefault(doc.id, []).append(doc)
        for rid, versions in self.versions.items():
            versions.sort(key=lambda d: (d.effective_from, d.version_key))
            self._check_versions(rid, versions, report)
        self._starts = {rid: [d.effective_from for d in v] for rid, v in self.versions.items()}
        self.composites: dict[tuple[tuple[str, str], ...], CompiledRuleset] = {}
        self.probe = HolidayCalendars()
        self._lock = threading.Lock()
        self._rule_memo: dict[Any, Any] = {}  # rules built, by layer and context (``_built``)
        for versions in self.versions.values():
            for doc in versions:
                for day in self._days_in_force(doc):
                    self.chain(doc, day, report)
        self._check_scopes(report)
        self._compose_overlays(report)

    @staticmethod
    def _check_versions(rid: str, versions: list[RulesetDoc], report: Report) -> None:
        for prev, doc in zip(versions, versions[1:], strict=False):
            if doc.version == prev.version:
                report.add(f"ruleset `{rid}` version {doc.version} is defined twice (also in "
                           f"{prev.path})", doc.path, doc.data.vpos("version"))
            elif doc.effective_from == prev.effective_from:
                report.add(f"ruleset `{rid}` versions {prev.version} and {doc.version} both take "
                           f"effect on {doc.effective_from}; one must be later", doc.path,
                           doc.data.vpos("effective_from"))
            elif doc.version_key < prev.version_key:
                report.add(f"ruleset `{rid}` version {doc.version} takes effect after "
                           f"{prev.version} but has a lower version number", doc.path,
                           doc.data.vpos("version"))

    def in_force(self, rid: str, day: dt.date) -> RulesetDoc | None:
        starts = self._starts.get(rid)
        if not starts:
            return None
        i = bisect.bisect_right(starts, day) - 1
        return self.versions[rid][i] if i >= 0 else None

    def _days_in_force(self, doc: RulesetDoc) -> list[dt.date]:
        """The days on which the layers under ``doc`` can change while it is in force."""
        versions = self.versions[doc.id]
        i = versions.index(doc)
        until = versions[i + 1].effective_from if i + 1 < len(versions) else dt.date.max
        days = {doc.effective_from}
        seen: set[str] = set()
        todo = [doc.extends[0]] if doc.extends else []
        while todo:
            rid = todo.pop()
            if rid in seen or rid not in self.versions:
                continue
            seen.add(rid)
            for base in self.versions[rid]:
                if doc.effective_from < base.effective_from < until:
                    days.add(base.effective_from)
                if base.extends:
                    todo.append(base.extends[0])
        return sorted(days)

    def chain(self, doc: RulesetDoc, day: dt.date, report: Report | None = None) -> CompiledRuleset | None:
        layers = [doc]
        cursor = doc
        while cursor.extends:
            base_id, pin = cursor.extends
            if pin is not None:
                base = next((d for d in self.versions.get(base_id, ()) if d.version == pin), None)
            else:
                base = self.in_force(base_id, day)
            if base is None:
                if report is not None:
                    what = f"`{base_id}@{pin}`" if pin else f"`{base_id}` in force on {day}"
                    known = "" if base_id in self.versions else " (no ruleset has that id)"
                    report.add(f"extends {what}, which is not loaded{known}", cursor.path,
                               cursor.data.vpos("extends"))
                return None
            if any(layer.id == base.id for layer in layers):
                if report is not None:
                    cycle = " -> ".join([*(d.id for d in layers), base.id])
                    report.add(f"extends forms a cycle: {cycle}", cursor.path, cursor.data.vpos("extends"))
                return None
            if len(layers) >= MAX_EXTENDS_DEPTH:
                if report is not None:
                    report.add(f"extends is more than {MAX_EXTENDS_DEPTH} layers deep", cursor.path,
                               cursor.data.vpos("extends"))
                return None
            layers.append(base)
            cursor = base
        layers.reverse()
        key = tuple((d.id, d.version) for d in layers)
        found = self.composites.get(key)
        if found is None:
            if report is None:  # every chain is composed while loading; this is a programming error
                raise KeyError(key)
            found = compose(layers, report, self.probe, self._rule_memo)
            self.composites[key] = found
        return found

    def _check_scopes(self, report: Report) -> None:
        claimed: dict[tuple[str | None, str | None, str], RulesetDoc] = {}
        for rid, versions in self.versions.items():
            doc = versions[-1]
            comp = self._own_chain(doc, doc.effective_from)
            if comp is None:
                continue
            for scope in comp.jurisdictions:
                key = (comp.client, comp.industry, scope)
                other = claimed.get(key)
                if other is not None and other.id != rid:
                    who = f"client `{comp.client}`" if comp.client else "baselines"
                    report.add(f"rulesets `{other.id}` and `{rid}` both cover {comp.industry or 'any industry'} "
                               f"in `{scope}` for {who}; a request could not tell which applies",
                               doc.path, doc.data.vpos("ruleset"))
                claimed[key] = doc


    # --- overlays: a client layer on the law of the request's own place ----------------------

    def _own_chain(self, doc: RulesetDoc, day: dt.date) -> CompiledRuleset | None:
        try:
            return self.chain(doc, day)
        except KeyError:  # its chain failed to compose; the error is reported already
            return None

    def baseline_stack(self, industry: str, jurisdiction: str, day: dt.date) -> list[RulesetDoc]:
        """Every baseline in force that covers ``jurisdiction``, most general first, each with the
        layers it extends (US-CA: federal, then California)."""
        covering: list[tuple[int, str, CompiledRuleset]] = []
        for rid in self.versions:
            doc = self.in_force(rid, day)
            if doc is None or doc.client is not None:
                continue
            comp = self._own_chain(doc, day)
            if comp is None or comp.client is not None or comp.industry not in (None, industry):
                continue
            score = max((jurisdictions.matches(s, jurisdiction) for s in comp.jurisdictions),
                        default=0)
            if score:
                covering.append((score, rid, comp))
        layers: dict[str, RulesetDoc] = {}
        for _, _, comp in sorted(covering, key=lambda c: (c[0], c[1])):
            for layer in comp.layers:
                layers.setdefault(layer.id, layer)
        return list(layers.values())

    def client_ruleset(self, client: str, industry: str, jurisdiction: str,
                       day: dt.date) -> CompiledRuleset | None:
        """The client's own ruleset in force that covers ``jurisdiction`` most specifically."""
        best: tuple[int, str] | None = None
        found = None
        for rid in self.versions:
            doc = self.in_force(rid, day)
            if doc is None or doc.client != client:
                continue
            comp = self._own_chain(doc, day)
            if comp is None or comp.industry not in (None, industry):
                continue
            score = max((jurisdictions.matches(s, jurisdiction) for s in comp.jurisdictions),
                        default=0)
            if score and (best is None or (score, rid) > best):
                best, found = (score, rid), comp
        return found

    def overlay_layers(self, client: CompiledRuleset | None, industry: str, jurisdiction: str,
                       day: dt.date) -> list[RulesetDoc]:
        """The layers a request meets: the baseline stack of its own jurisdiction, whatever level
        the client wrote its ruleset for, with the client's own layers on top."""
        if client is None:
            return self.baseline_stack(industry, jurisdiction, day)
        own_base = [d for d in client.layers if d.client is None]
        mine = [d for d in client.layers if d.client is not None]
        layers = {d.id: d for d in own_base}  # a pinned base keeps its pinned version
        for doc in self.baseline_stack(industry, jurisdiction, day):
            layers.setdefault(doc.id, doc)
        return [*layers.values(), *mine]

    def resolve(self, client: str | None, industry: str, jurisdiction: str,
                day: dt.date) -> CompiledRuleset | None:
        own = self.client_ruleset(client, industry, jurisdiction, day) if client else None
        layers = self.overlay_layers(own, industry, jurisdiction, day)
        if not layers:
            return None
        return self._composite(layers, jurisdiction, None)

    def resolve_layers(self, layers: Sequence[RulesetDoc], jurisdiction: str) -> CompiledRuleset:
        return self._composite(layers, jurisdiction, None)

    def _composite(self, layers: Sequence[RulesetDoc], jurisdiction: str,
                   report: Report | None) -> CompiledRuleset:
        key = tuple((d.id, d.version) for d in layers)
        found = self.composites.get(key)
        if found is not None:
            return found
        mine = Report()
        comp = compose(layers, mine, self.probe, self._rule_memo)
        where = " + ".join(d.id for d in layers[:-1])
        seen = {(e.path, e.line, e.column, e.message.split(" (on the law of")[0])
                for e in (report.errors if report is not None else ())}
        for err in mine.errors:
            if (err.path, err.line, err.column, err.message) in seen:
                continue  # the layer's own chain already says so
            message = f"{err.message} (on the law of `{jurisdiction}`: {where})"
            if report is None:
                raise RulesetError(message, path=err.path, line=err.line, column=err.column,
                                   rule_id=err.rule_id)
            report.add(message, err.path or "", (err.line or 1, err.column or 1),
                       rule_id=err.rule_id)
        with self._lock:
            return self.composites.setdefault(key, comp)

    def _representatives(self) -> list[str]:
        """One request jurisdiction for every distinct set of scopes that can cover one: each
        named country or subdivision, an EU member no ruleset names, a country nothing names."""
        scopes = {s for c in self.composites.values() for s in c.jurisdictions}
        named = {s for s in scopes if s not in ("*", "EU") and jurisdictions.valid_scope(s)}
        reps = set(named)
        if "EU" in scopes:
            reps.add(next(c for c in sorted(jurisdictions.EU_MEMBERS) if c not in named))
        if "*" in scopes:
            reps.add(next(c for c in sorted(jurisdictions.countries())
                          if c not in named and c not in jurisdictions.EU_MEMBERS))
        return sorted(reps)

    def _compose_overlays(self, report: Report) -> None:
        """Compose every client overlay on every baseline stack it can land on, at every date the
        stack can change, so `validate` checks each and `evaluate` only looks them up."""
        clients = sorted({d.client for v in self.versions.values() for d in v if d.client})
        epochs = sorted({d.effective_from for v in self.versions.values() for d in v})
        reps = self._representatives()
        for day in epochs:
            for jurisdiction in reps:
                for industry in INDUSTRIES:
                    for client in (None, *clients):
                        own = self.client_ruleset(client, industry, jurisdiction, day) if client else None
                        if client and own is None:
                            continue
                        layers = self.overlay_layers(own, industry, jurisdiction, day)
                        if layers:
                            self._composite(layers, jurisdiction, report)


def load_library(paths: Iterable[str | Path], *,
                 baselines: str | Path | None = None) -> Library:
    """Load and check every ruleset under ``paths``; raise ``InvalidRulesets`` with all errors.

    ``baselines``: a folder whose baselines (rulesets without ``client``) are added under the
    ones given, so a client layer can be checked, tested and evaluated on its own. A baseline
    given in ``paths`` wins over one there with the same id or the same industry and scope.
    """
    report = Report()
    files = discover(paths)
    docs = _load_all(files, report)
    if baselines is not None and Path(baselines).is_dir():
        given = {f.resolve() for f in files}
        more = [f for f in discover([baselines]) if f.resolve() not in given]
        docs += [d for d in _load_all(more, report) if _adds_to(d, docs)]
    library = Library(docs, report)
    if report.errors:
        raise InvalidRulesets(report.errors)
    return library


def _load_all(files: Iterable[Path], report: Report) -> list[RulesetDoc]:
    docs = []
    for f in files:
        if not f.exists():
            report.add("no such file or directory", str(f), None)
            continue
        doc = load_document(f, report)
        if doc is not None:
            docs.append(doc)
    return docs


def _adds_to(base: RulesetDoc, given: Sequence[RulesetDoc]) -> bool:
    if base.client is not None or any(d.id == base.id for d in given):
        return False
    own = {(d.industry, s) for d in given if d.client is None for s in d.jurisdictions or ()}
    return not any((base.industry, s) in own for s in base.jurisdictions or ())
