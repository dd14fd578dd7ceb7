"""Delivering refund instructions over HTTP: retries with backoff, every try under the same
idempotency key, so a retry after a lost response or a timeout never pays twice.

POST is retried here (urllib3 does not retry it by default) only because every request
carries the case's idempotency key: the platform answers a repeat with the refund it made
the first time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

from refundry.plugins import Option, SourceError

DELIVERY_OPTIONS = (
    Option("deliver", "bool", "false", "`true` also sends each instruction to the platform"),
    Option("base_url", help="the platform's base URL (e.g. `https://SHOP.myshopify.com`, "
           "`https://api.stripe.com`)"),
    Option("api_key_env", help="the environment variable that holds the API token (the token "
           "itself is never an option: options end up in shell history)"),
    Option("retries", "int", "4", "tries after the first on a 429, a 5xx, a timeout or a lost "
           "connection"),
    Option("backoff", "decimal", "0.5", "seconds: the wait between retries doubles from this "
           "(urllib3's backoff_factor; a Retry-After header is obeyed)"),
    Option("timeout", "decimal", "10", "seconds to connect and to read each answer"),
)


class DeliveryError(Exception):
    """The platform refused the instruction, or every retry failed."""


class Client:
    """POSTs to one platform with retries and backoff; raises ``DeliveryError``."""

    def __init__(self, options: Mapping[str, str], *, token_header: str) -> None:
        base = options.get("base_url", "").rstrip("/")
        if not base:
            raise SourceError("delivery needs `--option base_url=...`")
        self.base = base
        env = options.get("api_key_env", "")
        token = os.environ.get(env, "") if env else ""
        if env and not token:
            raise SourceError(f"`--option api_key_env={env}`: the variable is not set")
        self.headers = {token_header: token} if token else {}
        retries = int(options.get("retries", "4"))
        timeout = float(options.get("timeout", "10"))
        retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries,
                              other=0, allowed_methods=None,  # POST too: see the module doc
                              status_forcelist=(429, 500, 502, 503, 504),
                              backoff_factor=float(options.get("backoff", "0.5")),
                              respect_retry_after_header=True, raise_on_status=False)
        self.pool = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(
            connect=timeout, read=timeout))

    def post(self, path: str, body: bytes, content_type: str,
             headers: Mapping[str, str]) -> dict[str, Any]:
        try:
            resp = self.pool.request("POST", self.base + path, body=body, headers={
                **self.headers, "Content-Type": content_type, **headers})
        except urllib3.exceptions.HTTPError as exc:
            raise DeliveryError(f"POST {path}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(resp.data or b"{}")
        except ValueError:
            data = {}
        if resp.status >= 400:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise DeliveryError(f"POST {path}: HTTP {resp.status}"
                                + (f": {message}" if message else ""))
        return data if isinstance(data, dict) else {}


def form(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: nested mappings as ``metadata[key]``."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs += form(value, name)
        else:
            pairs.append((name, str(value)))
    return pairs


def form_body(params: Mapping[str, Any]) -> bytes:
    return urlencode(form(params)).encode()


def delivered_before(path: Path | None) -> dict[str, str]:
    """request_id -> the platform's refund id, from a sink's own output of an earlier run: a
    case delivered before a kill reports its refund again instead of being sent again."""
    found: dict[str, str] = {}
    if path is None or not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("refund_id") and entry.get("request_id"):
            found[str(entry["request_id"])] = str(entry["refund_id"])
    return found
