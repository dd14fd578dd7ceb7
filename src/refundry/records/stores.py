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
import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from refundry.records.events import (
    EVENT_COLUMNS,
    GENESIS,
    MANY_KEYS,
    ChainRow,
    NewRow,
    RecordError,
    RecordStore,
    Row,
    chain_columns,
    new_salt,
)
from refundry.records.index import COLUMNS

DEFAULT_PATH = "refundry.db"
BUSY_TIMEOUT_S = 120


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


# --- the schema, one text for both backends ------------------------------------------------

# {seq}: SQLite's INTEGER PRIMARY KEY is the rowid itself; PostgreSQL wants a 64-bit integer.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS events (
        seq {seq} PRIMARY KEY, request_id TEXT NOT NULL, type TEXT NOT NULL, at TEXT NOT NULL,
        actor TEXT NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL, outcome TEXT)""",
    "{storage}",
    "CREATE INDEX IF NOT EXISTS events_case ON events (request_id, seq)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_one_evaluation ON events (request_id) "
    "WHERE type = 'evaluated'",
    "CREATE TABLE IF NOT EXISTS ruleset_texts (digest TEXT PRIMARY KEY, ruleset_id TEXT NOT NULL, "
    "version TEXT NOT NULL, text TEXT NOT NULL)",
    "{functions}",
    "{review_index}",
    "{append_only}",
    "INSERT INTO meta VALUES ('format', '2') ON CONFLICT DO NOTHING",
)
# The review queue's index, on the ``outcome`` column the appender writes (``outcome_of``) and,
# where it is NULL (an event appended before the column), on the body: on PostgreSQL the body's
# guarded JSON read parsed every inserted decision (about 15 us of the server's CPU each). The
# queue's query names the same expression (``RecordStore._queue_outcome``), or it cannot use it.
_REVIEW_INDEX = ("CREATE INDEX IF NOT EXISTS events_review_outcome ON events (seq) WHERE "
                 "type = 'evaluated' AND COALESCE(outcome, {outcome}) = 'manual_review'")
# What differs: how a damaged (tampered) body reads as NULL rather than as an error, how
# UPDATE, DELETE (and on PostgreSQL TRUNCATE) are refused, and how bodies are stored.
_DIALECT = {
    "sqlite": {
        "seq": "INTEGER", "functions": (), "storage": (),
        "outcome": "CASE WHEN json_valid(body) THEN json_extract(body, '$.decision.outcome') END",
        "append_only": (
            "CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events "
            "BEGIN SELECT RAISE(ABORT, 'records are append-only'); END",
            "CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events "
            "BEGIN SELECT RAISE(ABORT, 'records are append-only'); END"),
    },
    "postgresql": {
        "seq": "BIGINT",
        # lz4, not the default pglz: a 2.6 kB body is compressed on every insert and
        # decompressed on every read (verify reads them all), and lz4 costs a fraction of pglz
        # for both. A server built without lz4 keeps pglz. Rows already stored keep theirs.
        "storage": (
            "DO $$ BEGIN EXECUTE 'ALTER TABLE events ALTER COLUMN body SET COMPRESSION lz4'; "
            "EXCEPTION WHEN feature_not_supported OR syntax_error THEN NULL; END $$",),
        "functions": (
            "CREATE OR REPLACE FUNCTION refundry_json_text(body TEXT, path TEXT[]) RETURNS TEXT "
            "LANGUAGE plpgsql IMMUTABLE AS "
            "$$ BEGIN RETURN body::jsonb #>> path; EXCEPTION WHEN others THEN RETURN NULL; END $$",
            "CREATE OR REPLACE FUNCTION refundry_append_only() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'records are append-only'; END $$"),
        "outcome": "refundry_json_text(body, '{decision,outcome}')",
        "append_only": (
            "DROP TRIGGER IF EXISTS events_append_only ON events",
            "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION refundry_append_only()",
            "DROP TRIGGER IF EXISTS events_no_truncate ON events",
            "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION refundry_append_only()"),
    },
}
# Signatures of events appended with a signing key; the key itself is in the hashed body.
_SIGNATURES = ("CREATE TABLE IF NOT EXISTS signatures (seq BIGINT PRIMARY KEY, "
               "key TEXT NOT NULL, signature TEXT NOT NULL)")


def schema(dialect: str) -> list[str]:
    """The statements that create a store's tables on ``dialect``, in order."""
    parts: dict[str, Any] = _DIALECT[dialect]
    out: list[str] = []
    for statement in _SCHEMA:
        if statement in ("{functions}", "{append_only}", "{storage}"):
            out.extend(parts[statement[1:-1]])
        elif statement == "{review_index}":
            out.append(_REVIEW_INDEX.format_map(parts))
        else:
            out.append(statement.format_map(parts))
    return out


def upgrade(dialect: str, has_outcome: bool) -> list[str]:
    """The statements that bring a store made by an earlier version to this schema: the
    ``outcome`` column (NULL in the rows already there, which the index and the queue read
    from the body as before), the review index on it in place of the one on the body alone,
    and (PostgreSQL) lz4 for the bodies appended from now on. Nothing in ``events`` is
    rewritten, so the chain verifies as before."""
    parts: dict[str, Any] = _DIALECT[dialect]
    return [*(() if has_outcome else ("ALTER TABLE events ADD COLUMN outcome TEXT",)),
            *parts["storage"], _REVIEW_INDEX.format_map(parts),
            "DROP INDEX IF EXISTS events_review_queue"]


# Whether the events table has the ``outcome`` column, per dialect.
_HAS_OUTCOME = {
    "sqlite": "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'outcome'",
    "postgresql": "SELECT COUNT(*) FROM pg_attribute WHERE attrelid = to_regclass('events') "
                  "AND attname = 'outcome' AND NOT attisdropped",
}


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


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


_INSERT_TEXT = "INSERT INTO ruleset_texts VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"


def _new_case_statements(store: RecordStore, row: NewRow, texts: Sequence[tuple[str, str, str, str]]
                         ) -> list[tuple[str, Sequence[Any]]]:
    """What appending the event that opens a case writes: the ruleset texts not kept yet, the
    event."""
    return [*((_INSERT_TEXT, t) for t in texts), (store.insert_event_sql(), store.event_args(row))]


class _Tx:
    """One writer's transaction over a DB-API cursor: the reads an append decides on, its
    writes, and the public ``execute``/``executemany``/``write`` (``events.Transaction``)."""

    def __init__(self, cur: Any, store: SQLiteStore | PostgresStore,
                 pipelined: bool = False) -> None:
        self.cur, self.store, self.pipelined = cur, store, pipelined
        self.native: Callable[[str], str] = pg_sql if store.dialect == "postgresql" else str

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._run(sql, args)
        except self.store.driver_error as exc:
            raise RecordError(f"records store `{self.store.url}`: {one_line(exc)}") from None

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """``execute`` with the driver's own errors: an append's store turns them into what
        it says about the event (not written, or unknown after a lost connection)."""
        self.cur.execute(self.native(sql), tuple(args))
        if self.cur.description:
            return self.cur.fetchall()
        if self.pipelined and isinstance(self.store, PostgresStore):
            # No answer yet, not "no rows": a read waits for its answer.
            return self.store.pending_rows(self.cur)
        return []

    def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        try:
            self.cur.execute(self.native(sql), tuple(args))
        except self.store.driver_error as exc:
            raise RecordError(f"records store `{self.store.url}`: {one_line(exc)}") from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        try:
            self.cur.executemany(self.native(sql), rows)
        except self.store.driver_error as exc:
            raise RecordError(f"records store `{self.store.url}`: {one_line(exc)}") from None

    def head(self) -> tuple[int, str]:
        rows = self._run("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS)

    def case_rows(self, request_id: str) -> list[Row]:
        return [(int(r[0]), *r[1:]) for r in self._run(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE request_id = ? ORDER BY seq", (request_id,))]

    def snapshot(self, request_id: str, store_case: str) -> tuple[list[Row], list[Row], tuple[int, str]]:
        """What an append decides on: the case's rows, the store-level rows, and the head
        (one round trip on a server: the lock is held for every round trip an append makes)."""
        return self.snapshot_many((request_id,), store_case)

    def snapshot_many(self, request_ids: Sequence[str], store_case: str
                      ) -> tuple[list[Row], list[Row], tuple[int, str]]:
        """``snapshot`` for a group: the rows of every case in ``request_ids`` (in chain
        order), the store-level rows, and the head."""
        marks = ", ".join("?" * len(request_ids))
        cases = f"SELECT {{}}{EVENT_COLUMNS} FROM events WHERE request_id IN ({marks})"
        if self.store.dialect == "sqlite":  # in process: three reads cost less than a union
            return ([(int(r[0]), *r[1:]) for r in self._run(
                cases.format("") + " ORDER BY seq", request_ids)] if request_ids else [],
                self.case_rows(store_case), self.head())
        parts: tuple[list[Row], list[Row], list[Row]] = ([], [], [])
        for part, *row in self._run(
                (cases.format("0, ") + " UNION ALL " if request_ids else "")
                + f"SELECT 1, {EVENT_COLUMNS} FROM events WHERE request_id = ? "
                f"UNION ALL (SELECT 2, {EVENT_COLUMNS} FROM events ORDER BY seq DESC LIMIT 1) "
                "ORDER BY 1, 2", (*request_ids, store_case)):
            parts[part].append((int(row[0]), *row[1:]))
        head = (parts[2][0][0], parts[2][0][6]) if parts[2] else (0, GENESIS)
        return parts[0], parts[1], head

    def put_text(self, digest: str, rid: str, version: str, text: str) -> None:
        self._run(_INSERT_TEXT, (digest, rid, version, text))

    def insert(self, row: NewRow | Row) -> None:
        self._run(self.store.insert_event_sql(), self.store.event_args(row))

    def put_signature(self, seq: int, key: str, signature: str) -> None:
        self._run("INSERT INTO signatures VALUES (?, ?, ?)", (seq, key, signature))


@contextlib.contextmanager
def _over(conn: Any, connect: Callable[[], Any]) -> Iterator[Any]:
    """``conn`` (a verify worker's, for all its ranges), or a connection of its own from
    ``connect``, closed when done."""
    own = connect() if conn is None else None
    try:
        yield conn if own is None else own
    finally:
        if own is not None:
            own.close()


def _sqlite_connection(path: str) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.DatabaseError as exc:
        raise RecordError(f"records store `{path}`: {one_line(exc)}") from None


def _sqlite_range(path: str, lo: int, hi: int | None, *, outcome: bool,
                  conn: sqlite3.Connection | None = None) -> Iterator[ChainRow]:
    """The events ``lo < seq <= hi`` (to the end when ``hi`` is None) of an SQLite store, over
    a connection of their own (or ``conn``, a verify worker's for all its ranges).
    ``outcome``: whether the events table has that column (``chain_columns``)."""
    bound, args = ("", (lo,)) if hi is None else (" AND seq <= ?", (lo, hi))
    try:
        with _over(conn, functools.partial(_sqlite_connection, path)) as db:
            # The body as the bytes stored, which the hash is over: no text decoded only to be
            # encoded again (0.5-0.7 us an event). A body that is not UTF-8 then fails its
            # hash or its decoding, an event's problem, where the decode to text raised.
            utf8 = db.execute("PRAGMA encoding").fetchone()[0] == "UTF-8"
            body = "CAST(body AS BLOB)" if utf8 else "body"
            column = "outcome" if outcome else "NULL"  # as ``chain_columns``, the body aside
            yield from db.execute(f"SELECT seq, request_id, type, at, actor, {body}, hash, "
                                  f"{column} FROM events WHERE seq > ?{bound} ORDER BY seq", args)
    except sqlite3.DatabaseError as exc:
        raise RecordError(f"records store `{path}`: {one_line(exc)}") from None


@attrs.frozen
class _RangeReader:
    """What verify's worker processes read: a range of events (called as ``read(lo, hi)``),
    and the history index's rows of the cases a range opens (``index_rows``), which the worker
    checks against the rows it made; each over a connection of its own, or over one for all
    of a worker's ranges (``held``)."""

    events: Callable[..., Iterable[ChainRow]]
    index_rows: Callable[..., list[tuple[Any, ...]]]
    # Opens the connection ``held`` reads over. One for each range and each index read cost
    # a PostgreSQL worker 0.9 ms of its CPU and the server a backend started, every time.
    connect: Callable[[], Any] | None = None

    def __call__(self, lo: int, hi: int | None) -> Iterable[ChainRow]:
        return self.events(lo, hi)

    @contextlib.contextmanager
    def held(self) -> Iterator[_RangeReader]:
        """This reader over one connection, for every range a worker reads."""
        if self.connect is None:
            yield self
            return
        conn = self.connect()
        try:
            yield _RangeReader(functools.partial(self.events, conn=conn),
                               functools.partial(self.index_rows, conn=conn))
        finally:
            conn.close()


_INDEX_BY_ID = f"SELECT {', '.join(COLUMNS)} FROM history_index WHERE request_id"


def _sqlite_index_rows(path: str, request_ids: Sequence[str], *,
                       conn: sqlite3.Connection | None = None) -> list[tuple[Any, ...]]:
    """The history index's rows of ``request_ids`` in an SQLite store (by its primary key)."""
    rows: list[tuple[Any, ...]] = []
    try:
        with _over(conn, functools.partial(_sqlite_connection, path)) as db:
            for at in range(0, len(request_ids), MANY_KEYS):  # under any build's variables limit
                part = request_ids[at:at + MANY_KEYS]
                rows += db.execute(f"{_INDEX_BY_ID} IN ({', '.join('?' * len(part))})", part)
    except sqlite3.DatabaseError as exc:
        raise RecordError(f"records store `{path}`: {one_line(exc)}") from None
    return rows


def _pg_connection(conninfo: str, schema: str, snapshot: str) -> Any:
    """A connection to a PostgreSQL store that sees the chain as of ``snapshot``
    (``pg_export_snapshot``), as every other range of the same verify sees it, in a read-only
    transaction left open for whatever it reads."""
    import psycopg
    from psycopg import sql

    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise RecordError(f"records store `{_shown(conninfo)}`: {one_line(exc)}") from None
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    except psycopg.Error as exc:
        conn.close()
        raise RecordError(f"records store `{_shown(conninfo)}`: {one_line(exc)}") from None
    return conn


def _pg_index_rows(conninfo: str, schema: str, snapshot: str, request_ids: Sequence[str], *,
                   conn: Any = None) -> list[tuple[Any, ...]]:
    """The history index's rows of ``request_ids`` in a PostgreSQL store, as of ``snapshot``,
    the chain's (over ``conn``, a verify worker's, if given)."""
    import psycopg

    try:
        with _over(conn, functools.partial(_pg_connection, conninfo, schema, snapshot)) as db:
            rows: list[tuple[Any, ...]] = db.execute(f"{_INDEX_BY_ID} = ANY(%s)",
                                                     (list(request_ids),)).fetchall()
    except psycopg.Error as exc:
        raise RecordError(f"records store `{_shown(conninfo)}`: {one_line(exc)}") from None
    return rows


def _pg_range(conninfo: str, schema: str, snapshot: str, lo: int, hi: int | None, *,
              outcome: bool, conn: Any = None) -> Iterator[ChainRow]:
    """The events ``lo < seq <= hi`` (to the end when ``hi`` is None) of a PostgreSQL store, on
    a connection of their own (or ``conn``, a verify worker's) as of ``snapshot``."""
    import psycopg

    bound, args = ("", (lo,)) if hi is None else (" AND seq <= %s", (lo, hi))
    try:
        with _over(conn, functools.partial(_pg_connection, conninfo, schema, snapshot)) as db:
            yield from db.execute(f"SELECT {chain_columns(outcome)} FROM events "
                                  f"WHERE seq > %s{bound} ORDER BY seq", args)
    except psycopg.Error as exc:
        raise RecordError(f"records store `{_shown(conninfo)}`: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """A driver's message as one lower-case line."""
    return " ".join(str(exc).split()).lower()


class SQLiteStore(RecordStore):
    """One SQLite file in WAL mode: readers never block the single writer."""

    def __init__(self, path: str | Path, *, create: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, **anchoring: Any) -> None:
        super().__init__(clock=clock, **anchoring)
        self.path = Path(path)
        self.url = str(path)
        self._lock = threading.RLock()
        self.driver_error = sqlite3.DatabaseError
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
                with self._transaction() as tx:
                    for statement in schema(self.dialect):
                        tx.execute(statement)
                    tx.execute("INSERT INTO meta VALUES ('salt', ?) ON CONFLICT DO NOTHING",
                               (new_salt(),))
            elif create:
                self._upgrade()
            self.outcome_column = bool(self._conn.execute(_HAS_OUTCOME[self.dialect]).fetchone()[0])
            if anchoring.get("signer") is not None:
                self._conn.execute(_SIGNATURES)
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"cannot open records store `{self.url}`: {str(exc).lower()}") from None

    def _upgrade(self) -> None:
        """A store an earlier version made, opened for writing: brought to this schema
        (``upgrade``). A file this process may not write goes on as it is."""
        has_outcome = bool(self._conn.execute(_HAS_OUTCOME[self.dialect]).fetchone()[0])
        if has_outcome and self._has_index("events_review_outcome"):
            return
        try:
            with self._transaction() as tx:
                for statement in upgrade(self.dialect, has_outcome):
                    tx.execute(statement)
        except (RecordError, sqlite3.DatabaseError):
            pass

    @contextlib.contextmanager
    def _transaction(self, *, pipelined: bool = False) -> Iterator[_Tx]:
        # In process: nothing to wait for, so ``pipelined`` changes nothing.
        with self._lock:
            if self._in_batch():
                with _savepoint(self._conn):
                    yield _Tx(self._conn.cursor(), self)
                return
            self._begin_immediate()
            try:
                yield _Tx(self._conn.cursor(), self)
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

    @contextlib.contextmanager
    def _range_reader(self) -> Iterator[Callable[[int, int | None], Iterable[ChainRow]] | None]:
        # WAL: each worker's reads see every committed event, and events are only appended.
        path = str(self.path.resolve())
        yield _RangeReader(functools.partial(_sqlite_range, path, outcome=self.outcome_column),
                           functools.partial(_sqlite_index_rows, path),
                           functools.partial(_sqlite_connection, path))

    def _chain_rows(self) -> Iterable[ChainRow]:
        # A connection of its own, its cursor iterated: the pages of ``_rows`` (fetchall under
        # the store's lock) made 2,000 bodies at a time, and freeing and making that much
        # again cost 0.5-1 us an event, more on a loaded machine. A batch of this thread's
        # reads its own uncommitted events, as before; so does a store that is not a file.
        if self._in_batch() or not self.path.is_file():
            return super()._chain_rows()
        return _sqlite_range(str(self.path.resolve()), 0, None, outcome=self.outcome_column)

    def _has_index(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                                (name,)))

    def _open_case(self, row: NewRow, texts: Sequence[tuple[str, str, str, str]]) -> bool:
        with self._lock:
            try:
                with _savepoint(self._conn):
                    for sql, args in _new_case_statements(self, row, texts):
                        self._conn.execute(sql, tuple(args))
            except sqlite3.DatabaseError:
                return False  # rolled back to the savepoint: the checked append says why
            return True

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
                raise RecordError(f"records store `{self.url}`: {one_line(exc)}") from None

    def _json_text(self, *path: str) -> str:
        # Guarded: a damaged (tampered) body reads as NULL here; `records verify` reports it.
        return (f"CASE WHEN json_valid(e.body) THEN json_extract(e.body, '$.{'.'.join(path)}') "
                "END")

    def close(self) -> None:
        self._close_anchoring()
        with self._lock:
            self._conn.close()


# --- PostgreSQL ----------------------------------------------------------------------------

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


# The appenders' lock: it conflicts with itself (one appender at a time), not with plain reads.
_LOCK_EVENTS = "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"


class PostgresStore(RecordStore):
    """A schema in a PostgreSQL database, shared by any number of processes and machines."""

    dialect = "postgresql"

    def __init__(self, url: str, *, create: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, **anchoring: Any) -> None:
        super().__init__(clock=clock, **anchoring)
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            raise RecordError("a postgresql store needs psycopg: pip install 'refundry[postgres]'") from None
        self._psycopg = psycopg
        self.driver_error = psycopg.Error
        self._conninfo, self.schema = _split_pg_url(url)
        self.url = _shown(url)
        # The URL as given (password too), for a second connection beside this one under
        # another role (rowsecurity.ReaderStore); ``url`` is the one shown in messages.
        self.connect_url = url
        self._lock = threading.RLock()
        self._pipelining = False  # a pipelined batch is open (under ``_lock``)
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
                    for statement in schema(self.dialect):
                        cur.execute(statement)
                    cur.execute("INSERT INTO meta VALUES ('salt', %s) ON CONFLICT DO NOTHING",
                                (new_salt(),))
                elif create:
                    self._upgrade(cur)
                cur.execute(_HAS_OUTCOME[self.dialect])
                self.outcome_column = bool((cur.fetchone() or (0,))[0])
                if anchoring.get("signer") is not None:
                    cur.execute(_SIGNATURES)
        except RecordError:
            self._conn.close()
            raise
        except psycopg.Error as exc:
            self._conn.close()
            raise RecordError(f"cannot open records store `{self.url}`: "
                              f"{one_line(exc)}") from None

    def _upgrade(self, cur: Any) -> None:
        """A store an earlier version made, opened for writing: brought to this schema
        (``upgrade``) in a savepoint of the opening transaction. A login that may not alter
        the tables goes on appending as before (without the ``outcome`` column)."""
        cur.execute(_HAS_OUTCOME[self.dialect])
        has_outcome = bool((cur.fetchone() or (0,))[0])
        cur.execute("SELECT to_regclass('events_review_outcome') IS NOT NULL")
        if has_outcome and (cur.fetchone() or (False,))[0]:
            return
        try:
            with self._conn.transaction():
                # Dropping the old index waits for every reader of events; one that reads for
                # long must not stall the writers queued behind: give up, and try next time.
                cur.execute("SET LOCAL lock_timeout = '10s'")
                for statement in upgrade(self.dialect, has_outcome):
                    cur.execute(statement)
        except self._psycopg.Error:
            pass
        cur.execute("SET LOCAL lock_timeout TO DEFAULT")

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            # Autocommit: a read is one round trip; appends open their own transaction.
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise RecordError(f"cannot connect to `{self.url}`: "
                              f"{one_line(exc)}") from None
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
    def _transaction(self, *, pipelined: bool = False) -> Iterator[_Tx]:
        psycopg = self._psycopg
        with self._lock:
            if self._in_batch():
                with _savepoint(self._conn), self._conn.cursor() as cur:
                    yield _Tx(cur, self, self._pipelining)
                return
            # Pipelined, the transaction and its lock are queued with the first read (a libpq
            # without pipeline mode gets the plain transaction).
            pipelined = pipelined and psycopg.Pipeline.is_supported()
            conn = self._live() if pipelined else self._lock_events_table()
            try:
                if pipelined:
                    with self._pipeline(conn) as cur:
                        yield _Tx(cur, self, True)
                else:
                    with conn.cursor() as cur:
                        yield _Tx(cur, self)
                    conn.execute("COMMIT")
            except psycopg.Error as exc:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                # Lost during COMMIT, the outcome is unknown; otherwise it was rolled back.
                outcome = ("the connection was lost: check with `refundry records show` whether "
                           "the event was written" if conn.broken else "the event was not written")
                raise RecordError(f"records store `{self.url}`: {outcome}: "
                                  f"{one_line(exc)}") from None
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _pipeline(self, conn: Any) -> Iterator[Any]:
        """The body of a pipelined transaction (``batch(pipelined=True)``) and its commit,
        sent with the writes still queued: one round trip ends it."""
        self._pipelining = True
        try:
            with conn.pipeline(), conn.cursor() as cur:
                conn.execute("BEGIN")
                conn.execute(_LOCK_EVENTS)
                yield cur
                ended = conn.execute("COMMIT")
        finally:
            self._pipelining = False
        # A transaction that failed answers COMMIT with ROLLBACK, not an error: an error
        # lost on the way must not read as written.
        if ended.statusmessage != "COMMIT":
            raise self._psycopg.OperationalError(f"the server ended the transaction with "
                                                 f"{ended.statusmessage}")

    def pending_rows(self, cur: Any) -> list[Any]:
        """The rows of a statement sent in a pipeline, once they arrive (none for a write)."""
        try:
            return list(cur.fetchall())
        except self._psycopg.ProgrammingError:
            result = cur.pgresult
            if result is not None and result.status == self._psycopg.pq.ExecStatus.COMMAND_OK:
                return []
            raise

    @contextlib.contextmanager
    def _range_reader(self) -> Iterator[Callable[[int, int | None], Iterable[ChainRow]] | None]:
        # One snapshot, exported from a transaction held open until every range is read, so
        # all the workers see the same chain.
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10)
        except psycopg.Error:  # read in this process, as before
            yield None
            return
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        except psycopg.Error:  # e.g. a standby that cannot export one: read in this process
            conn.close()
            yield None
            return
        try:
            where = (self._conninfo, self.schema, snapshot)
            yield _RangeReader(functools.partial(_pg_range, *where, outcome=self.outcome_column),
                               functools.partial(_pg_index_rows, *where),
                               functools.partial(_pg_connection, *where))
        finally:
            conn.close()

    def _has_index(self, name: str) -> bool:
        return bool(self._query("SELECT to_regclass(?) IS NOT NULL", (name,))[0][0])

    def _open_case(self, row: NewRow, texts: Sequence[tuple[str, str, str, str]]) -> bool:
        psycopg = self._psycopg
        if not psycopg.Pipeline.is_supported():
            return False
        statements = [("SAVEPOINT refundry_append", ()),
                      *_new_case_statements(self, row, texts), ("RELEASE SAVEPOINT refundry_append", ())]
        with self._lock:
            conn = self._conn
            try:
                # One round trip for the savepoint, the inserts and the release: each append
                # of a batch otherwise waits for four.
                with conn.pipeline(), conn.cursor() as cur:
                    for sql, args in statements:
                        # Not prepared: a statement prepared in a pipeline that then fails is
                        # never made, yet psycopg would go on using it by name.
                        cur.execute(pg_sql(sql), tuple(args), prepare=False)
            except psycopg.Error:
                if not conn.broken:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK TO SAVEPOINT refundry_append")
                        conn.execute("RELEASE SAVEPOINT refundry_append")
                return False  # the checked append tries again and says why
            return True

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
                conn.execute(f"BEGIN; {_LOCK_EVENTS}")
                return conn
            except self._psycopg.Error as exc:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                if attempt == 2 or not conn.broken:
                    raise RecordError(f"records store `{self.url}`: the event was not written: "
                                      f"{one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _query(self, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return self.query_all([(query, args)])[0]

    def query_all(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        # One round trip for all of them: a group's history lookup is two statements, and
        # the API's decider waited for each in turn.
        together = len(reads) > 1 and self._psycopg.Pipeline.is_supported()
        with self._lock:
            for attempt in (1, 2):
                conn = self._live()
                try:
                    with contextlib.ExitStack() as open_:
                        if together:
                            open_.enter_context(conn.pipeline())
                        cursors = [open_.enter_context(conn.cursor()) for _ in reads]
                        for cur, (query, args) in zip(cursors, reads, strict=True):
                            cur.execute(pg_sql(query), tuple(args))
                        return [cur.fetchall() for cur in cursors]
                except self._psycopg.Error as exc:
                    # A read is safe to repeat on a fresh connection, once.
                    if attempt == 2 or not conn.broken:
                        raise RecordError(f"records store `{self.url}`: "
                                          f"{one_line(exc)}") from None
            raise AssertionError("unreachable")

    def _json_text(self, *path: str) -> str:
        # The schema's function: a damaged (tampered) body reads as NULL, not as an error.
        return f"refundry_json_text(e.body, '{{{','.join(path)}}}')"

    def close(self) -> None:
        self._close_anchoring()
        with self._lock:
            self._conn.close()
