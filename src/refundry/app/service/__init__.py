"""``refundry serve``: the HTTP API over the engine and the records store (docs/deployment.md).

``identity`` (API tokens, hashed at rest, and roles), ``rulesets`` (the engine in force,
reloaded without a restart), ``openapi`` (the OpenAPI 3.1 document built from ``schemas/``),
``api`` (the Starlette application) and ``server`` (uvicorn, JSON logs, graceful shutdown).
"""
