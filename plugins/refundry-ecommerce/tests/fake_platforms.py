"""Local stand-ins for Stripe's and Shopify's refund APIs, for delivery tests: never the
internet. They keep the platforms' idempotency semantics and can be told to fail.

- Stripe ``POST /v1/refunds`` (form-encoded, ``Idempotency-Key`` header): a key seen before
  with the same parameters answers the refund made the first time (``Idempotent-Replayed:
  true``); with other parameters, HTTP 400 ``idempotency_error``. ``GET /v1/refunds`` lists the
  refunds made, as Stripe's list object (what a read-back reads).
- Shopify ``POST /admin/api/<version>/graphql.json`` with ``refundCreate`` and
  ``@idempotent(key:)``: a repeated key answers the first refund; a missing directive is a
  userError, as from version 2026-04.

``faults`` is a list consumed one per request: ``"500"`` answers 500 without doing anything,
``"500-after"`` makes the refund and then answers 500 (the response is lost), ``"timeout"``
makes the refund and answers only after ``slow`` seconds (longer than the client waits).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


class FakePlatform:
    def __init__(self, slow: float = 1.5, currency: str = "jpy") -> None:
        self.currency = currency  # a Stripe refund has its charge's currency
        self.faults: list[str] = []
        self.slow = slow
        self.refunds: list[dict[str, Any]] = []  # what the platform made, in order
        self.requests = 0
        self._keys: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePlatform:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def make(self, key: str, params: Any, create: Any) -> tuple[int, dict[str, Any]]:
        """The idempotent core: one refund per key, the same answer for a repeat."""
        with self._lock:
            if key in self._keys:
                seen, answer = self._keys[key]
                if seen != params:
                    return 400, {"error": {"type": "idempotency_error", "message": "Keys for "
                                           "idempotent requests can only be used with the same "
                                           "parameters they were first used with."}}
                return 200, answer
            answer = create(len(self.refunds) + 1)
            self.refunds.append(answer)
            self._keys[key] = (params, answer)
            return 200, answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): as on the real platform

            def do_GET(self) -> None:
                if self.path.startswith("/v1/refunds"):
                    self._answer(200, {"object": "list", "data": list(platform.refunds),
                                       "has_more": False})
                else:
                    self._answer(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with platform._lock:
                    platform.requests += 1
                    fault = platform.faults.pop(0) if platform.faults else None
                if fault == "500":
                    self._answer(500, {"error": {"message": "injected"}})
                    return
                status, answer = self._route(body)
                if fault == "500-after":
                    self._answer(500, {"error": {"message": "injected after the refund"}})
                    return
                if fault == "timeout":
                    time.sleep(platform.slow)
                self._answer(status, answer)

            def _route(self, body: bytes) -> tuple[int, dict[str, Any]]:
                if self.path == "/v1/refunds":
                    return self._stripe(body)
                if self.path.endswith("/graphql.json"):
                    return self._shopify(body)
                return 404, {"error": {"message": "not found"}}

            def _stripe(self, body: bytes) -> tuple[int, dict[str, Any]]:
                key = self.headers.get("Idempotency-Key")
                if not key:
                    return 400, {"error": {"message": "this stand-in wants an Idempotency-Key"}}
                params = dict(parse_qsl(body.decode()))

                def create(n: int) -> dict[str, Any]:
                    return {"object": "refund", "id": f"re_fake{n}", "amount": int(params["amount"]),
                            "currency": platform.currency,
                            "charge": params.get("charge"),
                            "payment_intent": params.get("payment_intent"),
                            "created": 1712102400 + n, "status": "succeeded",
                            "metadata": {"refundry_request_id":
                                         params.get("metadata[refundry_request_id]")}}
                return platform.make(key, params, create)

            def _shopify(self, body: bytes) -> tuple[int, dict[str, Any]]:
                doc = json.loads(body)
                variables = doc.get("variables") or {}
                if "@idempotent(key:" not in doc.get("query", "") or not variables.get("key"):
                    return 200, {"data": {"refundCreate": {"refund": None, "userErrors": [
                        {"field": None, "message": "refundCreate needs @idempotent"}]}}}

                def create(n: int) -> dict[str, Any]:
                    return {"id": f"gid://shopify/Refund/{900 + n}", "input": variables["input"]}
                status, made = platform.make(variables["key"], variables["input"], create)
                if status != 200:
                    return status, made
                return 200, {"data": {"refundCreate": {"refund": {"id": made["id"]},
                                                       "userErrors": []}}}

        return Handler
