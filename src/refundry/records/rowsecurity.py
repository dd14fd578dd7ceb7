"""PostgreSQL row-level security: tenancy enforced a second time, by the database.

The application filter (``records/access.py``) is the first layer. This one makes the database
refuse the same rows on its own, so a bug in either layer does not open the other: a query
that forgot the filter, run through a reader connection, still sees only the identity's
clients.

``install`` gives the events a ``client_id`` column (generated from the event body, so no
writer has to fill it and an old store gains it in place), turns row-level security on for
``events`` and ``history_index``, and lets a non-owner role read only rows whose client is
listed in the session setting ``refundry.clients`` (a JSON array; ``["*"]`` is every client).
Rows of no client (store settings) are readable by all. The owner, which appends, is not
bound by the policies: the reader role is what scoped reads connect as (``ReaderStore``).

What it does not do: a session can set ``refundry.clients`` to anything, so it is a guard
against the application's own mistakes, not against someone holding the reader role's
password (give each client its own role for that: docs/security.md). ``ruleset_texts`` and
``meta`` are readable by the role as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from refundry.records.events import RecordError
from refundry.records.stores import PostgresStore, one_line

SETTING = "refundry.clients"
READER_ROLE = "refundry_reader"

# The client of an event: the request's, or for a store-level access note the client it was
# about (so an attempt on a client is that client's record); NULL for settings.
_CLIENT_SQL = ("COALESCE(refundry_json_text(body, '{request,client_id}'), "
               "refundry_json_text(body, '{details,client}'))")

_INSTALL = f"""
ALTER TABLE events ADD COLUMN IF NOT EXISTS client_id TEXT
    GENERATED ALWAYS AS ({_CLIENT_SQL}) STORED;
CREATE INDEX IF NOT EXISTS events_client ON events (client_id, seq);
CREATE OR REPLACE FUNCTION refundry_may_see(client TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE AS $$
    SELECT client IS NULL OR COALESCE(
        (SELECT s ? '*' OR s ? client
         FROM (SELECT NULLIF(current_setting('{SETTING}', true), '')::jsonb AS s) AS setting),
        false) $$;
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE history_index ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS refundry_clients ON events;
CREATE POLICY refundry_clients ON events FOR SELECT USING (refundry_may_see(client_id));
DROP POLICY IF EXISTS refundry_clients ON history_index;
CREATE POLICY refundry_clients ON history_index FOR SELECT USING (refundry_may_see(client_id));
"""


def install(store: PostgresStore, role: str = READER_ROLE) -> None:
    """Turn row-level security on in ``store``'s schema (run as its owner; idempotent) and
    let ``role`` (created if missing, without login) read under it."""
    import psycopg
    from psycopg import sql

    from refundry.records.history import History

    History(store).ensure()  # the index table must exist to carry its policy
    ident, schema = sql.Identifier(role), sql.Identifier(store.schema)
    statements = [
        # Created only when missing: PostgreSQL checks CREATEROLE before it looks for the
        # name, so a login that a superuser set up as docs/deployment.md says (the role made
        # for it, no CREATEROLE) would otherwise be refused here. unique_violation: another
        # schema's install created the role at the same moment (the advisory lock below is
        # per schema; roles are per cluster).
        sql.SQL("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN "
                "CREATE ROLE {} NOLOGIN; END IF; EXCEPTION WHEN duplicate_object OR "
                "unique_violation THEN NULL; END $$").format(sql.Literal(role), ident),
        sql.SQL(_INSTALL),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident),
        sql.SQL("GRANT SELECT ON events, meta, ruleset_texts, history_index, history_meta "
                "TO {}").format(ident),
    ]
    try:
        with store.setup_cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                        ("refundry:" + store.schema,))
            for statement in statements:
                cur.execute(statement)
    except psycopg.Error as exc:
        # The first line only: PostgreSQL's CONTEXT lines quote our own SQL back.
        reason = (str(exc).strip().splitlines() or ["refused"])[0].lower()
        raise RecordError(f"cannot turn on row-level security in `{store.url}` for role "
                          f"`{role}`: {reason} (docs/deployment.md says what the login "
                          "needs)") from None


def setting(clients: Iterable[str]) -> str:
    """The value of ``refundry.clients`` for an identity's clients."""
    return json.dumps(sorted(set(clients)), ensure_ascii=False)


class ReaderStore(PostgresStore):
    """A PostgreSQL store read as the non-owner ``role`` with ``refundry.clients`` set, so the
    database itself hides every other client's rows. Reads only: the role may not append."""

    def __init__(self, url: str, clients: Iterable[str], role: str = READER_ROLE,
                 **kw: Any) -> None:
        self.reader = (role, setting(clients))
        super().__init__(url, create=False, **kw)

    def _connect(self) -> Any:
        conn = super()._connect()
        role, value = self.reader
        try:
            conn.execute(self._psycopg.sql.SQL("SET ROLE {}").format(
                self._psycopg.sql.Identifier(role)))
            conn.execute("SELECT set_config(%s, %s, false)", (SETTING, value))
        except self._psycopg.Error as exc:
            conn.close()
            raise RecordError(f"cannot read `{self.url}` as `{role}`: "
                              f"{one_line(exc)}") from None
        return conn
