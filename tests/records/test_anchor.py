"""The tamper suite with an anchor (issue 12, defects 6 and 7), on SQLite and PostgreSQL.

A store is filled by writers holding a signing key, with signed checkpoints written to an
anchor every 5 events (a file for SQLite; a table in another schema for PostgreSQL). Then someone
with write access to the database (triggers dropped) edits, deletes, reorders, cuts the tail,
restores an older copy, rewrites the whole chain and re-signs it with the stolen key, deletes
history index rows, changes the salt or drops kept ruleset texts. ``verify`` with the anchor
reports every one; without an anchor it says it is not anchored.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from refundry.records.anchors import FileAnchor, Signer, open_anchor
from refundry.records.events import genesis_of
from refundry.records.history import History
from refundry.records.stores import open_store

from .conftest import PG_ENV, StepClock, after_the_reviews, drop_pg_schema, make_request

LARGE = {"client_id": "acme", "amount": "600"}
TABLES = ("events", "meta", "ruleset_texts", "history_index", "history_meta", "signatures")


class Raw:
    """Direct SQL on a store, the way someone with the database password works on it."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgresql://")
        if self.pg:
            import psycopg

            base, _, query = url.partition("?")
            schema = dict(p.split("=", 1) for p in query.split("&"))["schema"]
            self.conn: Any = psycopg.connect(base, autocommit=True)
            self.conn.execute(f'SET search_path TO "{schema}"')
            self.conn.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
            self.conn.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        else:
            self.conn = sqlite3.connect(url, isolation_level=None)
            self.conn.execute("DROP TRIGGER IF EXISTS events_no_update")
            self.conn.execute("DROP TRIGGER IF EXISTS events_no_delete")

    def __call__(self, sql: str, args: tuple = ()) -> list[Any]:
        cur = self.conn.execute(sql.replace("?", "%s") if self.pg else sql, args)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def anchored(store_url, tmp_path, engine) -> Iterator[dict[str, Any]]:
    """A store with a few cases at every stage, a snapshot of every table taken halfway (the
    'older copy'), and its anchor."""
    signer = Signer.generate(tmp_path / "service.pem")
    schema = None
    if store_url.startswith("postgresql://"):
        schema = f"refundry_anchor_{uuid.uuid4().hex[:12]}"
        target = f"{os.environ[PG_ENV]}?schema={schema}"
    else:
        target = str(tmp_path / "anchor.jsonl")

    def opened() -> Any:
        return open_store(store_url, clock=StepClock(), signer=signer, anchor=open_anchor(target),
                          anchor_every=5)

    store = opened()
    try:
        _fill(store, opened, store_url, engine)
        yield {"url": store_url, "target": target, "signer": signer, "count": 17}
    finally:
        if schema is not None:
            drop_pg_schema(os.environ[PG_ENV], schema)


def _fill(store: Any, opened: Callable[[], Any], url: str, engine: Any) -> None:
    for i in range(6):
        req = make_request(f"r-{i}", **(LARGE if i % 2 else {}))
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.review("r-1", actor="bob", approve=True, reason="ok")
    store.review("r-1", actor="carol", approve=True, reason="ok too")
    History(store).sync()
    store.close()
    raw = Raw(url)
    for table in TABLES:
        raw(f"CREATE TABLE bk_{table} AS SELECT * FROM {table}")
    raw.close()
    store = opened()
    after_the_reviews(store, engine)
    for i in range(6, 9):
        req = make_request(f"r-{i}")
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    History(store).sync()
    store.close()


def _verify(anchored: dict[str, Any], *, with_anchor: bool = True) -> Any:
    anchor = open_anchor(anchored["target"]) if with_anchor else None
    store = open_store(anchored["url"], create=False)
    try:
        return store.verify(anchor=anchor)
    finally:
        store.close()
        if anchor is not None:
            anchor.close()


def _rechain(raw: Raw, start: int, genesis: str, signer: Signer | None) -> None:
    """Recompute every hash (and signature, with the stolen key) from ``start`` on."""
    rows = raw("SELECT seq, body FROM events WHERE seq >= ? ORDER BY seq", (start,))
    prev_row = raw("SELECT hash FROM events WHERE seq = ?", (start - 1,))
    prev = prev_row[0][0] if prev_row else genesis
    for seq, body in rows:
        data = json.loads(body)
        data["prev"] = prev
        text = rfc8785.dumps(data).decode()
        prev = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        raw("UPDATE events SET body = ?, hash = ? WHERE seq = ?", (text, prev, seq))
        if signer is not None:
            raw("UPDATE signatures SET signature = ? WHERE seq = ?", (signer.sign_event(prev), seq))


def _edit(raw: Raw, a: dict) -> None:
    raw("UPDATE events SET body = replace(body, '\"bob\"', '\"mallory\"') WHERE seq = 7")


def _edit_and_rechain(raw: Raw, a: dict) -> None:
    body = raw("SELECT body FROM events WHERE seq = 3")[0][0]
    raw("UPDATE events SET body = ? WHERE seq = 3", (body.replace('"alice"', '"mallory"'),))
    raw("UPDATE events SET actor = 'mallory' WHERE seq = 3")
    _rechain(raw, 3, "", a["signer"])


def _delete(raw: Raw, a: dict) -> None:
    raw("DELETE FROM events WHERE seq = 9")


def _reorder(raw: Raw, a: dict) -> None:
    raw("UPDATE events SET seq = -1 WHERE seq = 10")
    raw("UPDATE events SET seq = 10 WHERE seq = 11")
    raw("UPDATE events SET seq = 11 WHERE seq = -1")


def _cut_tail(raw: Raw, a: dict) -> None:
    """A clean cut, index included, as a careful forger would make it."""
    raw("DELETE FROM events WHERE seq > 12")
    raw("DELETE FROM signatures WHERE seq > 12")
    raw("DELETE FROM history_index WHERE seq > 12")
    raw("UPDATE history_meta SET value = '12' WHERE key = 'seq'")


def _restore_older_copy(raw: Raw, a: dict) -> None:
    for table in TABLES:
        raw(f"DELETE FROM {table}")
        raw(f"INSERT INTO {table} SELECT * FROM bk_{table}")


def _rewrite_all_with_new_salt(raw: Raw, a: dict) -> None:
    salt = secrets.token_hex(32)
    raw("UPDATE meta SET value = ? WHERE key = 'salt'", (salt,))
    _rechain(raw, 1, genesis_of(bytes.fromhex(salt)), a["signer"])


def _change_salt(raw: Raw, a: dict) -> None:
    raw("UPDATE meta SET value = ? WHERE key = 'salt'", (secrets.token_hex(32),))


def _delete_history_row(raw: Raw, a: dict) -> None:
    raw("DELETE FROM history_index WHERE request_id = 'r-2'")


def _edit_history_status(raw: Raw, a: dict) -> None:
    raw("UPDATE history_index SET status = 'denied' WHERE request_id = 'r-0'")


def _delete_ruleset_texts(raw: Raw, a: dict) -> None:
    raw("DELETE FROM ruleset_texts")


def _delete_signature(raw: Raw, a: dict) -> None:
    raw("DELETE FROM signatures WHERE seq = 4")


MUTATIONS = {
    "edit": (_edit, "event 7 does not match its hash"),
    "edit and rechain, re-signed": (_edit_and_rechain, "is not the one the checkpoint"),
    "delete": (_delete, "event 9 is missing"),
    "reorder": (_reorder, "event 10"),
    "tail cut": (_cut_tail, "events were cut from the end, or an older copy was restored"),
    "restored older copy": (_restore_older_copy, "cut from the end, or an older copy"),
    "whole chain rewritten under a new salt": (_rewrite_all_with_new_salt, "of another chain"),
    "salt changed": (_change_salt, "`meta.salt` was changed"),
    "history row deleted": (_delete_history_row, "history_index has no row for request `r-2`"),
    "history status edited": (_edit_history_status, "differs from the chain in `status`"),
    "ruleset texts deleted": (_delete_ruleset_texts, "is missing from `ruleset_texts`"),
    "signature deleted": (_delete_signature, "event 4 was signed by"),
}


def test_an_untouched_store_verifies_as_anchored(anchored):
    result = _verify(anchored)
    assert result.ok and result.anchored and result.count == anchored["count"]
    assert result.anchored_count == anchored["count"]  # the last checkpoint was made at close
    bare = _verify(anchored, with_anchor=False)
    assert bare.ok and not bare.anchored


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_tampering_is_detected_with_an_anchor(anchored, name):
    mutate, expected = MUTATIONS[name]
    raw = Raw(anchored["url"])
    try:
        mutate(raw, anchored)
    finally:
        raw.close()
    result = _verify(anchored)
    assert not result.ok, name
    assert expected in result.problem, result.problem


def test_without_an_anchor_a_clean_cut_is_only_reported_as_not_anchored(anchored):
    raw = Raw(anchored["url"])
    try:
        _restore_older_copy(raw, anchored)
    finally:
        raw.close()
    bare = _verify(anchored, with_anchor=False)
    assert bare.ok and not bare.anchored and bare.count < anchored["count"]
    assert not _verify(anchored).ok


def test_a_forged_checkpoint_in_the_anchor_is_refused(anchored, tmp_path):
    if anchored["url"].startswith("postgresql"):
        pytest.skip("the file anchor's own tampering; the table is covered by its role")
    path = Path(anchored["target"])
    lines = path.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["count"] -= 1
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    result = _verify(anchored)
    assert not result.ok and "bad signature" in result.problem


def test_verify_cli_says_not_anchored_and_anchored(anchored, cli):
    if anchored["url"].startswith("postgresql"):
        pytest.skip("the CLI is the same for both stores")
    r = cli("records", "verify", "--db", anchored["url"])
    assert r.code == 0 and "not anchored: no anchor given" in r.out
    r = cli("records", "verify", "--db", anchored["url"], "--anchor", anchored["target"])
    assert r.code == 0 and f"anchored: the signed checkpoint of {anchored['count']} events" in r.out
    empty = FileAnchor(Path(anchored["target"]).with_name("empty.jsonl"))
    r = cli("records", "verify", "--db", anchored["url"], "--anchor", str(empty.path))
    assert r.code == 0 and "holds no signed checkpoint of this store" in r.out
    r = cli("records", "verify", "--db", anchored["url"], "--anchor", anchored["target"],
            "--trusted-key", Signer.generate(Path(anchored["target"]).with_name("other.pem")).key_id)
    assert r.code == 2 and "not a trusted key" in r.out


def test_checkpoints_are_written_every_n_events_and_at_close(anchored):
    counts = [c.count for c in open_anchor(anchored["target"]).checkpoints()]
    # anchor_every=5: at 5 and 10 while appending, at close (the first writer stopped at 8),
    # at 13 after it and at close again (17).
    assert counts == [5, 8, 13, 17]


def test_checkpoints_are_written_every_t_seconds(tmp_path, engine):
    signer = Signer.generate(tmp_path / "k.pem")
    anchor = FileAnchor(tmp_path / "a.jsonl")
    store = open_store(tmp_path / "r.db", signer=signer, anchor=anchor, anchor_every=10**6,
                       anchor_seconds=0)
    for i in range(3):
        req = make_request(f"r-{i}")
        store.record(req, engine.evaluate(req), engine=engine, actor="alice")
    store.close()
    assert [c.count for c in anchor.checkpoints()] == [1, 2, 3]
    assert all(c.valid() and c.key == signer.key_id for c in anchor.checkpoints())


def test_the_cli_signs_and_anchors_from_the_environment(cli, tmp_path, monkeypatch):
    from .conftest import RULESETS

    r = cli("records", "keygen", tmp_path / "svc.pem")
    key_id = r.out.strip()
    assert r.code == 0 and key_id.startswith("ed25519:")
    assert cli("records", "keygen", tmp_path / "svc.pem").code == 1  # never overwritten
    monkeypatch.setenv("REFUNDRY_SIGNING_KEY", str(tmp_path / "svc.pem"))
    monkeypatch.setenv("REFUNDRY_ANCHOR", str(tmp_path / "anchor.jsonl"))
    db = tmp_path / "r.db"
    for i in range(2):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(make_request(f"r-{i}")))
        assert cli("evaluate", path, "--rulesets", RULESETS, "--record", "--db", db,
                   "--by", "alice").code == 0
    shown = cli("records", "show", "r-1", "--db", db).json()
    assert shown["events"][0]["key"] == key_id  # who appended, in the hashed body
    import jsonschema

    from refundry.core.resources import schema

    jsonschema.Draft202012Validator(schema("record-event.schema.json")).validate(shown["events"][0])
    r = cli("records", "verify", "--db", db, "--trusted-key", key_id)
    assert r.code == 0 and "anchored: the signed checkpoint of 2 events" in r.out
    assert cli("records", "anchor", "--db", db).out.strip() == "null"  # nothing new
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(make_request(f"b-{i}")) + "\n" for i in range(3)))
    assert cli("run", "--source", "jsonl", "--input", source, "--out", tmp_path / "o.jsonl",
               "--rulesets", RULESETS, "--db", db, "--by", "batch").code == 0
    counts = [c.count for c in FileAnchor(tmp_path / "anchor.jsonl").checkpoints()]
    assert counts[-1] == 5  # the batch's head, once it committed
    monkeypatch.delenv("REFUNDRY_SIGNING_KEY")
    r = cli("records", "note", "r-1", "--by", "bob", "--text", "hi", "--db", db)
    assert r.code == 1 and "needs $REFUNDRY_SIGNING_KEY" in r.err


def test_a_postgresql_anchor_role_can_add_checkpoints_but_not_remove_them(tmp_path):
    """The anchor as a table of another role: the writers' role has INSERT and SELECT only."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip("PostgreSQL tests are off")
    import psycopg

    schema, role = f"refundry_anchor_{uuid.uuid4().hex[:12]}", f"anchor_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(base, autocommit=True)
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        admin.execute(f'CREATE TABLE "{schema}".checkpoints (count BIGINT NOT NULL, head TEXT '
                      "NOT NULL, genesis TEXT NOT NULL, at TEXT NOT NULL, key TEXT NOT NULL, "
                      "signature TEXT NOT NULL, PRIMARY KEY (count, key))")
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        admin.execute(f'GRANT INSERT, SELECT ON "{schema}".checkpoints TO {role}')
        url = base.replace("postgres@", f"{role}@", 1) + f"?schema={schema}"
        signer = Signer.generate(tmp_path / "k.pem")
        store = open_store(tmp_path / "r.db", signer=signer, anchor=open_anchor(url))
        store.set_four_eyes_above("600", actor="admin")
        store.close()
        anchor = open_anchor(url)
        assert [c.count for c in anchor.checkpoints()] == [1]
        anchor.close()
        with psycopg.connect(base.replace("postgres@", f"{role}@", 1), autocommit=True) as writer, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute(f'DELETE FROM "{schema}".checkpoints')
    finally:
        drop_pg_schema(base, schema)
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()
