"""Who is calling: API tokens, kept only as SHA-256 digests, each naming an identity and its roles.

A token is 32 random bytes (``rf_`` + URL-safe base64), so a plain SHA-256 of it cannot be
brute-forced and needs no slow password hash; the file that holds the digests can be read by
anyone who runs the service without exposing a usable token. The identity's name is the actor
of every event it causes, which is how maker-checker works against authenticated callers.

Each identity also carries the set of ``client_id``s it may act on (docs/security.md). ``*``
(every client) is only for an identity with the ``admin`` role: a token file that gives it to
anyone else is refused at load, so a forgotten ``clients`` entry never means "everything".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from refundry.core.errors import RefundryError

ROLES = ("service", "reviewer", "analyst", "auditor", "admin")
ALL_CLIENTS = "*"
TOKEN_PREFIX = "rf_"
FORMAT = 1


class TokenError(RefundryError):
    """A token file that cannot be read or a token that cannot be issued."""


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@attrs.frozen
class Identity:
    name: str
    roles: frozenset[str]
    clients: frozenset[str] = frozenset()  # none unless given: `*` is for admins

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def all_clients(self) -> bool:
        return ALL_CLIENTS in self.clients

    def sees(self, client_id: str | None) -> bool:
        """Whether this identity may see and act on cases and rulesets of ``client_id``."""
        return self.all_clients or (client_id is not None and client_id in self.clients)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "roles": sorted(self.roles), "clients": sorted(self.clients)}


def _identity(entry: Mapping[str, Any], where: str) -> tuple[str, Identity]:
    name, roles = entry.get("name"), entry.get("roles")
    hashed, clients = entry.get("sha256"), entry.get("clients", [ALL_CLIENTS])
    if not isinstance(name, str) or not name.strip():
        raise TokenError(f"{where}: `name` is missing")
    if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
        raise TokenError(f"{where}: `roles` must be a non-empty list of {', '.join(ROLES)}")
    if not isinstance(hashed, str) or not hashed.startswith("sha256:") or len(hashed) != 71:
        raise TokenError(f"{where}: `sha256` must be a token digest")
    if not isinstance(clients, list) or not all(isinstance(c, str) and c for c in clients):
        raise TokenError(f"{where}: `clients` must be a list of client ids")
    _check_all_clients(roles, clients, where)
    return hashed, Identity(name.strip(), frozenset(roles), frozenset(clients))


def _check_all_clients(roles: Iterable[str], clients: Iterable[str], where: str) -> None:
    if ALL_CLIENTS in clients and "admin" not in roles:
        raise TokenError(f"{where}: `*` (every client) needs the `admin` role; list the "
                         "client ids it may act on")


@attrs.frozen
class Tokens:
    """The digests of every token the service accepts."""

    by_digest: Mapping[str, Identity]

    def identify(self, token: str | None) -> Identity | None:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        return self.by_digest.get(digest(token))

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise TokenError(f"cannot read `{path}`: {(exc.strerror or str(exc)).lower()}") from None
        except json.JSONDecodeError as exc:
            raise TokenError(f"`{path}`:{exc.lineno}:{exc.colno}: invalid json: "
                             f"{exc.msg.lower()}") from None
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise TokenError(f"`{path}`: a token file is an object with a `tokens` list")
        found = dict(_identity(e if isinstance(e, dict) else {}, f"`{path}` token {i + 1}")
                     for i, e in enumerate(entries))
        return cls(found)


def issue(path: str | Path, name: str, roles: Iterable[str],
          clients: Iterable[str] = (ALL_CLIENTS,)) -> str:
    """Add a new token for ``name`` to the file at ``path`` (created 0600 if missing) and
    return it. Only its digest is written: a token shown once and lost is issued again."""
    roles = sorted(set(roles))
    if not roles or any(r not in ROLES for r in roles):
        raise TokenError(f"roles must be among {', '.join(ROLES)}, not `{','.join(roles)}`")
    if not name.strip() or len(name) > 100:
        raise TokenError("a token needs a name (at most 100 characters)")
    clients = sorted(set(clients))
    if not clients:
        raise TokenError("a token needs at least one client id (`*` for an admin)")
    _check_all_clients(roles, clients, f"token `{name.strip()[:40]}`")
    path = Path(path)
    data: dict[str, Any] = {"format": FORMAT, "tokens": []}
    if path.exists():
        Tokens.load(path)  # refuse to extend a broken file
        data = json.loads(path.read_text(encoding="utf-8"))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    data["tokens"].append({"name": name.strip(), "roles": roles, "clients": clients,
                           "sha256": digest(token),
                           "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return token
