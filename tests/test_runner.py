"""``refundry run``: counts, dead letters, resuming after an interruption or a kill.

The kill test always runs on 2,000 requests; the 100,000-request version runs with
``REFUNDRY_LONG=1`` (marker ``slow``).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from refundry.app.runner import PlainProgress, Shield, run
from refundry.plugins import JsonLinesWriter, SourceError

ROOT = Path(__file__).resolve().parents[1]
RULESETS = ROOT / "rulesets"
EXAMPLE = json.loads((ROOT / "examples" / "request.json").read_text())
LONG = os.environ.get("REFUNDRY_LONG") == "1"


def generate(path: Path, n: int) -> Path:
    """``n`` requests with all three outcomes: in period, past the period, and large/invalid."""
    with path.open("w") as fh:
        for i in range(n):
            req: dict[str, Any] = {**EXAMPLE, "request_id": f"gen-{i:06d}",
                                   # many customers and orders, as a real batch has
                                   "customer": {"id": f"cust-{i % 997}"},
                                   "transaction": {**EXAMPLE["transaction"], "id": f"ord-{i}"}}
            if i % 3 == 1:
                req["requested_at"] = "2024-04-20T10:00:00+02:00"  # past the 14 days: deny
            elif i % 3 == 2:
                req["reason"] = "defective"  # no rule decides it: manual review
            fh.write(json.dumps(req) + "\n")
    return path


def ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


def test_counts_outcomes_dead_letters_and_duplicates(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 30)
    with src.open("a") as fh:
        fh.write(json.dumps({**EXAMPLE, "request_id": "gen-000000"}) + "\n")  # a repeat
        fh.write(json.dumps({**EXAMPLE, "request_id": "bad", "currency": "EURO"}) + "\n")
    summary = run(source="jsonl", input_path=src, out=tmp_path / "out.jsonl", rulesets=[RULESETS])
    assert summary.outcomes == {"approve": 10, "deny": 10, "manual_review": 10}
    assert summary.duplicates == 1 and summary.dead_letters == 1
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == 30 and out[0]["amount"] == "119.99" and out[0]["currency"] == "EUR"
    dead = json.loads((tmp_path / "out.jsonl.dead-letter.jsonl").read_text())
    assert dead == {"ref": "in.jsonl:32", "source": "jsonl", "request_id": "bad",
                    "reason": "invalid request: in.jsonl:32: field `currency`: `EURO` is not an "
                              "ISO 4217 currency code",
                    "errors": ["in.jsonl:32: field `currency`: `EURO` is not an ISO 4217 currency code"]}


def test_a_rerun_skips_what_the_journal_lists(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 20)
    first = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS])
    assert first.decided == 20
    with src.open("a") as fh:
        fh.write(json.dumps({**EXAMPLE, "request_id": "new-1"}) + "\n")
    second = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS])
    assert second.skipped == 20 and second.decided == 1
    assert ids(tmp_path / "o.jsonl") == [f"gen-{i:06d}" for i in range(20)] + ["new-1"]


def test_torn_last_lines_are_dropped_and_rewritten(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 5)
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS])
    # Simulate a kill in the middle of writing: the journal loses its last two entries and the
    # output its last line and a half.
    journal = tmp_path / "o.jsonl.progress.jsonl"
    jl = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(jl[:3]) + jl[3][:10])
    out = (tmp_path / "o.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "o.jsonl").write_text("".join(out[:3]) + out[3][:25])
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS])
    assert summary.skipped == 3 and summary.decided == 2
    assert ids(tmp_path / "o.jsonl") == [f"gen-{i:06d}" for i in range(5)]
    assert len(journal.read_text().splitlines()) == 5


def test_a_sink_skips_a_key_it_already_holds(tmp_path: Path) -> None:
    w = JsonLinesWriter(tmp_path / "x.jsonl", "id")
    assert w.write({"id": "a"}) and not w.write({"id": "a"})
    w.close()
    again = JsonLinesWriter(tmp_path / "x.jsonl", "id")
    assert not again.write({"id": "a"}) and again.write({"id": "b"})
    again.close()
    assert (tmp_path / "x.jsonl").read_text() == '{"id": "a"}\n{"id": "b"}\n'


def test_a_run_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cannot read `.*missing.jsonl`: no such file"):
        run(source="jsonl", input_path=tmp_path / "missing.jsonl", rulesets=[RULESETS])
    with pytest.raises(SourceError, match=r"no sink `nope`; installed: "):
        run(source="jsonl", input_path=generate(tmp_path / "i", 1), sinks=["nope"],
            rulesets=[RULESETS])


def test_two_workers_give_the_same_decisions_in_the_same_order(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 600)
    one = run(source="jsonl", input_path=src, out=tmp_path / "a.jsonl", rulesets=[RULESETS])
    two = run(source="jsonl", input_path=src, out=tmp_path / "b.jsonl", rulesets=[RULESETS],
              workers=2)
    assert one.outcomes == two.outcomes == {"approve": 200, "deny": 200, "manual_review": 200}
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_a_run_with_workers_leaves_the_collector_as_it_found_it(tmp_path: Path) -> None:
    """A run with workers freezes what was loaded and collects rarely while it lasts
    (``_collecting_rarely``); after it, and after one that fails, the collector is as before."""
    src = generate(tmp_path / "in.jsonl", 40)
    before = gc.get_threshold(), gc.get_freeze_count()

    def failing(decision: Any, request: Any) -> None:
        raise RuntimeError("the store is gone")

    run(source="jsonl", input_path=src, out=tmp_path / "a.jsonl", rulesets=[RULESETS], workers=2)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
    with pytest.raises(RuntimeError, match="the store is gone"):
        run(source="jsonl", input_path=src, out=tmp_path / "b.jsonl", rulesets=[RULESETS],
            workers=2, record=failing)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_plain_progress_writes_lines(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 50)
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            progress=PlainProgress(fh, every=0.0))
    text = log.read_text().splitlines()
    assert text[0].startswith("refundry run: 1 records, ") and text[-1].startswith("refundry run: 50 records, ")


def _cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "refundry.cli", "run", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _feed(fifo: Path, lines: list[str], done: threading.Event) -> None:
    """Write ``lines`` into the named pipe the run reads, then hold it open until ``done``: the
    run has the rest of its input still to come, so it cannot finish before the signal lands
    (a 2,000-request run once ended before a SIGINT sent at a tenth of it arrived)."""
    try:
        with fifo.open("w") as fh:  # blocks until the run opens its input
            fh.writelines(lines)
            fh.flush()
            done.wait(150)
    except BrokenPipeError:  # the run was killed before it read all of the first part
        pass


def _kill_and_resume(tmp_path: Path, n: int, workers: int, sig: int = signal.SIGKILL,
                     db: bool = False) -> None:
    full = generate(tmp_path / "all.jsonl", n).read_text().splitlines(keepends=True)
    src = tmp_path / "in.jsonl"
    os.mkfifo(src)
    fed = threading.Event()
    feeder = threading.Thread(target=_feed, args=(src, full[: n // 2], fed), daemon=True)
    feeder.start()
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.progress.jsonl"
    store = tmp_path / "records.db"
    args = ["--source", "jsonl", "--input", str(src), "--out", str(out), "--rulesets",
            str(RULESETS), "--workers", str(workers)] + (["--db", str(store)] if db else [])
    proc = _cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.stat().st_size > 60 * max(n // 10, 50):
            break
        time.sleep(0.002)
    os.killpg(proc.pid, sig)  # the whole group: worker processes too
    _, first_err = proc.communicate()
    fed.set()
    feeder.join(10)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {first_err}"
    else:  # Ctrl-C: the run stops cleanly, says so, and exits 130
        assert proc.returncode == 130, first_err
        assert "interrupted: re-run to continue" in first_err and "Traceback" not in first_err
    src.unlink()  # the re-run reads the same path, now the whole input
    (tmp_path / "all.jsonl").rename(src)
    done_before = len(journal.read_text().splitlines())
    assert 0 < done_before < n
    again = _cli(*args, cwd=tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    decided = ids(out)
    assert len(decided) == n and len(set(decided)) == n
    assert sorted(decided) == [f"gen-{i:06d}" for i in range(n)]
    assert len(journal.read_text().splitlines()) == n
    assert "skipped (done before)" in err
    if db:
        from refundry import open_store

        with open_store(store, create=False) as records:
            cases = records.cases()
            assert len(cases) == n and len({c.request_id for c in cases}) == n
            assert records.verify().ok


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_run_resumes_with_exactly_one_decision_per_request(tmp_path: Path, workers: int) -> None:
    _kill_and_resume(tmp_path, 2_000, workers=workers)


def test_a_killed_run_into_sqlite_resumes_with_exactly_one_case_per_request(tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, 2_000, workers=1, db=True)


def test_an_interrupted_run_says_so_and_resumes(tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, 2_000, workers=1, sig=signal.SIGINT)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="set REFUNDRY_LONG=1 for the 100,000-request kill test")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_run_of_100k_resumes_exactly(tmp_path: Path, workers: int) -> None:
    _kill_and_resume(tmp_path, 100_000, workers=workers, db=True)


def test_a_source_or_sink_that_cannot_start_leaves_no_files(tmp_path: Path) -> None:
    import refundry
    from refundry.plugins import Plugins, Sink, Source, SourceRecord, make_plugin_manager, option

    class Strict:
        @refundry.hookimpl
        def refundry_sources(self) -> list[Source]:
            def read(path: Path, options: dict[str, str]) -> Any:
                option(options, "client_id", "strict")
                yield SourceRecord("x", request={**EXAMPLE})
            return [Source("strict", read)]

        @refundry.hookimpl
        def refundry_sinks(self) -> list[Sink]:
            def open_(path: Path | None, options: dict[str, str]) -> Any:
                raise PermissionError("read-only directory")
            return [Sink("locked", open_)]

    plugins = Plugins(make_plugin_manager(entry_points=False, extra=[("strict", Strict())]))
    src = generate(tmp_path / "in.jsonl", 1)
    with pytest.raises(SourceError, match=r"source `strict` needs `--option client_id=...`"):
        run(source="strict", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
            plugins=plugins)
    from refundry.plugins import PluginError

    with pytest.raises(PluginError, match=r"plugin `strict`: sink `locked` cannot open: "
                       r"PermissionError: read-only directory"):
        run(source="jsonl", input_path=src, sinks=["locked"], out=tmp_path / "o.jsonl",
            rulesets=[RULESETS], plugins=plugins)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_terminal_bar_and_summary_table(tmp_path: Path) -> None:
    import io

    from refundry.app.runner import BarProgress, print_summary

    src = generate(tmp_path / "in.jsonl", 9)
    bar_out = io.StringIO()
    summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS],
                  progress=BarProgress(bar_out))
    table = io.StringIO()
    print_summary(summary, table, rich_table=True)
    rows = {line.strip("│┃ ").split("│")[0].strip(): line.split("│")[-2].strip()
            for line in table.getvalue().splitlines() if line.count("│") == 3}
    assert rows["approve"] == "3" and rows["deny"] == "3" and rows["manual_review"] == "3"
    assert rows["dead letters"] == "0" and rows["skipped (done before)"] == "0"
    plain = io.StringIO()
    print_summary(summary, plain, rich_table=False)
    assert plain.getvalue().startswith("refundry run: approve 3, deny 3, manual_review 3, dead letters 0")


def test_run_records_every_decision_once_in_the_store(tmp_path: Path) -> None:
    """`refundry run --db`: each decision becomes one case; re-running the same input after the
    journal is lost appends nothing twice, and the chain verifies."""
    from refundry import open_store

    src = generate(tmp_path / "in.jsonl", 60)
    db = tmp_path / "records.db"
    args = ["run", "--source", "jsonl", "--input", str(src), "--out", str(tmp_path / "out.jsonl"),
            "--rulesets", str(RULESETS), "--db", str(db), "--by", "batch-bot"]
    exe = [sys.executable, "-m", "refundry.cli"]
    first = subprocess.run([*exe, *args], capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "out.jsonl.progress.jsonl").unlink()  # forget the journal: the store must dedupe
    second = subprocess.run([*exe, *args], capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    with open_store(db, create=False) as store:
        cases = store.cases()
        assert len(cases) == 60
        assert {c.submitter for c in cases} == {"batch-bot"}
        assert sorted(c.status for c in cases).count("manual_review") == 20
    verify = subprocess.run([*exe, "records", "verify", "--db", str(db)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie is dead, waiting for its (dead) parent's reaper
            alive.add(pid)
    return alive


def _started_with_workers(tmp_path: Path, n: int) -> tuple[subprocess.Popen[str], set[int], list[str]]:
    src = generate(tmp_path / "in.jsonl", n)
    args = ["--source", "jsonl", "--input", str(src), "--out", str(tmp_path / "out.jsonl"),
            "--rulesets", str(RULESETS), "--workers", "2"]
    proc = _cli(*args, cwd=tmp_path)
    journal = tmp_path / "out.jsonl.progress.jsonl"
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) >= 2 and journal.exists() and journal.stat().st_size > 6_000:
            break
        time.sleep(0.005)
    assert proc.poll() is None and len(workers) >= 2, "the run ended before it could be stopped"
    return proc, workers, args


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_never_outlive_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    proc, workers, _ = _started_with_workers(tmp_path, 8_000)
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone, not its group
    proc.communicate()
    deadline = time.monotonic() + 20
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(workers) == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_checkpoints_prints_the_summary_and_exits_143(tmp_path: Path) -> None:
    proc, workers, args = _started_with_workers(tmp_path, 8_000)
    os.kill(proc.pid, signal.SIGTERM)  # the parent alone, as a service manager does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted: re-run to continue" in err and "Traceback" not in err
    deadline = time.monotonic() + 20
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(workers) == set()
    # A checkpoint: every decision written was journalled and every one journalled written.
    # A stop that lands between a sink's write and its journal line waits for the line.
    journal = tmp_path / "out.jsonl.progress.jsonl"
    journalled = len(journal.read_text().splitlines())
    assert len(ids(tmp_path / "out.jsonl")) == journalled
    again = _cli(*args, cwd=tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert sorted(ids(tmp_path / "out.jsonl")) == [f"gen-{i:06d}" for i in range(8_000)]


def test_the_rate_line_does_not_count_skipped_records(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 300)
    run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl", rulesets=[RULESETS])
    seen: list[tuple[int, int]] = []

    class Spy(PlainProgress):
        def advance(self, summary: Any) -> None:
            seen.append((summary.records, summary.processed))

    with (tmp_path / "log.txt").open("w") as fh:
        summary = run(source="jsonl", input_path=src, out=tmp_path / "o.jsonl",
                      rulesets=[RULESETS], progress=Spy(fh, every=0.0))
    assert summary.skipped == 300 and summary.processed == 0
    assert seen[-1] == (300, 0)  # 300 records read, none processed: a rate of 0/s


def test_out_dir_writes_one_file_per_sink(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 6)
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "refundry.cli", "run", "--source", "jsonl",
                           "--input", str(src), "--out", f"{out}/", "--rulesets", str(RULESETS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dead-letter.jsonl", "jsonl.jsonl",
                                                      "progress.jsonl"]
    assert len(ids(out / "jsonl.jsonl")) == 6


def test_preview_prints_records_and_their_kinds_without_deciding(tmp_path: Path) -> None:
    src = generate(tmp_path / "in.jsonl", 5)
    done = subprocess.run([sys.executable, "-m", "refundry.cli", "run", "--source", "jsonl",
                           "--input", str(src), "--preview", "2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    items = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(i["ref"], i["kind"], i["request"]["request_id"]) for i in items] == [
        ("in.jsonl:1", "request", "gen-000000"), ("in.jsonl:2", "request", "gen-000001")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing written


def test_a_misspelt_option_names_the_nearest(tmp_path: Path) -> None:
    pytest.importorskip("refundry_ecommerce", reason="its shopify source declares the options")
    src = generate(tmp_path / "in.jsonl", 1)
    done = subprocess.run([sys.executable, "-m", "refundry.cli", "run", "--source", "shopify",
                           "--input", str(src), "--option", "client_id=a",
                           "--option", "jurisdcition=DE"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "refundry: unknown option `jurisdcition`; did you mean `jurisdiction`?")


def test_a_run_that_cannot_start_leaves_no_store_behind(tmp_path, capsys):
    """A missing --option is found when the source starts, after --db was opened: the store
    file this run created, still empty, is removed; an existing store is kept."""
    from refundry.cli import main
    from refundry.records.stores import open_store

    payload = (ROOT / "plugins" / "refundry-ecommerce" / "tests" / "payloads" / "shopify"
               / "shopify_api_js_2024-04_refund_test_1.json")
    db = tmp_path / "records.db"
    argv = ["run", "--source", "shopify", "--input", str(payload), "--out", str(tmp_path / "o.jsonl"),
            "--db", str(db)]
    assert main(argv) == 1
    assert "source `shopify` needs `--option client_id=...`" in capsys.readouterr().err
    assert not db.exists() and not list(tmp_path.glob("records.db*"))
    open_store(db).close()  # an existing store stays, even empty
    assert main(argv) == 1
    assert db.exists()


def test_a_stop_asked_for_while_a_decision_is_written_waits_for_it_to_be_whole() -> None:
    shield, done = Shield(), []
    with pytest.raises(KeyboardInterrupt), shield.held():
        with shield.held():
            shield.stop(KeyboardInterrupt())  # as a SIGTERM handler does, mid-write
            done.append("sink")
        done.append("journal")
    assert done == ["sink", "journal"]
    with pytest.raises(KeyboardInterrupt):
        shield.stop(KeyboardInterrupt())  # between decisions: at once
