"""The OpenAPI 3.1 document of ``refundry serve``.

The request, decision and record-event shapes are the JSON Schemas in ``schemas/`` themselves
(OpenAPI 3.1 is JSON Schema 2020-12), copied in with their ``$defs`` references re-rooted, so
the document can never drift from what ``refundry validate`` and the records check. Only the
envelopes the API adds (case lists, errors, review bodies) are written here.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from refundry.app.customer import LANGUAGES
from refundry.core.resources import schema
from refundry.records.events import RESOLUTIONS, STATUSES

FROM_FILES = {"RefundRequest": "refund-request.schema.json",
              "Decision": "decision.schema.json",
              "RecordEvent": "record-event.schema.json"}
TOKEN_HEADER = "Authorization"


def _reroot(node: Any, name: str) -> Any:
    """``#/$defs/x`` inside a schema file -> ``#/components/schemas/Name/$defs/x``."""
    if isinstance(node, dict):
        out = {k: _reroot(v, name) for k, v in node.items() if k not in ("$id", "$schema")}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = f"#/components/schemas/{name}/{ref[2:]}"
        return out
    if isinstance(node, list):
        return [_reroot(v, name) for v in node]
    return node


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props,
            "additionalProperties": extra}


_TEXT = {"type": "string", "minLength": 1, "maxLength": 4000}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_SUMMARY_PROPS = {
    "request_id": {"type": "string"}, "status": {"enum": list(STATUSES)},
    "outcome": {"enum": ["approve", "deny", "manual_review"]},
    "amount": {"type": ["string", "null"], "description": "what the case pays now (after "
               "reviews and disputes)"},
    "decided_amount": {"type": ["string", "null"], "description": "the first decision's"},
    "currency": {"type": ["string", "null"]},
    "events": {"type": "integer", "minimum": 1}, "submitted_by": {"type": "string"},
    "updated_at": {"type": "string"}, "approvals": {"type": "array", "items": {"type": "string"}},
    "required_approvals": {"type": "integer", "minimum": 1}}

ENVELOPES: dict[str, Any] = {
    "Error": _obj(["error"], {"error": {"type": "string"},
                              "errors": {"type": "array", "items": {"type": "string"}}}),
    # Open to new members: the records layer may add to a case's summary; the API then
    # passes them on (the members listed here are promised).
    "CaseSummary": _obj(list(_SUMMARY_PROPS), _SUMMARY_PROPS, extra=True),
    "CaseList": _obj(["cases", "limit", "after", "next"], {
        "cases": {"type": "array", "items": _ref("CaseSummary")},
        "limit": {"type": "integer"}, "after": {"type": "integer"},
        "next": {"type": ["integer", "null"],
                 "description": "the `after` of the next page; null on the last"}}),
    "Case": _obj([*_SUMMARY_PROPS, "dispute", "events"], {
        **_SUMMARY_PROPS, "dispute": {"type": ["object", "null"]},
        "events": {"type": "array", "items": _ref("RecordEvent")}}, extra=True),
    "Review": _obj(["verdict"], {"verdict": {"enum": ["approve", "deny"]},
                                 "justification": _TEXT}),
    "DisputeOpen": _obj(["reason"], {"reason": _TEXT}),
    "DisputeResolve": _obj(["resolution", "explanation"], {
        "resolution": {"enum": list(RESOLUTIONS)}, "explanation": _TEXT,
        "amount": {"type": "string", "pattern": r"^\d{1,16}(\.\d{1,4})?$"}}),
    "Communicate": _obj(["channel"], {"channel": {"type": "string", "minLength": 1,
                                                  "maxLength": 40},
                                      "lang": {"enum": list(LANGUAGES)}}),
    "CustomerStatus": _obj(["request_id", "status", "message", "next_step", "due", "amount",
                            "currency", "language"], {
        "request_id": {"type": "string"}, "status": {"type": "string"},
        "message": {"type": "string"}, "next_step": {"type": "string"},
        "due": {"type": ["string", "null"], "format": "date"}, "amount": {"type": "string"},
        "currency": {"type": "string"}, "language": {"enum": list(LANGUAGES)}}),
    "Rulesets": _obj(["generation", "loaded_at", "rulesets"], {
        "generation": {"type": "integer", "minimum": 1}, "loaded_at": {"type": "string"},
        "rulesets": {"type": "array", "items": {"type": "object", "required": [
            "id", "version", "effective_from", "digest"]}}}, extra=False),
    "Reload": _obj(["ok", "generation", "errors"], {
        "ok": {"type": "boolean"}, "generation": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "string"}}}),
    "RulesetDiff": _obj(["rulesets", "requests"], {
        "rulesets": {"type": "object", "minProperties": 1, "maxProperties": 50,
                     "description": "the proposed files: name (`name.yaml`) -> YAML text",
                     "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.ya?ml$"},
                     "additionalProperties": {"type": "string"}},
        "requests": {"type": "array", "minItems": 1, "maxItems": 1000,
                     "items": {"type": "object"}, "description": "refund requests to decide "
                     "under the rulesets in force and under the proposal"},
        "as_of": {"type": "string", "format": "date-time",
                  "description": "the time that picks the versions in force on both sides"}}),
    "DiffReport": _obj(["requests", "changed", "unchanged", "changes", "decisions", "errors",
                        "old", "new"], {
        "requests": {"type": "integer", "minimum": 0}, "changed": {"type": "integer"},
        "unchanged": {"type": "integer"},
        "changes": {"type": "array", "items": {"type": "object", "required": [
            "change", "count", "request_ids"]}},
        "decisions": {"type": "array", "items": {"type": "object", "required": [
            "request_id", "changes", "old", "new"]}},
        "errors": {"type": "array", "items": {"type": "string"}},
        "old": {"type": "object"}, "new": {"type": "object"}}),
    "Verification": {"type": "object", "required": ["ok", "count", "head"]},
    "Report": {"type": "object", "required": ["summary", "figures"],
               "properties": {"summary": {"type": "object"}, "figures": {"type": "object"}}},
    "Health": _obj(["status"], {"status": {"type": "string"}}, extra=True),
}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _json(name: str, text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {400: "the body is not JSON of the right shape", 401: "no valid token",
             403: "the token's roles or clients do not allow this",
             404: "no such case, or one of a client the token does not act for",
             409: "the case's state or maker-checker does not allow this",
             422: "the request or action is invalid",
             503: "the records store did not answer or commit; nothing was recorded"}
    return {str(c): _json("Error", texts[c]) for c in codes}


_CASE_ID = {"name": "request_id", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 1000}}
_AUTH = (401, 403)


def _op(summary: str, roles: tuple[str, ...], responses: dict[str, Any], *,
        params: list[dict[str, Any]] | None = None, body: str | None = None,
        auth: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if roles:
        op["description"] = ("Roles: " + ", ".join(f"`{r}`" for r in roles) + ". Only the "
                             "clients of the token are seen or changed (docs/security.md).")
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = _body(body)
    op["security"] = [{"token": []}] if auth else []
    return op


def _case_paths() -> dict[str, Any]:
    lang = {"name": "lang", "in": "query", "schema": {"enum": list(LANGUAGES)}}
    return {
        "/v1/cases/{request_id}": {"get": _op(
            "A case: its events and current state", ("reviewer", "auditor"),
            {"200": _json("Case", "the case"), **_errors(*_AUTH, 404)}, params=[_CASE_ID])},
        "/v1/cases/{request_id}/review": {"post": _op(
            "Approve or deny a case in manual review (maker-checker)", ("reviewer",),
            {"200": _json("Case", "the case after the review"),
             **_errors(400, *_AUTH, 404, 409, 422)}, params=[_CASE_ID], body="Review")},
        "/v1/cases/{request_id}/dispute": {"post": _op(
            "Open a dispute: re-evaluate with today's and the original rules", ("reviewer",),
            {"200": _json("Case", "the disputed case"), **_errors(400, *_AUTH, 404, 409, 422)},
            params=[_CASE_ID], body="DisputeOpen")},
        "/v1/cases/{request_id}/dispute/resolution": {"post": _op(
            "Uphold or overturn a dispute", ("reviewer",),
            {"200": _json("Case", "the case after the resolution"),
             **_errors(400, *_AUTH, 404, 409, 422)}, params=[_CASE_ID], body="DisputeResolve")},
        "/v1/cases/{request_id}/status": {
            "get": _op("What the customer is told (not recorded)",
                       ("service", "reviewer", "auditor"),
                       {"200": _json("CustomerStatus", "the customer's view"),
                        **_errors(*_AUTH, 404, 422)}, params=[_CASE_ID, lang]),
            "post": _op("Give the customer their status and record that it was given",
                        ("service", "reviewer"),
                        {"200": _json("CustomerStatus", "what was given"),
                         **_errors(400, *_AUTH, 404, 422)}, params=[_CASE_ID],
                        body="Communicate")},
    }


def _paths() -> dict[str, Any]:
    return {
        "/v1/decisions": {"post": _op(
            "Evaluate a request; with record=true append it to the store (idempotent by "
            "request_id: the same request again returns the first decision)", ("service",),
            {"200": _json("Decision", "the decision"), **_errors(400, *_AUTH, 409, 422, 503)},
            params=[{"name": "record", "in": "query", "schema": {"type": "boolean"}}],
            body="RefundRequest")},
        "/v1/cases": {"get": _op("Recorded cases, oldest first, a page at a time (keyset: pass "
                                 "the page's `next` as `after`)", ("reviewer", "auditor"), {
            "200": _json("CaseList", "a page of cases"), **_errors(400, *_AUTH)}, params=[
            {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                        "maximum": 1000}},
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                        "maximum": 2**62}}])},
        **_case_paths(),
        "/v1/rulesets": {"get": _op("The ruleset versions loaded, with digests",
                                    ("analyst", "auditor", "service"),
                                    {"200": _json("Rulesets", "what is in force"),
                                     **_errors(*_AUTH)})},
        "/v1/rulesets/reload": {"post": _op(
            "Load the rulesets again; a version that does not validate is refused and the "
            "one in force keeps serving", ("analyst",),
            {"200": _json("Reload", "swapped in"), **_errors(*_AUTH),
             "422": _json("Reload", "refused; the old version keeps serving")})},
        "/v1/rulesets/diff": {"post": _op(
            "What a proposed ruleset change would change: each request decided under the "
            "rulesets in force and under the proposal (as `refundry diff --json`); nothing is "
            "loaded or recorded", ("analyst",),
            {"200": _json("DiffReport", "the decisions that change, grouped by change"),
             **_errors(400, *_AUTH, 422)}, body="RulesetDiff")},
        "/v1/report": {"get": _op(
            "The report's figures (as `refundry report --format json`)", ("analyst", "auditor"),
            {"200": _json("Report", "summary and figures"), **_errors(400, *_AUTH)}, params=[
                {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"}},
                {"name": "client", "in": "query", "schema": {"type": "string"}}])},
        "/v1/verify": {"get": _op("Verify the record chain", ("auditor",), {
            "200": _json("Verification", "the chain is whole"),
            "409": _json("Verification", "the chain is broken"), **_errors(*_AUTH)})},
        "/healthz": {"get": _op("The process is alive", (), {"200": _json("Health", "alive")},
                                auth=False)},
        "/readyz": {"get": _op("Ready for traffic: rulesets loaded, store reachable", (), {
            "200": _json("Health", "ready"), "503": _json("Health", "not ready")}, auth=False)},
        "/metrics": {"get": _op("Prometheus metrics", (), {"200": {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, auth=False)},
    }


@cache
def _document() -> dict[str, Any]:
    from refundry import __version__

    schemas = {name: _reroot(schema(file), name) for name, file in FROM_FILES.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "refundry", "version": __version__,
                 "description": "Refund-approval decisions, approval records and reviews. "
                                "Send `Authorization: Bearer <token>`."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": _paths(),
        "components": {"schemas": {**schemas, **ENVELOPES},
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
    }


def document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document (callers may not change the cached one)."""
    return copy.deepcopy(_document())
