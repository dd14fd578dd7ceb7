"""The Starlette application behind ``refundry serve``.

Handlers are thin: they authenticate, parse, call the library (engine, store, customer
messages) in the thread pool, and map its errors to HTTP statuses. The actor of every event is
the authenticated identity's name, never a field of the body, so maker-checker holds against
who actually called.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from refundry.app import report
from refundry.app.customer import CustomerError, communicate, status
from refundry.app.service.decider import Decider
from refundry.app.service.groupcommit import GroupCommit, StoreUnavailable
from refundry.app.service.identity import Identity, TokenError, Tokens
from refundry.app.service.intake import problems, take
from refundry.app.service.lookups import Lookups
from refundry.app.service.openapi import document
from refundry.app.service.proposals import ProposalError, diff_proposal
from refundry.app.service.readers import Readers
from refundry.app.service.rulesets import Rulesets
from refundry.app.tenancy import change_problem, proposal_problem, scoped, visible_rulesets
from refundry.core.engine import Engine
from refundry.core.errors import InvalidRequest, RefundryError
from refundry.core.models import json_default
from refundry.core.request import MAX_REQUEST_BYTES, JsonInputError, decode_json
from refundry.records.access import AccessRefused, ScopedStore
from refundry.records.events import STATUSES, IllegalTransition, RecordError, RecordStore
from refundry.records.history import History
from refundry.records.stores import PostgresStore

MAX_BODY = MAX_REQUEST_BYTES
LOG = logging.getLogger("refundry.service")


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


# On every answer of the API, as on the console's pages: a client must not sniff a JSON
# answer into something it renders, and no cache (a proxy's, a browser's) may keep a case,
# a decision or a token's refusal for the next user.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    # Sorted keys: the same data is the same bytes, however it was built (a retry, a read).
    body = json.dumps(data, ensure_ascii=False, default=json_default, separators=(",", ":"),
                      sort_keys=True)
    return Response(body, status, headers=dict(headers or {}), media_type="application/json")


def _error(status: int, message: str, errors: tuple[str, ...] = ()) -> Response:
    data: dict[str, Any] = {"error": message}
    if errors:
        data["errors"] = list(errors)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _json(data, status, headers)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Prometheus metrics in a registry of this application's own (no global state).

    Under ``serve --workers N`` every process writes its figures to files in the directory
    ``PROMETHEUS_MULTIPROC_DIR`` names (prometheus_client's multiprocess mode, chosen when the
    library is imported, so the variable is set before the worker processes start: server.py),
    and ``/metrics`` from any process reads all of them: counters and histograms summed over
    the processes, gauges over the live ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        r = self.registry
        self.requests = Counter("refundry_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("refundry_http_request_seconds", "time to answer",
                                 ["route"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, 1, 5))
        self.decisions = Counter("refundry_decisions", "decisions made", ["outcome", "recorded"],
                                 registry=r)
        self.reloads = Counter("refundry_ruleset_reloads", "ruleset reloads", ["result"],
                               registry=r)
        self.in_flight = Gauge("refundry_http_in_flight", "requests being answered", registry=r,
                               multiprocess_mode="livesum")
        self.generation = Gauge("refundry_ruleset_generation", "ruleset generation in force",
                                registry=r, multiprocess_mode="livemin")

    def exposition(self) -> bytes:
        """The Prometheus text: of every process of the server in multiprocess mode."""
        if self.multiproc_dir is None:
            return bytes(generate_latest(self.registry))
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiproc_dir)
        return bytes(generate_latest(merged))

    def process_ended(self) -> None:
        """Drop this process's live gauges from the aggregate (its counters stay counted)."""
        if self.multiproc_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)


@attrs.define
class Service:
    """What the handlers share: built once per process, safe to use from many threads."""

    rulesets: Rulesets
    store: RecordStore
    tokens: Tokens
    metrics: Metrics = attrs.Factory(Metrics)
    # History lookups on connections of their own (lookups.py): on the store's own, every
    # lookup would queue behind the committer's transaction and its flush. Without it (tests),
    # lookups share the owner's store.
    lookups: Lookups | None = None
    committer: GroupCommit | None = None
    decider: Decider | None = None
    draining: bool = False
    tokens_path: str | None = None  # read again when it changes: issued tokens work at once
    tokens_seen: tuple[int, int] | None = None
    # Signs console session cookies; every process of one server must share it (server.py).
    session_secret: str = attrs.Factory(lambda: secrets.token_urlsafe(32))
    # PostgreSQL: client-scoped reads go through row-level security (readers.py).
    readers: Readers | None = None

    def __attrs_post_init__(self) -> None:
        self.tokens_seen = self._tokens_stamp()
        if self.readers is None and isinstance(self.store, PostgresStore):
            self.readers = Readers(self.store)
        if self.lookups is None:
            self.lookups = Lookups.shared(self.store)
        with self.lookups.history() as history:
            history.sync()  # what is already recorded counts from the first request on
        # On the committer's own store: the index is synced inside the group's transaction.
        self.committer = GroupCommit(self.store, History(self.store, self.lookups.names))
        self.decider = Decider(self.store, self.lookups, lambda: self.rulesets.engine,
                               self.committer, self._counted)
        self.metrics.generation.set(self.rulesets.current.generation)

    def _tokens_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.tokens_path) if self.tokens_path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def reload_tokens(self) -> None:
        """Read the token file again if it changed; a broken file keeps the tokens in force."""
        stamp = self._tokens_stamp()
        if stamp is None or stamp == self.tokens_seen or self.tokens_path is None:
            return
        self.tokens_seen = stamp
        try:
            self.tokens = Tokens.load(self.tokens_path)
        except TokenError as exc:
            LOG.warning("token file refused", extra={"fields": {"error": str(exc)[:300]}})
            return
        LOG.info("tokens reloaded", extra={"fields": {"tokens": len(self.tokens.by_digest)}})

    def _counted(self, outcome: str) -> None:
        self.metrics.decisions.labels(outcome, "true").inc()

    def close(self) -> None:
        for stage in (self.decider, self.committer):  # the decider feeds the committer
            if stage is not None:
                stage.close()
        for extra in (self.lookups, self.readers):
            if extra is not None:
                extra.close()
        self.store.close()

    def scoped(self, who: Identity) -> ScopedStore:
        """The store as ``who`` sees it. In PostgreSQL an identity of some clients reads
        through row-level security for them, while refusals (and, after this view's check,
        state changes) are appended by the owner's store; one of every client reads as the
        owner. SQLite has only the application filter."""
        if self.readers is None or who.all_clients:
            return scoped(self.store, who)
        return ScopedStore(self.readers.get(who.clients), who.name, who.clients,
                           recorder=self.store)

    def reload(self) -> Any:
        result = self.rulesets.reload()
        self.metrics.reloads.labels("ok" if result.ok else "refused").inc()
        self.metrics.generation.set(self.rulesets.current.generation)
        LOG.info("rulesets reloaded" if result.ok else "ruleset reload refused",
                 extra={"fields": result.to_dict()})
        return result


# --- authentication and request parsing -----------------------------------------------------


def _identity(service: Service, request: Request, roles: tuple[str, ...]) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    who = service.tokens.identify(token.strip()) if scheme.lower() == "bearer" else None
    if who is None:
        raise ApiError(401, "a valid api token is needed (authorization: bearer ...)")
    if not who.has(*roles):
        raise ApiError(403, f"`{who.name}` may not do this; it needs the role "
                            f"{' or '.join(f'`{r}`' for r in roles)}")
    request.state.identity = who.name
    return who


async def _read(request: Request) -> bytes:
    """The body, refused unread past ``MAX_BODY`` bytes (a stated length first, then as it
    streams in), so a hostile client cannot make the server hold a gigabyte."""
    stated = request.headers.get("content-length", "")
    if stated.isdigit() and int(stated) > MAX_BODY:
        raise ApiError(400, f"the body is larger than {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(400, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(request: Request) -> Any:
    raw = await _read(request)
    try:
        return decode_json(raw, limit=MAX_BODY)
    except JsonInputError as exc:
        raise ApiError(400, f"the body is not json: {str(exc).removeprefix('invalid json: ')}"
                       ) from None


async def _object(request: Request, required: tuple[str, ...] = (),
                  optional: tuple[str, ...] = ()) -> dict[str, Any]:
    data = await _body(request)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a json object")
    unknown = sorted(set(data) - set(required) - set(optional))
    missing = [k for k in required if k not in data]
    if unknown or missing:
        problems = [f"`{k}` is not a field here" for k in unknown]
        problems += [f"`{k}` is required" for k in missing]
        raise ApiError(400, "; ".join(problems))
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise ApiError(400, f"`{bad[0]}` must be a string")
    return data


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, f"query `{name}` must be true or false")
    return value in ("true", "1")


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"query `{name}` must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query `{name}` must be between {low} and {high}")
    return value


# --- what the handlers do, in the thread pool --------------------------------------------------


def _evaluate(service: Service, data: dict[str, Any]) -> dict[str, Any]:
    """The decision for ``data``, not recorded: no history facts, nothing appended."""
    try:
        taken = take(data, None)
    except InvalidRequest as exc:
        raise ApiError(422, "the request is not valid; nothing was evaluated or recorded",
                       problems(exc)) from None
    decision = service.rulesets.engine.evaluate(taken.request)
    service.metrics.decisions.labels(decision.outcome, "false").inc()
    return decision.to_dict()


async def _record(service: Service, data: dict[str, Any], actor: str) -> Response:
    """``data`` decided with history facts and appended (decider.py), or the same request's
    first decision when it is recorded already; the decision as recorded (masked like the
    record), byte for byte the same on a retry."""
    assert service.decider is not None
    try:
        recorded = await service.decider.record(data, actor)
    except InvalidRequest as exc:
        raise ApiError(422, "the request is not valid; nothing was evaluated or recorded",
                       problems(exc)) from None
    except StoreUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    except RecordError as exc:
        raise ApiError(409, str(exc)) from None
    return Response(recorded.body, media_type="application/json", headers={
        "X-Refundry-Recorded": "created" if recorded.created else "existing"})


def _case(service: Service, request_id: str, who: Identity, action: str = "read") -> Any:
    """The case, if ``who``'s clients include its client; else a 404 exactly like a missing
    case (ids of other clients do not leak), and the attempt is recorded."""
    try:
        return service.scoped(who).case(request_id, action)
    except RecordError:
        raise ApiError(404, f"no case for request `{request_id[:100]}`") from None


def _act(service: Service, request_id: str, action: Callable[[], Any], who: Identity,
         what: str) -> dict[str, Any]:
    """Run a state change on an existing case: 404 when there is none (or it is another
    client's), 409 when the state machine or maker-checker refuses it, 422 for anything else."""
    _case(service, request_id, who, what)
    try:
        case = action()
    except IllegalTransition as exc:
        raise ApiError(409, str(exc)) from None
    except RefundryError as exc:
        raise ApiError(422, str(exc)) from None
    return dict(case.to_dict())


def _page(service: Service, status_: str | None, limit: int, after: int,
          who: Identity) -> dict[str, Any]:
    """One page of ``who``'s clients' cases by keyset: ``next`` is the cursor for the page
    after (null at the end). One case more than the page is read to know whether there is a
    next page."""
    got = service.scoped(who).case_page(after=after, limit=limit + 1, status=status_)
    page = got[:limit]
    return {"cases": [c.summary() for _seq, c in page], "limit": limit, "after": after,
            "next": page[-1][0] if len(got) > limit else None}


def _customer(service: Service, who: Identity, request_id: str, lang: str,
              channel: str | None = None) -> dict[str, Any]:
    actor = who.name
    _case(service, request_id, who, "status")
    try:
        # Read through row-level security like every scoped read; the note below is a state
        # change, appended by the owner.
        msg = status(service.scoped(who).store, request_id, lang)
        if channel is not None:
            communicate(service.store, request_id, channel=channel, template=msg.template,
                        language=msg.language, text=msg.plain(), actor=actor)
    except CustomerError as exc:
        raise ApiError(422, str(exc)) from None
    return dict(msg.to_dict())


def _ready(service: Service) -> bool:
    service.store.checkpoint()  # one cheap read: the store answers
    return True


# --- handlers ---------------------------------------------------------------------------------

Handler = Callable[[Request, Service], Awaitable[Response]]


def _service(request: Request) -> Service:
    return request.app.state.service


async def post_decision(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("service",))
    record = _flag(request, "record")
    data = await _body(request)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a json object (a refund request)")
    client = data.get("client_id")
    if isinstance(client, str) and not who.sees(client):
        await run_in_threadpool(_refuse_client, service, who, client)
    if record:
        return await _record(service, data, who.name)
    decision = await run_in_threadpool(_evaluate, service, data)
    return _json(decision, headers={"X-Refundry-Recorded": "none"})


def _refuse_client(service: Service, who: Identity, client: str) -> None:
    """A decision for a client outside ``who``'s: recorded as refused, and a 403."""
    try:
        service.scoped(who).check_client(client, "decide")
    except AccessRefused as exc:
        raise ApiError(403, str(exc)) from None


async def get_cases(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("reviewer", "auditor"))
    status_ = request.query_params.get("status")
    if status_ is not None and status_ not in STATUSES:
        raise ApiError(400, f"query `status` must be one of {', '.join(STATUSES)}")
    limit = _int(request, "limit", 100, 1, 1000)
    after = _int(request, "after", 0, 0, 2**62)
    return _json(await run_in_threadpool(_page, service, status_, limit, after, who))


async def get_case(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("reviewer", "auditor"))
    case = await run_in_threadpool(_case, service, request.path_params["request_id"], who)
    return _json(case.to_dict())


def review_case(service: Service, who: Identity, rid: str, verdict: str,
                justification: str | None) -> dict[str, Any]:
    """Approve or deny a case in review as ``who``: the one path for the API and the console."""
    if verdict not in ("approve", "deny"):
        raise ApiError(400, "`verdict` must be approve or deny")
    return _act(service, rid, lambda: service.store.review(
        rid, actor=who.name, approve=verdict == "approve", reason=justification), who, verdict)


def dispute_case(service: Service, who: Identity, rid: str, reason: str) -> dict[str, Any]:
    engine = service.rulesets.engine
    return _act(service, rid, lambda: service.store.open_dispute(
        rid, actor=who.name, reason=reason, engine=engine), who, "dispute")


def resolve_case(service: Service, who: Identity, rid: str, resolution: str, explanation: str,
                 amount: str | None) -> dict[str, Any]:
    return _act(service, rid, lambda: service.store.resolve_dispute(
        rid, actor=who.name, resolution=resolution, explanation=explanation, amount=amount),
        who, "resolve")


def find_case(service: Service, request_id: str, who: Identity) -> Any:
    """The case recorded for ``request_id``, or a 404 (also when it is another client's)."""
    return _case(service, request_id, who)


async def post_review(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("reviewer",))
    body = await _object(request, ("verdict",), ("justification",))
    rid = request.path_params["request_id"]
    return _json(await run_in_threadpool(review_case, service, who, rid, body["verdict"],
                                         body.get("justification")))


async def post_dispute(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("reviewer",))
    body = await _object(request, ("reason",))
    rid = request.path_params["request_id"]
    return _json(await run_in_threadpool(dispute_case, service, who, rid, body["reason"]))


async def post_resolution(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("reviewer",))
    body = await _object(request, ("resolution", "explanation"), ("amount",))
    rid = request.path_params["request_id"]
    return _json(await run_in_threadpool(resolve_case, service, who, rid, body["resolution"],
                                         body["explanation"], body.get("amount")))


def _lang(request: Request, given: str | None) -> str:
    """``?lang=`` or the first language of ``Accept-Language`` that we speak, else English."""
    if given:
        return given
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in ("en", "de"):
            return tag
    return "en"


async def get_status(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("service", "reviewer", "auditor"))
    rid, lang = request.path_params["request_id"], _lang(request, request.query_params.get("lang"))
    return _json(await run_in_threadpool(_customer, service, who, rid, lang))


async def post_status(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("service", "reviewer"))
    body = await _object(request, ("channel",), ("lang",))
    rid, lang = request.path_params["request_id"], _lang(request, body.get("lang"))
    if not 0 < len(body["channel"]) <= 40:
        raise ApiError(400, "`channel` must be 1 to 40 characters")
    return _json(await run_in_threadpool(_customer, service, who, rid, lang, body["channel"]))


async def get_rulesets(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("analyst", "auditor", "service"))
    loaded = service.rulesets.current.to_dict()
    return _json({**loaded, "rulesets": visible_rulesets(who, loaded["rulesets"])})


async def post_reload(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("analyst",))
    LOG.info("ruleset reload asked", extra={"fields": {"identity": who.name}})
    await run_in_threadpool(_may_publish, service, who)
    result = await run_in_threadpool(service.reload)
    return _json(result.to_dict(), 200 if result.ok else 422)


def _may_publish(service: Service, who: Identity) -> None:
    """An analyst puts in force only its clients' overlays; baselines only an admin. Checked
    on a trial load of the files (the reload loads them again, to swap them in)."""
    if who.has("admin"):
        return
    rulesets = service.rulesets
    try:
        trial = Engine.from_path(rulesets.paths, backend=rulesets.backend)
    except RefundryError:
        return  # the reload itself refuses it, with every error
    problem = change_problem(who, rulesets.engine.rulesets, trial.rulesets)
    if problem:
        service.scoped(who).refuse("publish", "*")
        raise ApiError(403, problem)


async def post_diff(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("analyst",))
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("rulesets"), dict) \
            or not isinstance(body.get("requests"), list) \
            or set(body) - {"rulesets", "requests", "as_of"}:
        raise ApiError(400, "the body must be {`rulesets`: {file name: yaml text}, "
                            "`requests`: [refund requests], `as_of`?}")
    problem = proposal_problem(who, body["rulesets"].values())
    if problem:
        await run_in_threadpool(service.scoped(who).refuse, "diff", "*")
        raise ApiError(403, problem)
    try:
        report = await run_in_threadpool(diff_proposal, service.rulesets, body["rulesets"],
                                         body["requests"], body.get("as_of"))
    except ProposalError as exc:
        raise ApiError(exc.status, str(exc), exc.errors) from None
    return _json(report)


def _day(request: Request, name: str) -> Any:
    import datetime as dt

    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"query `{name}` must be a date (yyyy-mm-dd)") from None


async def get_report(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("analyst", "auditor"))
    since, until = _day(request, "since"), _day(request, "until")
    client = request.query_params.get("client") or None

    def build() -> str:
        store = service.scoped(who)
        store.ask(client, "report")  # outside its clients: recorded, and the report is empty
        figs, head = report.build(store, since=since, until=until, client=client)
        return report.to_json(figs, head)

    return Response(await run_in_threadpool(build), media_type="application/json")


async def get_verify(request: Request, service: Service) -> Response:
    who = _identity(service, request, ("auditor",))
    if not who.all_clients:
        # The chain is one for every client: checking it reads, and its problems name, them all.
        raise ApiError(403, f"`{who.name}` may not verify the whole chain; it needs every "
                            "client (`*`, an admin)")
    result = await run_in_threadpool(service.store.verify)
    return _json(result.to_dict(), 200 if result.ok else 409)


async def healthz(request: Request, service: Service) -> Response:
    return _json({"status": "alive"})


async def readyz(request: Request, service: Service) -> Response:
    if service.draining:
        return _json({"status": "shutting down"}, 503)
    try:
        await run_in_threadpool(_ready, service)
    except Exception as exc:  # noqa: BLE001 - any failure to read means not ready
        return _json({"status": "store unreachable", "detail": str(exc)[:300]}, 503)
    return _json({"status": "ready", "generation": service.rulesets.current.generation})


async def metrics(request: Request, service: Service) -> Response:
    return Response(await run_in_threadpool(service.metrics.exposition),
                    media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request, service: Service) -> Response:
    return _json(document())


# --- the application --------------------------------------------------------------------------


def _endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        service = _service(request)
        service.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            response = await handler(request, service)
        except ApiError as exc:
            response = _error(exc.status, exc.message, exc.errors)
        except Exception:  # noqa: BLE001 - one broken request must not take the others down
            LOG.exception("request failed", extra={"fields": {"route": route}})
            response = _error(500, "internal error; the request was not completed")
        finally:
            service.metrics.in_flight.dec()
        response.headers.update(SECURITY_HEADERS)
        took = time.perf_counter() - t0
        service.metrics.latency.labels(route).observe(took)
        service.metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if response.status_code >= 400 or LOG.isEnabledFor(logging.DEBUG):
            LOG.info("request", extra={"fields": {
                "route": route, "method": request.method, "status": response.status_code,
                "ms": round(took * 1000, 2),
                "identity": getattr(request.state, "identity", None)}})
        return response

    return endpoint


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("/v1/decisions", "POST", post_decision),
    ("/v1/cases", "GET", get_cases),
    ("/v1/cases/{request_id}", "GET", get_case),
    ("/v1/cases/{request_id}/review", "POST", post_review),
    ("/v1/cases/{request_id}/dispute", "POST", post_dispute),
    ("/v1/cases/{request_id}/dispute/resolution", "POST", post_resolution),
    ("/v1/cases/{request_id}/status", "GET", get_status),
    ("/v1/cases/{request_id}/status", "POST", post_status),
    ("/v1/rulesets", "GET", get_rulesets),
    ("/v1/rulesets/reload", "POST", post_reload),
    ("/v1/rulesets/diff", "POST", post_diff),
    ("/v1/report", "GET", get_report),
    ("/v1/verify", "GET", get_verify),
    ("/v1/openapi.json", "GET", openapi),
    ("/healthz", "GET", healthz),
    ("/readyz", "GET", readyz),
    ("/metrics", "GET", metrics),
)


async def _not_found(request: Request, exc: Exception) -> Response:
    code = getattr(exc, "status_code", 404)
    response = _error(code, "no such route" if code == 404 else "method not allowed for this route")
    response.headers.update(SECURITY_HEADERS)
    return response


RULESET_CHECK_S = 2.0


async def _watch_rulesets(service: Service) -> None:
    """Reload when the ruleset or token files change (every process of the server does this)."""
    while True:
        await asyncio.sleep(RULESET_CHECK_S)
        try:
            await run_in_threadpool(service.reload_tokens)
            if await run_in_threadpool(service.rulesets.changed):
                await run_in_threadpool(service.reload)
        except Exception:  # noqa: BLE001 - a failed look must not end the watching
            LOG.exception("ruleset watch failed")


def _reload_on_sighup(service: Service) -> None:
    """``kill -HUP``: the systemd ``reload`` of the service (only where this is the main thread
    of a process, as under uvicorn; an app inside a test thread reloads over HTTP)."""
    import signal

    loop = asyncio.get_running_loop()
    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: loop.run_in_executor(None, service.reload))


def create_app(service: Service, *, more_routes: Sequence[BaseRoute] = (),
               middleware: Sequence[Middleware] = ()) -> Starlette:
    """The ASGI application over ``service``; closing the store when it shuts down.
    ``more_routes`` and ``middleware`` let the console (``app/console``) join the same app
    without this module knowing it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        LOG.info("ready", extra={"fields": {"store": service.store.url,
                                            "generation": service.rulesets.current.generation}})
        _reload_on_sighup(service)
        watcher = asyncio.create_task(_watch_rulesets(service))
        yield
        watcher.cancel()
        service.draining = True
        service.close()
        service.metrics.process_ended()
        LOG.info("stopped")

    by_path: dict[str, list[tuple[str, Handler]]] = {}
    for path, method, handler in ROUTES:
        by_path.setdefault(path, []).append((method, handler))
    routes = []
    for path, handlers in by_path.items():
        for method, handler in handlers:
            routes.append(Route(path, _endpoint(path, handler), methods=[method],
                                name=f"{method} {path}"))
    app = Starlette(routes=[*routes, *more_routes], lifespan=lifespan,
                    middleware=list(middleware),
                    exception_handlers={404: _not_found, 405: _not_found})
    app.state.service = service
    return app
