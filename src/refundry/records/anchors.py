"""Signed checkpoints kept in a second place, so the chain can prove its own length.

A hash chain shows that nothing inside it was changed, but not that nothing was cut from its
end, or that the whole file was not swapped for an older copy: both leave a shorter chain that
is perfectly linked. So, like an RFC 9162 signed tree head, a writer signs ``(count, head,
genesis, at)`` with an Ed25519 key and writes it to an **anchor** the store's writers cannot
rewrite: an append-only file elsewhere, or a table in a PostgreSQL database reached as another
role. ``verify`` with the anchor then checks each signed checkpoint against the chain: the
event at its count must still be there, with the hash it signed.

Events can be signed too: a store opened with a signing key puts the key in each event's body
(so it is hashed and chained) and keeps an Ed25519 signature of the event's hash beside it.

Keys are ``ed25519:`` plus the base64url of the raw 32-byte public key. Signing and
verification use ``cryptography``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from refundry.core.errors import RefundryError

CHECKPOINT_TYPE = "refundry-checkpoint/1"
_EVENT_PREFIX = b"refundry-event:"


class AnchorError(RefundryError):
    """A key or an anchor that cannot be read or written."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public(key_id: str) -> Ed25519PublicKey | None:
    if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(_unb64(key_id[len("ed25519:"):]))
    except ValueError:
        return None


def signature_ok(key_id: str, message: bytes, signature: str) -> bool:
    public = _public(key_id)
    if public is None or not isinstance(signature, str):
        return False
    try:
        public.verify(_unb64(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Signer:
    """An operator's or a service's Ed25519 key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        self.key_id = "ed25519:" + _b64(raw)

    def sign(self, message: bytes) -> str:
        return _b64(self._private.sign(message))

    def sign_event(self, hash_: str) -> str:
        return self.sign(_EVENT_PREFIX + hash_.encode("ascii"))

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        try:
            private = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AnchorError(f"cannot read signing key `{path}`: {str(exc).lower()}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise AnchorError(f"signing key `{path}` is not an ed25519 key")
        return cls(private)

    @classmethod
    def generate(cls, path: str | Path) -> Signer:
        """A new key, written to ``path`` (PEM, readable by its owner only); never overwrites."""
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise AnchorError(f"cannot create `{path}`: {(exc.strerror or str(exc)).lower()}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(private)


def check_event_signature(seq: int, body: Mapping[str, Any], hash_: str,
                          kept: tuple[str, str] | None) -> str:
    """What is wrong with a signed event's signature ("" if nothing, or if it names no key)."""
    key = body.get("key")
    if key is None:
        return ""
    if kept is None:
        return f"event {seq} was signed by `{key}` but its signature is missing"
    if kept[0] != key or not signature_ok(key, _EVENT_PREFIX + hash_.encode("ascii"), kept[1]):
        return f"event {seq}: the signature does not match the event"
    return ""


@attrs.frozen
class SignedCheckpoint:
    """A signed statement: this store (``genesis``) had ``count`` events ending in ``head``."""

    count: int
    head: str
    genesis: str
    at: str
    key: str
    signature: str = ""

    def statement(self) -> bytes:
        return rfc8785.dumps({"type": CHECKPOINT_TYPE, "count": self.count, "head": self.head,
                              "genesis": self.genesis, "at": self.at, "key": self.key})

    def signed(self, signer: Signer) -> SignedCheckpoint:
        return attrs.evolve(self, key=signer.key_id, signature=signer.sign(
            attrs.evolve(self, key=signer.key_id).statement()))

    def valid(self) -> bool:
        return signature_ok(self.key, self.statement(), self.signature)

    def to_dict(self) -> dict[str, Any]:
        return {"type": CHECKPOINT_TYPE, **attrs.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedCheckpoint:
        try:
            return cls(count=int(data["count"]), head=str(data["head"]),
                       genesis=str(data["genesis"]), at=str(data["at"]), key=str(data["key"]),
                       signature=str(data["signature"]))
        except (KeyError, TypeError, ValueError):
            raise AnchorError("the anchor holds a line that is not a signed checkpoint") from None


def anchor_problem(signed: Sequence[SignedCheckpoint], count: int, genesis: str,
                   hash_at: Mapping[int, str], trusted_keys: Iterable[str] = ()) -> str:
    """What the anchor's signed checkpoints say is wrong with a chain of ``count`` events
    starting at ``genesis`` ("" if nothing)."""
    trusted = set(trusted_keys)
    for cp in sorted(signed, key=lambda c: c.count):
        when = f"the checkpoint signed at {cp.at} ({cp.count} events)"
        if not cp.valid():
            return f"{when} has a bad signature: the anchor was tampered with"
        if trusted and cp.key not in trusted:
            return f"{when} is signed by `{cp.key}`, which is not a trusted key"
        if cp.genesis != genesis:
            return (f"{when} is of another chain: the store was replaced, or its salt or first "
                    "event changed")
        if cp.count > count:
            return (f"the store has {count} events but {when} covers more: events were cut "
                    "from the end, or an older copy was restored")
        if hash_at.get(cp.count) != cp.head:
            return (f"event {cp.count} is not the one {when} names: the chain was rewritten, "
                    "or replaced by another copy")
    return ""


class FileAnchor:
    """Signed checkpoints as JSON lines appended to a file that lives elsewhere (another
    volume, a mounted log, a WORM bucket); each line is flushed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = str(path)

    def write(self, cp: SignedCheckpoint) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(cp.to_dict(), sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise AnchorError(f"cannot write to anchor `{self.url}`: "
                              f"{(exc.strerror or str(exc)).lower()}") from None

    def checkpoints(self) -> list[SignedCheckpoint]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeError) as exc:
            raise AnchorError(f"cannot read anchor `{self.url}`: {str(exc).lower()}") from None
        lines = text.split("\n")
        # A last line without its newline was torn by a crash mid-write; it was never relied on.
        complete = lines[:-1]
        out = []
        for line in complete:
            if line.strip():
                try:
                    out.append(SignedCheckpoint.from_dict(json.loads(line)))
                except ValueError:
                    raise AnchorError(f"anchor `{self.url}` holds a line that is not json") from None
        return out

    def close(self) -> None:
        pass


class PostgresAnchor:
    """Signed checkpoints in table ``checkpoints`` of a PostgreSQL schema. Connect as a role
    the records store's writers do not have, with INSERT and SELECT only, so they cannot
    remove or change what was anchored."""

    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg import sql

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self.schema = next((v for k, v in query if k == "schema"), "refundry_anchor")
        conninfo = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query
                                                              if k != "schema"])))
        self.url = url.split("@")[-1]
        self._psycopg = psycopg
        table = f"{self.schema}.checkpoints"
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
            # Created only when missing: the writers' role should have INSERT and SELECT on an
            # existing table and nothing else, not the right to create (or drop) it.
            missing = self._conn.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone()
            if missing is None or missing[0]:
                with self._conn.transaction():
                    self._conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.schema)))
                    self._conn.execute(sql.SQL(_PG_TABLE).format(sql.Identifier(self.schema)))
        except psycopg.Error as exc:
            raise AnchorError(f"cannot open anchor `{self.url}`: "
                              f"{' '.join(str(exc).split()).lower()}") from None
        self._table = sql.SQL("{}.checkpoints").format(sql.Identifier(self.schema))

    def write(self, cp: SignedCheckpoint) -> None:
        sql = self._psycopg.sql
        try:
            self._conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s) "
                                       "ON CONFLICT DO NOTHING").format(self._table),
                               (cp.count, cp.head, cp.genesis, cp.at, cp.key, cp.signature))
        except self._psycopg.Error as exc:
            raise AnchorError(f"cannot write to anchor `{self.url}`: "
                              f"{' '.join(str(exc).split()).lower()}") from None

    def checkpoints(self) -> list[SignedCheckpoint]:
        sql = self._psycopg.sql
        rows = self._conn.execute(sql.SQL("SELECT count, head, genesis, at, key, signature "
                                          "FROM {} ORDER BY count").format(self._table)).fetchall()
        return [SignedCheckpoint(int(r[0]), *r[1:]) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


_PG_TABLE = ("CREATE TABLE IF NOT EXISTS {}.checkpoints (count BIGINT NOT NULL, head TEXT NOT NULL, "
             "genesis TEXT NOT NULL, at TEXT NOT NULL, key TEXT NOT NULL, "
             "signature TEXT NOT NULL, PRIMARY KEY (count, key))")


def open_anchor(target: str | Path) -> FileAnchor | PostgresAnchor:
    """``postgresql://role@host/db?schema=NAME`` or a file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresAnchor(text)
    return FileAnchor(text)
