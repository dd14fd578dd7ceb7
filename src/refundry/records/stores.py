"""Where records live: an SQLite file (the default, no server) or a PostgreSQL schema.

Both keep the same three tables: ``events`` (the chain), ``ruleset_texts`` (the exact text of
every ruleset layer a recorded decision used, keyed by its digest) and ``meta`` (the store's
pseudonym salt). Appends are serialised across processes (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
a table lock that plain reads pass through), so each writer reads the true head before it links
to it. Triggers refuse UPDATE and DELETE on ``events``: that stops accidents, and the hash chain
catches anyone who removes the triggers first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from refundry.records.events import GENESIS, RecordError, RecordStore, Row, new_salt

DEFAULT_PATH = "refundry.db"
PAGE = 2_000  # rows read per query: verify streams a store of any size in bounded memory
BUSY_TIMEOUT_S = 120

_COLUMNS = "seq, request_id, type, at, actor, body, hash"


def open_store(url_or_path: str | Path | None = None, *, create: bool = True,
               clock: Callable[[], dt.datetime] | None = None, **anchoring: Any) -> RecordStore:
    """Open the records store at a path or URL, creating it unless ``create`` is False.

    ``postgresql://user@host:port/db?schema=name`` is a PostgreSQL store in schema ``name``
    (default ``refundry``); ``sqlite:///path`` or a plain path is an SQLite file (default
    ``./refundry.db``). Readers pass ``create=False``: verifying a mistyped path must fail,
    not report an empty store as whole.

    ``anchoring``: ``signer`` (an ``anchors.Signer``: each event then carries its key and a
    signature), ``anchor`` (``anchors.open_anchor(...)``: signed checkpoints are written there
    every ``anchor_every`` events or ``anchor_seconds`` seconds, and at close).
    """
    target = str(url_or_path) if url_or_path else DEFAULT_PATH
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresStore(target, create=create, clock=clock, **anchoring)
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///"):] or DEFAULT_PATH
    elif "://" in target:
        scheme = target.split("://", 1)[0][:20]
        raise RecordError(f"`{scheme}://` is not a records store; use a file path or postgresql://")
    return SQLiteStore(target, create=create, clock=clock, **anchoring)


# --- SQLite --------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL, type TEXT NOT NULL, at TEXT NOT NULL,
    actor TEXT NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_case ON events (request_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_one_evaluation ON events (request_id)
    WHERE type = 'evaluated';
CREATE TABLE IF NOT EXISTS ruleset_texts (
    digest TEXT PRIMARY KEY, ruleset_id TEXT NOT NULL, version TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_review_queue ON events (seq) WHERE type = 'evaluated'
    AND CASE WHEN json_valid(body) THEN json_extract(body, '$.decision.outcome') END
        = 'manual_review';
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
"""
# Signatures of events appended with a signing key; the key itself is in the hashed body.
_SIGNATURES = ("CREATE TABLE IF NOT EXISTS signatures (seq BIGINT PRIMARY KEY, "
               "key TEXT NOT NULL, signature TEXT NOT NULL)")


@contextlib.contextmanager
def _savepoint(conn: Any) -> Iterator[None]:
    """One append inside a batch: undone alone if it fails, kept with the batch otherwise."""
    conn.execute("SAVEPOINT refundry_append")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT refundry_append")
        conn.execute("RELEASE SAVEPOINT refundry_append")
        raise
    conn.execute("RELEASE SAVEPOINT refundry_append")


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def head(self) -> tuple[int, str]:
        row = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def case_rows(self, request_id: str) -> list[Row]:
        return self.conn.execute(f"SELECT {_COLUMNS} FROM events WHERE request_id = ? ORDER BY seq",
                                 (request_id,)).fetchall()

    def snapshot(self, request_id: str, store_case: str) -> tuple[list[Row], list[Row], tuple[int, str]]:
        """What an append decides on: the case's rows, the store-level rows, and the head."""
        return self.case_rows(request_id), self.case_rows(store_case), self.head()

    def put_text(self, digest: str, rid: str, version: str, text: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO ruleset_texts VALUES (?, ?, ?, ?)",
                          (digest, rid, version, text))

    def insert(self, row: Row) -> None:
        self.conn.execute(f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def put_signature(self, seq: int, key: str, signature: str) -> None:
        self.conn.execute("INSERT INTO signatures VALUES (?, ?, ?)", (seq, key, signature))


class SQLiteStore(RecordStore):
    """One SQLite file in WAL mode: readers never block the single writer."""

    def __init__(self, path: str | Path, *, create: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, **anchoring: Any) -> None:
        super().__init__(clock=clock, **anchoring)
        self.path = Path(path)
        self.url = str(path)
        self._lock = threading.RLock()
        self._jitter = random.Random()
        if not create and not self.path.is_file():
            raise RecordError(f"no records store at `{self.url}`")
        try:
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
            self._conn = sqlite3.connect(str(self.path), isolation_level=None,
                                         check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed approval record survives a power cut, not only a crash.
            self._conn.execute("PRAGMA synchronous = FULL")
            # An existing store is opened as it is, so a tampered one can still be verified.
            if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                      "AND name = 'meta'").fetchone():
                if not create:
                    self._conn.close()
                    raise RecordError(f"`{self.url}` is not a refundry records store")
                with self._transaction():
                    for statement in _statements(_SQLITE_SCHEMA):
                        self._conn.execute(statement)
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)",
                                       (new_salt(),))
                    # 2: event 1 names the salt's commitment (records.genesis_of)
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', '2')")
            if anchoring.get("signer") is not None:
                self._conn.execute(_SIGNATURES)
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"cannot open records store `{self.url}`: {str(exc).lower()}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_SQLiteTx]:
        with self._lock:
            if self._in_batch():
                with _savepoint(self._conn):
                    yield _SQLiteTx(self._conn)
                return
            self._begin_immediate()
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._conn.execute("ROLLBACK")
                raise RecordError(f"records store `{self.url}`: the event was not written: "
                                  f"{str(exc).lower()}") from None

    def _begin_immediate(self) -> None:
        """Take the write lock, waiting for other processes with short, jittered sleeps.

        SQLite's own busy handler backs off to 100 ms sleeps, so with several writers the lock
        sat idle most of the time (4 processes appended 3x slower than 1); polling every
        fraction of a millisecond hands it over as soon as it is free.
        """
        conn = self._conn
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.0001
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    busy = "locked" in str(exc) or "busy" in str(exc)
                    if not busy or time.monotonic() > deadline:
                        raise RecordError(f"records store `{self.url}` is busy or unwritable: "
                                          f"{str(exc).lower()}; nothing was recorded") from None
                time.sleep(delay * (0.5 + self._jitter.random()))
                delay = min(delay * 1.5, 0.002)
        finally:
            # Reads and commits keep the long timeout (a WAL checkpoint may briefly block them).
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise RecordError(f"records store `{self.url}`: {str(exc).lower()}") from None

    def _rows(self, request_id: str | None = None, after: int = 0) -> Iterator[Row]:
        where = "" if request_id is None else "AND request_id = ?"
        while True:
            args: tuple[Any, ...] = (after,) if request_id is None else (after, request_id)
            page = self._query(f"SELECT {_COLUMNS} FROM events WHERE seq > ? {where} "
                               f"ORDER BY seq LIMIT {PAGE}", args)
            yield from page
            if len(page) < PAGE:
                return
            after = page[-1][0]


    def _json_text(self, *path: str) -> str:
        # Guarded: a damaged (tampered) body reads as NULL here; `records verify` reports it.
        return (f"CASE WHEN json_valid(e.body) THEN json_extract(e.body, '$.{'.'.join(path)}') "
                "END")

    def _head(self) -> tuple[int, str]:
        with self._lock:
            return _SQLiteTx(self._conn).head()


    def close(self) -> None:
        self._close_anchoring()
        with self._lock:
            self._conn.close()


def _statements(script: str) -> list[str]:
    """Split the schema script; a trigger body holds a ``;`` of its own."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and (not joined.upper().startswith("CREATE TRIGGER")
                                     or joined.upper().endswith("END;")):
            out.append(joined)
            buf = []
    return out


# --- PostgreSQL ----------------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT PRIMARY KEY, request_id TEXT NOT NULL, type TEXT NOT NULL, at TEXT NOT NULL,
    actor TEXT NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_case ON events (request_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_one_evaluation ON events (request_id)
    WHERE type = 'evaluated';
CREATE TABLE IF NOT EXISTS ruleset_texts (
    digest TEXT PRIMARY KEY, ruleset_id TEXT NOT NULL, version TEXT NOT NULL, text TEXT NOT NULL);
CREATE OR REPLACE FUNCTION refundry_json_text(body TEXT, path TEXT[]) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE AS
    $$ BEGIN RETURN body::jsonb #>> path; EXCEPTION WHEN others THEN RETURN NULL; END $$;
CREATE INDEX IF NOT EXISTS events_review_queue ON events (seq) WHERE type = 'evaluated'
    AND refundry_json_text(body, '{decision,outcome}') = 'manual_review';
CREATE OR REPLACE FUNCTION refundry_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'records are append-only'; END $$;
DROP TRIGGER IF EXISTS events_append_only ON events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refundry_append_only();
DROP TRIGGER IF EXISTS events_no_truncate ON events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refundry_append_only();
INSERT INTO meta VALUES ('format', '2') ON CONFLICT DO NOTHING;
"""


def _split_pg_url(url: str) -> tuple[str, str]:
    """The connection URL without our ``schema`` parameter, and the schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "refundry")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _shown(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class _PgTx:
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def head(self) -> tuple[int, str]:
        self.cur.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        row = self.cur.fetchone()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def case_rows(self, request_id: str) -> list[Row]:
        self.cur.execute(f"SELECT {_COLUMNS} FROM events WHERE request_id = %s ORDER BY seq",
                         (request_id,))
        return self.cur.fetchall()

    def snapshot(self, request_id: str, store_case: str) -> tuple[list[Row], list[Row], tuple[int, str]]:
        """The case's rows, the store-level rows and the head in one round trip: the lock is
        held for every round trip an append makes."""
        self.cur.execute(
            f"SELECT 0, {_COLUMNS} FROM events WHERE request_id = %s "
            f"UNION ALL SELECT 1, {_COLUMNS} FROM events WHERE request_id = %s "
            f"UNION ALL (SELECT 2, {_COLUMNS} FROM events ORDER BY seq DESC LIMIT 1) "
            "ORDER BY 1, 2", (request_id, store_case))
        parts: tuple[list[Row], list[Row], list[Row]] = ([], [], [])
        for part, *row in self.cur.fetchall():
            parts[part].append((int(row[0]), *row[1:]))
        head = (parts[2][0][0], parts[2][0][6]) if parts[2] else (0, GENESIS)
        return parts[0], parts[1], head

    def put_text(self, digest: str, rid: str, version: str, text: str) -> None:
        self.cur.execute("INSERT INTO ruleset_texts VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (digest) DO NOTHING", (digest, rid, version, text))

    def insert(self, row: Row) -> None:
        self.cur.execute(f"INSERT INTO events ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         row)

    def put_signature(self, seq: int, key: str, signature: str) -> None:
        self.cur.execute("INSERT INTO signatures VALUES (%s, %s, %s)", (seq, key, signature))


class PostgresStore(RecordStore):
    """A schema in a PostgreSQL database, shared by any number of processes and machines."""

    _param = "%s"

    def __init__(self, url: str, *, create: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, **anchoring: Any) -> None:
        super().__init__(clock=clock, **anchoring)
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise RecordError("a postgresql store needs psycopg: pip install 'refundry[postgres]'") from None
        self._psycopg = psycopg
        self._conninfo, self.schema = _split_pg_url(url)
        self.url = _shown(url)
        self._lock = threading.RLock()
        self._conn = self._connect()
        schema_id = sql.Identifier(self.schema)
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                # Two processes creating the same new store at once would race on the catalog.
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("refundry:" + self.schema,))
                if create:
                    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
                # Not SET LOCAL: the search path must outlive this transaction.
                cur.execute(sql.SQL("SET search_path TO {}").format(schema_id))
                # An existing store is opened as it is, so a tampered one can still be verified.
                cur.execute("SELECT to_regclass('meta') IS NULL")
                if (cur.fetchone() or (True,))[0]:
                    if not create:
                        raise RecordError(f"no records store in schema `{self.schema}` of "
                                          f"`{self.url}`")
                    cur.execute(_PG_SCHEMA)
                    cur.execute("INSERT INTO meta VALUES ('salt', %s) ON CONFLICT DO NOTHING",
                                (new_salt(),))
                if anchoring.get("signer") is not None:
                    cur.execute(_SIGNATURES)
        except RecordError:
            self._conn.close()
            raise
        except psycopg.Error as exc:
            self._conn.close()
            raise RecordError(f"cannot open records store `{self.url}`: "
                              f"{' '.join(str(exc).split()).lower()}") from None

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            # Autocommit: a read is one round trip; appends open their own transaction.
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise RecordError(f"cannot connect to `{self.url}`: "
                              f"{' '.join(str(exc).split()).lower()}") from None
        if getattr(self, "_conn", None) is not None:  # a reconnect: the schema exists
            conn.execute(self._psycopg.sql.SQL("SET search_path TO {}").format(
                self._psycopg.sql.Identifier(self.schema)))
        return conn

    def _live(self) -> Any:
        """The connection, opened again if the server dropped it (a restart, a failover);
        a long-running service should not need restarting because the database did."""
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_PgTx]:
        psycopg = self._psycopg
        with self._lock:
            if self._in_batch():
                with _savepoint(self._conn), self._conn.cursor() as cur:
                    yield _PgTx(cur)
                return
            conn = self._lock_events_table()
            try:
                with conn.cursor() as cur:
                    yield _PgTx(cur)
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                # Lost during COMMIT, the outcome is unknown; otherwise it was rolled back.
                outcome = ("the connection was lost: check with `refundry records show` whether "
                           "the event was written" if conn.broken else "the event was not written")
                raise RecordError(f"records store `{self.url}`: {outcome}: "
                                  f"{' '.join(str(exc).split()).lower()}") from None
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def setup_cursor(self) -> Iterator[Any]:
        """A cursor in one transaction of the owner's connection, for schema changes made
        beside the store's own (``records/rowsecurity.py``)."""
        with self._lock, self._live().transaction(), self._conn.cursor() as cur:
            yield cur

    def _lock_events_table(self) -> Any:
        """Begin a transaction holding the appenders' lock. A connection the server dropped
        while idle is replaced once: nothing has been written yet, so trying again is safe."""
        for attempt in (1, 2):
            conn = self._live()
            try:
                # The lock conflicts with itself (one appender at a time), not with plain reads.
                conn.execute("BEGIN; LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE")
                return conn
            except self._psycopg.Error as exc:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                if attempt == 2 or not conn.broken:
                    raise RecordError(f"records store `{self.url}`: the event was not written: "
                                      f"{' '.join(str(exc).split()).lower()}") from None
        raise AssertionError("unreachable")

    def _query(self, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            for attempt in (1, 2):
                conn = self._live()
                try:
                    with conn.cursor() as cur:
                        cur.execute(query, args)
                        return cur.fetchall()
                except self._psycopg.Error as exc:
                    # A read is safe to repeat on a fresh connection, once.
                    if attempt == 2 or not conn.broken:
                        raise RecordError(f"records store `{self.url}`: "
                                          f"{' '.join(str(exc).split()).lower()}") from None
            raise AssertionError("unreachable")

    def _rows(self, request_id: str | None = None, after: int = 0) -> Iterator[Row]:
        where = "" if request_id is None else "AND request_id = %s"
        while True:
            args: tuple[Any, ...] = (after,) if request_id is None else (after, request_id)
            page = self._query(f"SELECT {_COLUMNS} FROM events WHERE seq > %s {where} "
                               f"ORDER BY seq LIMIT {PAGE}", args)
            yield from ((int(r[0]), *r[1:]) for r in page)
            if len(page) < PAGE:
                return
            after = int(page[-1][0])


    def _json_text(self, *path: str) -> str:
        # The schema's function: a damaged (tampered) body reads as NULL, not as an error.
        return f"refundry_json_text(e.body, '{{{','.join(path)}}}')"

    def _head(self) -> tuple[int, str]:
        rows = self._query("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS)


    def close(self) -> None:
        self._close_anchoring()
        with self._lock:
            self._conn.close()
