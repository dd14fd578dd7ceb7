"""The plugin manager, the hook facade and every hook, each through the public API.

Each hook in ``refundry.hookspecs`` has a test named ``test_hook_<hook name>`` here;
``test_plugin_docs.py`` fails when one is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import refundry
from refundry.app.runner import run
from refundry.plugins import (
    Option,
    PluginError,
    Plugins,
    Sink,
    Source,
    SourceError,
    SourceRecord,
    make_plugin_manager,
)

ROOT = Path(__file__).resolve().parents[1]
RULESETS = ROOT / "rulesets"
EXAMPLE = json.loads((ROOT / "examples" / "request.json").read_text())


def request(i: int, **changes: Any) -> dict[str, Any]:
    return {**EXAMPLE, "request_id": f"req-{i}", **changes}


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def plugins_with(*extra: tuple[str, object]) -> Plugins:
    # Entry points off: these tests must not depend on which adapters happen to be installed.
    return Plugins(make_plugin_manager(entry_points=False, extra=extra))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


class Recorder:
    """A listener plugin that remembers what it was told."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str, str, tuple[str, ...]]] = []
        self.dead: list[tuple[str, str, str | None]] = []
        self.events: list[Mapping[str, Any]] = []

    @refundry.hookimpl
    def refundry_decision_written(self, decision: refundry.Decision, request: refundry.RefundRequest,
                                  ref: str, sinks: Sequence[str]) -> None:
        self.decisions.append((decision.request_id, decision.outcome, ref, tuple(sinks)))

    @refundry.hookimpl
    def refundry_dead_letter_written(self, ref: str, reason: str, request_id: str | None) -> None:
        self.dead.append((ref, reason, request_id))

    @refundry.hookimpl
    def refundry_record_written(self, event: Mapping[str, Any]) -> None:
        self.events.append(event)


# --- the manager ----------------------------------------------------------------------------


def test_hookimpl_is_importable_from_the_package_root() -> None:
    from refundry import hookimpl
    from refundry.plugins.spec import hookimpl as spec_marker

    assert hookimpl is spec_marker


def test_each_manager_is_new_and_holds_the_builtins() -> None:
    a, b = make_plugin_manager(entry_points=False), make_plugin_manager(entry_points=False)
    assert a is not b
    assert a.get_plugin("refundry") is not None
    plugins = Plugins(a)
    assert plugins.sources["jsonl"].plugin == "refundry"
    assert plugins.sinks["jsonl"].plugin == "refundry"


def test_a_misspelt_hook_is_named_and_the_plugin_left_out() -> None:
    class Typo:
        @refundry.hookimpl
        def refundry_source(self) -> list[Source]:  # not a hook: refundry_sources
            return []

    with pytest.raises(PluginError, match=r"plugin `typo`"):
        make_plugin_manager(entry_points=False, extra=[("typo", Typo())])
    errors: list[PluginError] = []
    pm = make_plugin_manager(entry_points=False, extra=[("typo", Typo())], errors=errors)
    assert [e.plugin for e in errors] == ["typo"] and "refundry_source" in str(errors[0])
    assert pm.get_plugin("typo") is None and Plugins(pm).source("jsonl").plugin == "refundry"


def test_a_plugin_returning_a_wrong_object_is_named_and_the_others_keep_working() -> None:
    class Wrong:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Any]:
            return [{"name": "dict-source"}]  # a dict, not a refundry.plugins.Source

    plugins = plugins_with(("wrong", Wrong()))
    assert sorted(plugins.sources) == ["jsonl"]
    (error,) = plugins.errors
    assert str(error) == ("plugin `wrong`: refundry_sources returned a dict, not a "
                          "refundry.plugins.Source")
    listed = {p["name"]: p for p in plugins.describe()}
    assert listed["wrong"]["errors"] == [str(error)]


def test_two_plugins_cannot_provide_the_same_source_name() -> None:
    class Clash:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Source]:
            return [Source("jsonl", lambda p, o: iter(()))]

    plugins = plugins_with(("clash", Clash()))
    assert plugins.sources["jsonl"].plugin == "refundry"  # the first wins; the clash is named
    assert [str(e) for e in plugins.errors] == [
        "plugin `clash`: source `jsonl` is already provided by plugin `refundry`; this one is "
        "left out"]


def test_an_unknown_source_lists_the_installed_ones() -> None:
    with pytest.raises(SourceError, match=r"no source `nope`; installed: jsonl"):
        plugins_with().source("nope")


# --- each hook ------------------------------------------------------------------------------


def test_hook_refundry_sources(tmp_path: Path) -> None:
    seen: list[Mapping[str, str]] = []

    class Numbers:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Source]:
            def read(path: Path, options: Mapping[str, str]) -> Any:
                seen.append(dict(options))
                for n in range(int(path.read_text())):
                    yield SourceRecord(f"n{n}", request=request(n))
                yield SourceRecord("bad", error="bad: cannot be a request")
            return [Source("numbers", read, "test", {"k": "an option"})]

    plugins = plugins_with(("numbers", Numbers()))
    assert plugins.sources["numbers"].plugin == "numbers"
    summary = run(source="numbers", input_path=write_jsonl(tmp_path / "in.txt", ["3"]),
                  out=tmp_path / "out.jsonl", rulesets=[RULESETS], plugins=plugins,
                  options={"k": "v"})
    assert seen == [{"k": "v"}]
    assert [d["request_id"] for d in lines(tmp_path / "out.jsonl")] == ["req-0", "req-1", "req-2"]
    assert summary.outcomes["approve"] == 3 and summary.dead_letters == 1
    assert lines(tmp_path / "out.jsonl.dead-letter.jsonl") == [
        {"ref": "bad", "source": "numbers", "request_id": None,
         "reason": "bad: cannot be a request", "errors": []}]


def test_hook_refundry_sinks(tmp_path: Path) -> None:
    got: list[tuple[str, str, Decimal]] = []
    opened: list[tuple[Path | None, Mapping[str, str]]] = []

    class Writer:
        def write(self, decision: refundry.Decision, request: refundry.RefundRequest, ref: str) -> None:
            got.append((request.request_id, ref, decision.amount))

        def close(self) -> None:
            got.append(("closed", "", Decimal(0)))

    class Capture:
        @refundry.hookimpl
        def refundry_sinks(self) -> list[Sink]:
            def open_(path: Path | None, options: Mapping[str, str]) -> Writer:
                opened.append((path, dict(options)))
                return Writer()
            return [Sink("capture", open_, "test", [Option("a", help="declared, so accepted")])]

    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    run(source="jsonl", input_path=src, sinks=["capture"], out=tmp_path / "o",
        rulesets=[RULESETS], plugins=plugins_with(("capture", Capture())), options={"a": "b"})
    assert opened == [(tmp_path / "o", {"a": "b"})]
    assert got == [("req-1", "in.jsonl:1", Decimal("119.99")), ("req-2", "in.jsonl:2", Decimal("119.99")),
                   ("closed", "", Decimal(0))]


def test_hook_refundry_enrich_request(tmp_path: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    class History:
        @refundry.hookimpl
        def refundry_options(self) -> list[Option]:
            return [Option("x", "int", help="an enricher's option")]

        @refundry.hookimpl
        def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                    options: Mapping[str, str]) -> Mapping[str, Any] | None:
            calls.append((ref, dict(options)))
            if request["request_id"] == "req-2":
                return None
            # A field the source already set is not overwritten; new ones and facts are added.
            return {"amount": "1.00", "timezone": "Europe/Berlin",
                    "facts": {"velocity": 3}}

    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    plugins = plugins_with(("history", History()))
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
        plugins=plugins, options={"x": "1"})
    assert calls == [("in.jsonl:1", {"x": "1"}), ("in.jsonl:2", {"x": "1"})]
    merged = plugins.enrich(request(1, facts={"velocity": 1, "kept": True}), "r", {})
    assert merged["amount"] == EXAMPLE["amount"]
    assert merged["timezone"] == "Europe/Berlin"
    assert merged["facts"] == {"velocity": 1, "kept": True}
    out = lines(tmp_path / "o.jsonl")
    assert [d["amount"] for d in out] == ["119.99", "119.99"]


def test_hook_refundry_options(tmp_path: Path) -> None:
    """An enricher declares its options; `refundry plugins` lists them, a value of the wrong
    type or an undeclared (misspelt) option stops the run before any file is written."""

    class Velocity:
        @refundry.hookimpl
        def refundry_options(self) -> list[Option]:
            return [Option("velocity_window", "int", "30", "days counted")]

        @refundry.hookimpl
        def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                    options: Mapping[str, str]) -> Mapping[str, Any] | None:
            return {"facts": {"window": int(options.get("velocity_window", "30"))}}

    plugins = plugins_with(("velocity", Velocity()))
    listed = {p["name"]: p for p in plugins.describe()}["velocity"]
    assert listed["options"] == [{"name": "velocity_window", "type": "int", "default": "30",
                                  "required": False, "help": "days counted"}]
    src = write_jsonl(tmp_path / "in.jsonl", [request(1)])
    with pytest.raises(SourceError, match=r"unknown option `velocity_windw`; did you mean "
                                          r"`velocity_window`\?"):
        run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            plugins=plugins, options={"velocity_windw": "7"})
    with pytest.raises(SourceError, match=r"option `velocity_window`: `a week` is not a whole number"):
        run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            plugins=plugins, options={"velocity_window": "a week"})
    assert not (tmp_path / "o.jsonl").exists()
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
        plugins=plugins, options={"velocity_window": "7"})
    assert len(lines(tmp_path / "o.jsonl")) == 1


def test_hook_refundry_decision_written(tmp_path: Path) -> None:
    rec = Recorder()
    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2, reason="defective")])
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
        plugins=plugins_with(("rec", rec)))
    outcomes = {d["request_id"]: d["outcome"] for d in lines(tmp_path / "o.jsonl")}
    assert rec.decisions == [("req-1", "approve", "in.jsonl:1", ("jsonl",)),
                             ("req-2", outcomes["req-2"], "in.jsonl:2", ("jsonl",))]


def test_hook_refundry_dead_letter_written(tmp_path: Path) -> None:
    rec = Recorder()
    src = write_jsonl(tmp_path / "in.jsonl", [request(1, amount=12.5), "{not json", request(3)])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  plugins=plugins_with(("rec", rec)))
    assert summary.dead_letters == 1  # 12.5 is read as the decimal "12.5", not a float
    assert rec.dead == [("in.jsonl:2", "in.jsonl:2: invalid json: expecting property name "
                         "enclosed in double quotes at column 2", None)]


def test_hook_refundry_record_written(tmp_path: Path) -> None:
    rec = Recorder()
    store: list[str] = []

    def record(decision: refundry.Decision, request: refundry.RefundRequest) -> Mapping[str, Any]:
        store.append(decision.request_id)
        return {"seq": len(store), "request_id": decision.request_id, "event": "evaluated"}

    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
        plugins=plugins_with(("rec", rec)), record=record)
    assert store == ["req-1", "req-2"]
    assert rec.events == [{"seq": 1, "request_id": "req-1", "event": "evaluated"},
                          {"seq": 2, "request_id": "req-2", "event": "evaluated"}]


# --- a plugin that raises is named and never corrupts output --------------------------------


def test_a_raising_enricher_sends_the_request_to_dead_letter_naming_the_plugin(tmp_path: Path) -> None:
    class Broken:
        @refundry.hookimpl
        def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                    options: Mapping[str, str]) -> Mapping[str, Any] | None:
            if request["request_id"] == "req-2":
                raise RuntimeError("history db is down")
            return None

    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2), request(3)])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  plugins=plugins_with(("broken", Broken())))
    assert [d["request_id"] for d in lines(tmp_path / "o.jsonl")] == ["req-1", "req-3"]
    assert summary.dead_letters == 1
    (dead,) = lines(tmp_path / "o.jsonl.dead-letter.jsonl")
    assert dead["request_id"] == "req-2"
    assert dead["reason"] == ("plugin `broken`: refundry_enrich_request raised RuntimeError: "
                              "history db is down")


def test_a_raising_sink_stops_the_run_naming_it_and_a_rerun_continues(tmp_path: Path) -> None:
    class Flaky:
        fail_on = "req-3"

        @refundry.hookimpl
        def refundry_sinks(self) -> list[Sink]:
            outer = self

            class W:
                def write(self, decision: Any, request: Any, ref: str) -> None:
                    if request.request_id == outer.fail_on:
                        raise OSError("disk full")

                def close(self) -> None:
                    pass
            return [Sink("flaky", lambda p, o: W())]

    flaky = Flaky()
    plugins = plugins_with(("flaky", flaky))
    src = write_jsonl(tmp_path / "in.jsonl", [request(i) for i in range(1, 6)])
    kw = dict(source="jsonl", input_path=src, sinks=["jsonl", "flaky"], out=tmp_path / "o.jsonl",
              options={"out.jsonl": str(tmp_path / "o.jsonl")}, rulesets=[RULESETS])
    with pytest.raises(PluginError, match=r"plugin `flaky`: sink `flaky` failed on `in.jsonl:3`: OSError: disk full"):
        run(plugins=plugins, **kw)  # type: ignore[arg-type]
    flaky.fail_on = ""
    summary = run(plugins=plugins_with(("flaky", flaky)), **kw)  # type: ignore[arg-type]
    ids = [d["request_id"] for d in lines(tmp_path / "o.jsonl")]
    # req-3 reached the jsonl sink before the flaky one failed: it is written exactly once.
    assert ids == ["req-1", "req-2", "req-3", "req-4", "req-5"]
    assert summary.skipped == 2 and summary.decided == 3


def test_a_raising_source_stops_the_run_naming_it(tmp_path: Path) -> None:
    class Bad:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Source]:
            def read(path: Path, options: Mapping[str, str]) -> Any:
                yield SourceRecord("a", request=request(1))
                raise ValueError("corrupt page 2")
            return [Source("bad", read)]

    with pytest.raises(PluginError, match=r"plugin `bad`: source `bad` raised ValueError: corrupt page 2"):
        run(source="bad", input_path=write_jsonl(tmp_path / "x", []), out=tmp_path / "o.jsonl",
            rulesets=[RULESETS], plugins=plugins_with(("bad", Bad())))
    assert [d["request_id"] for d in lines(tmp_path / "o.jsonl")] == ["req-1"]


def test_a_raising_listener_is_reported_and_changes_no_output(tmp_path: Path) -> None:
    class Loud:
        @refundry.hookimpl
        def refundry_decision_written(self, decision: Any, request: Any, ref: str,
                                      sinks: Sequence[str]) -> None:
            raise KeyError("boom")

    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  plugins=plugins_with(("loud", Loud())))
    assert len(lines(tmp_path / "o.jsonl")) == 2
    assert summary.plugin_errors == [
        "plugin `loud`: refundry_decision_written raised KeyError: 'boom'"] * 2


# --- a plugin installed from outside the repository ----------------------------------------


@pytest.fixture
def external_plugin(tmp_path: Path) -> Path:
    """A package `refundry_upper` made discoverable by a dist-info with an entry point, the
    way pip installs one: the test exercises the real entry-point discovery."""
    site = tmp_path / "site"
    pkg = site / "refundry_upper"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import json
        import refundry
        from refundry.plugins import Sink, Source, SourceRecord


        def read(path, options):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                rid, amount = line.split(",")
                req = json.loads(options["template"])
                yield SourceRecord(f"{path.name}:{n}", request={**req, "request_id": rid,
                                                                "amount": amount})


        class Upper:
            def __init__(self, path):
                self.fh = open(path, "a")

            def write(self, decision, request, ref):
                self.fh.write(f"{decision.request_id.upper()} {decision.outcome.upper()}\\n")

            def close(self):
                self.fh.close()


        @refundry.hookimpl
        def refundry_sources():
            return [Source("csvish", read, "id,amount lines", {"template": "a request as json"})]


        @refundry.hookimpl
        def refundry_sinks():
            return [Sink("upper", lambda path, options: Upper(path), "shouting decisions")]
    '''))
    dist = site / "refundry_upper-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: refundry-upper\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[refundry]\nupper = refundry_upper\n")
    return site


def _cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "refundry.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_an_external_plugin_is_listed_and_used_by_run(external_plugin: Path, tmp_path: Path) -> None:
    listed = _cli(["plugins"], external_plugin, tmp_path)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)}
    upper = by_name["upper"]
    assert upper["distribution"] == "refundry-upper" and upper["version"] == "0.1.0"
    assert upper["hooks"] == ["refundry_sinks", "refundry_sources"]
    assert [s["name"] for s in upper["sources"]] == ["csvish"]
    assert upper["sources"][0]["options"] == [{"name": "template", "type": "text", "default": None,
                                               "required": False, "help": "a request as json"}]
    assert [s["name"] for s in upper["sinks"]] == ["upper"]
    assert by_name["refundry"]["sources"][0]["name"] == "jsonl"

    src = tmp_path / "in.csv"
    src.write_text("r-1,119.99\nr-2,-5\n")
    done = _cli(["run", "--source", "csvish", "--input", str(src), "--sink", "upper",
                 "--out", str(tmp_path / "out.txt"), "--rulesets", str(RULESETS),
                 "--option", f"template={json.dumps(EXAMPLE)}"], external_plugin, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.txt").read_text() == "R-1 APPROVE\n"
    (dead,) = lines(tmp_path / "out.txt.dead-letter.jsonl")
    assert dead["request_id"] == "r-2"
    assert dead["reason"] == "invalid request: in.csv:2: field `amount`: must not be negative"
    assert "approve 1" in done.stderr and "dead letters 1" in done.stderr


def test_a_plugin_that_cannot_be_imported_is_named_and_the_others_keep_working(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "refundry_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: refundry-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[refundry]\nbroken = refundry_broken_missing\n")
    done = _cli(["plugins"], site, tmp_path)
    assert done.returncode == 0
    line = ("refundry: plugin `broken`: cannot be loaded from `refundry_broken_missing`: "
            "ModuleNotFoundError: No module named 'refundry_broken_missing'")
    assert done.stderr.strip() == line and "Traceback" not in done.stderr
    listed = {p["name"]: p for p in json.loads(done.stdout)}
    assert listed["broken"]["error"] == line.removeprefix("refundry: ")
    assert listed["refundry"]["sources"][0]["name"] == "jsonl"  # the others keep working
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(EXAMPLE) + "\n")
    ran = _cli(["run", "--source", "jsonl", "--input", str(src), "--out", str(tmp_path / "o.jsonl"),
                "--rulesets", str(RULESETS)], site, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert line in ran.stderr and len(lines(tmp_path / "o.jsonl")) == 1


def test_a_request_an_enricher_spoils_is_a_dead_letter_with_the_errors_of_the_whole(tmp_path: Path) -> None:
    """`run` parses a request once, before its enrichers, and then only the fields they
    changed; a request they made invalid still says what parsing it whole says, every error."""
    from refundry.core.errors import InvalidRequest
    from refundry.core.request import parse_request

    class Spoiler:
        @refundry.hookimpl
        def refundry_enrich_request(self, request: Mapping[str, Any], ref: str,
                                    options: Mapping[str, str]) -> Mapping[str, Any] | None:
            if request["request_id"] == "req-2":
                return {"timezone": 5, "facts": {"x": {"y": [{"z": object()}]}}}
            return {"facts": {"velocity": 3}}

    plugins = plugins_with(("spoiler", Spoiler()))
    src = write_jsonl(tmp_path / "in.jsonl", [request(1), request(2)])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  plugins=plugins)
    assert summary.decided == 1 and summary.dead_letters == 1
    (dead,) = lines(tmp_path / "o.jsonl.dead-letter.jsonl")
    with pytest.raises(InvalidRequest) as whole:
        parse_request(plugins.enrich(request(2), "in.jsonl:2", {}), source="in.jsonl:2")
    assert dead["errors"] == [str(e) for e in whole.value.errors] and len(dead["errors"]) == 2
