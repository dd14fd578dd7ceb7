"""The web console under ``/console``: server-rendered pages over ``Access``.

Sign-in takes one of the service's tokens; the session cookie (signed, ``SameSite=Strict``,
``HttpOnly``) then holds only the token's digest, so a token removed from the token file ends
its sessions at the next request. Every form that changes state carries the session's CSRF
token, checked before anything else. Pages load only ``/console/static`` files, and the CSP
forbids anything else (no inline script or style).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refundry.app.console.access import Access
from refundry.app.console.present import case_view, explained_rules, queue_rows, side_by_side
from refundry.app.service.api import ApiError, Service, create_app
from refundry.app.service.identity import Identity, digest

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes by default
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin")]
SESSION_S = 8 * 3600


class SecurityHeaders:
    """Adds the console's security headers to every response under ``/console``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/console"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *HEADERS]
                if not scope["path"].startswith("/console/static"):
                    message["headers"].append((b"cache-control", b"no-store"))
                if scope.get("scheme") == "https":
                    message["headers"] = _over_tls(message["headers"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _over_tls(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Reached over HTTPS (directly, or through a proxy uvicorn trusts to say so with
    ``X-Forwarded-Proto``): the session cookie is ``Secure``, so a browser never sends it over
    plain HTTP, and browsers are told to keep to HTTPS. Over plain HTTP (a laptop, the demo) a
    ``Secure`` cookie would never come back, so it is set only here."""
    out = [(k, v + b"; secure") if k == b"set-cookie" and b"secure" not in v.lower() else (k, v)
           for k, v in headers]
    return [*out, (b"strict-transport-security", b"max-age=31536000")]


class ConsoleOnly:
    """The console's sessions and headers around ``/console`` only; every other path goes
    straight to the application. The session middleware reads cookies and wraps ``send`` for
    every request it sees, and the API's routes, called by services with bearer tokens, have
    no session to load: that was CPU on every decision for nothing. Its cookie is scoped to
    ``/console`` anyway, so a browser never sends it anywhere else."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        # SecurityHeaders outermost: it must see the Set-Cookie the session middleware adds
        self.console = SecurityHeaders(SessionMiddleware(
            app, secret_key=secret, session_cookie="refundry_console", max_age=SESSION_S,
            path="/console", same_site="strict", https_only=False))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/console"):
            await self.console(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def console_middleware(service: Service) -> list[Middleware]:
    return [Middleware(ConsoleOnly, secret=service.session_secret)]


# --- sessions ------------------------------------------------------------------------------


def _signed_in(request: Request) -> Identity | None:
    service: Service = request.app.state.service
    hashed = request.session.get("token")
    return service.tokens.by_digest.get(hashed) if isinstance(hashed, str) else None


def _page(request: Request, template: str, access: Access | None, status: int = 200,
          **context: Any) -> Response:
    csrf = request.session.get("csrf", "")
    return TEMPLATES.TemplateResponse(request, template, {
        "access": access, "who": access.identity if access else None, "csrf": csrf,
        "flash": request.session.pop("flash", None), **context}, status_code=status)


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form, after the CSRF check (the only kind of form the console sends)."""
    raw = (await request.body())[:100_000].decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    expected = request.session.get("csrf")
    if not expected or not hmac.compare_digest(str(expected), form.get("csrf", "")):
        raise ApiError(403, "the form is out of date or not from this console; reload the page")
    return form


def _access(request: Request) -> Access | None:
    who = _signed_in(request)
    return Access(request.app.state.service, who) if who else None


def _to_login(request: Request) -> Response:
    return RedirectResponse(f"/console/login?next={quote(request.url.path)}", 303)


async def login_form(request: Request) -> Response:
    request.session.setdefault("csrf", secrets.token_urlsafe(24))
    return _page(request, "login.html", None, next=request.query_params.get("next", ""))


async def login(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        form = await _form(request)
    except ApiError as exc:
        return _page(request, "login.html", None, 403, error=exc.message)
    who = service.tokens.identify(form.get("token", "").strip())
    if who is None:
        return _page(request, "login.html", None, 401, error="that token is not valid here")
    request.session.clear()  # a new session on sign-in: nothing carried over from before
    request.session.update(token=digest(form["token"].strip()),
                           csrf=secrets.token_urlsafe(24))
    target = form.get("next", "")
    return RedirectResponse(target if target.startswith("/console/") else "/console/", 303)


async def logout(request: Request) -> Response:
    try:
        await _form(request)
    except ApiError:
        return RedirectResponse("/console/", 303)
    request.session.clear()
    return RedirectResponse("/console/login", 303)


async def home(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    target = "/console/queue" if access.may("reviewer", "auditor") else "/console/rulesets"
    return RedirectResponse(target, 303)


def _cursor(request: Request, name: str) -> int | None:
    text = request.query_params.get(name, "")
    return int(text) if text.isdigit() else None


async def queue(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    q = request.query_params
    filters = {k: q.get(k, "").strip() or None for k in ("client", "industry", "id")}
    before = _cursor(request, "before")
    page = await run_in_threadpool(
        access.queue, after=_cursor(request, "after") or 0, before=before,
        client=filters["client"], industry=filters["industry"], request_id=filters["id"])
    rows = queue_rows(page.cases, dt.datetime.now(dt.UTC))
    if before is not None:
        rows.reverse()
    keep = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
    return _page(request, "queue.html", access, page=page, rows=rows, filters=filters,
                 keep=keep, backwards=before is not None)


async def case(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    rid = request.path_params["request_id"]
    found = await run_in_threadpool(access.case, rid)
    explained = await run_in_threadpool(access.explain, rid)
    return _page(request, "case.html", access, case=case_view(found, dt.datetime.now(dt.UTC)),
                 explained=explained_rules(explained) if isinstance(explained, dict) else None,
                 unexplained=explained if isinstance(explained, str) else None,
                 pretty=json.dumps(found.request, indent=2, ensure_ascii=False, sort_keys=True))


async def act(request: Request) -> Response:
    """One state change on a case; the outcome (or the server's refusal) is shown on the case."""
    access = _access(request)
    if access is None:
        return _to_login(request)
    rid, action = request.path_params["request_id"], request.path_params["action"]
    form = await _form(request)
    text = {k: (form.get(k) or "").strip() or None for k in
            ("verdict", "justification", "reason", "resolution", "explanation", "amount")}
    try:
        if action == "review":
            await run_in_threadpool(access.review, rid, text["verdict"] or "",
                                    text["justification"])
        elif action == "dispute":
            await run_in_threadpool(access.dispute, rid, text["reason"] or "")
        elif action == "resolve":
            await run_in_threadpool(access.resolve, rid, text["resolution"] or "",
                                    text["explanation"] or "", text["amount"])
        else:
            raise ApiError(404, "no such action")
        request.session["flash"] = {"ok": True, "text": f"{action}: done"}
    except ApiError as exc:
        if exc.status in (403, 404):
            raise
        request.session["flash"] = {"ok": False, "text": f"refused: {exc.message}"}
    return RedirectResponse(f"/console/cases/{quote(rid, safe='')}", 303)


async def rulesets(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    return _page(request, "rulesets.html", access, loaded=await run_in_threadpool(access.rulesets),
                 kept=await run_in_threadpool(access.ruleset_versions))


async def ruleset_diff(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    old_digest = request.query_params.get("old", "")
    new_digest = request.query_params.get("new", "")
    old = await run_in_threadpool(access.ruleset_text, old_digest)
    new = await run_in_threadpool(access.ruleset_text, new_digest)
    rows = side_by_side(old[2], new[2])
    effect, more = await run_in_threadpool(access.impact, old_digest, new_digest)
    return _page(request, "diff.html", access, old=old, new=new, rows=rows,
                 changed=sum(r["tag"] != "equal" for r in rows), impact=effect, more=more)


def _day(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"`{text[:20]}` is not a date (yyyy-mm-dd)") from None


async def report_page(request: Request) -> Response:
    access = _access(request)
    if access is None:
        return _to_login(request)
    q = request.query_params
    since, until, client = _day(q.get("since")), _day(q.get("until")), q.get("client") or None
    data = await run_in_threadpool(access.report, since, until, client)
    return _page(request, "report.html", access, data=data,
                 filters={"since": q.get("since", ""), "until": q.get("until", ""),
                          "client": client or ""})


def _guard(handler: Any) -> Any:
    """Map the refusals of ``Access`` to a page with the status (403, 404, 400)."""

    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except ApiError as exc:
            return _page(request, "error.html", _access(request), exc.status,
                         code=exc.status, message=exc.message)

    return endpoint


def console_routes() -> list[Any]:
    return [
        Route("/console", _guard(home)), Route("/console/", _guard(home)),
        Route("/console/login", login_form, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/queue", _guard(queue)),
        Route("/console/cases/{request_id}", _guard(case)),
        Route("/console/cases/{request_id}/{action}", _guard(act), methods=["POST"]),
        Route("/console/rulesets", _guard(rulesets)),
        Route("/console/rulesets/diff", _guard(ruleset_diff)),
        Route("/console/report", _guard(report_page)),
        Mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def create_app_with_console(service: Service) -> Any:
    """The API of ``refundry serve`` with the console under ``/console``."""
    return create_app(service, more_routes=console_routes(),
                      middleware=console_middleware(service))
