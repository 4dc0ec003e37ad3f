"""The web console: server-rendered pages over the pool, factory and frontend
APIs, each read with the visitor's own token (sessions.py).

Nothing is stored here but the sessions: every page is one or a few API
calls made on the visitor's behalf, so a user sees what the pool shows them
(their own jobs) and the factory and frontend pages need a token those
services accept (frontend or admin scope); the console only words the
refusal. Plots are the services' own time series (glidewms/timeseries.py)
drawn as SVG on the server (svg.py).

Security, beyond the session cookie: every POST carries the session's CSRF
token (the login form a cookie-bound one), forms are read with a size cap,
the pages are served with a Content-Security-Policy that allows only this
origin's script and style, no framing and no referrer, and no token is ever
put in a URL, a page or a log line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware

from glidewms import __version__
from glidewms.config.web import WebConfig
from glidewms.web import views
from glidewms.web.services import ServiceError, Services
from glidewms.web.sessions import COOKIE, LOGIN_COOKIE, MAX_TOKEN_BYTES, Session, Sessions, same

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
JOB_ID = re.compile(r"^[0-9]{1,12}\.[0-9]{1,9}$")
GLIDEIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)


class LoginNeeded(Exception):
    pass


class Refused(Exception):
    """A page the console itself refuses (bad input, not your job)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[..., Awaitable[Any]]) -> Any:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path != "/static" and not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def visitor(request: Request) -> Session:
    """The visitor's session, or to the login page."""
    sessions: Sessions = request.app.state.sessions
    session = sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise LoginNeeded()
    return session


Visitor = Annotated[Session, Depends(visitor)]


def create_app(config: WebConfig, public_url: str = "") -> FastAPI:
    services = Services(config)
    sessions = Sessions(config.session_seconds, config.max_sessions)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = views.when
    templates.env.filters["ago"] = views.ago
    templates.env.filters["duration"] = views.duration
    templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=1, sort_keys=True)
    secure = public_url.startswith("https:") or config.tls_cert is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await services.close()

    app = FastAPI(
        title="glidewms web",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(Headers)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.sessions = sessions
    app.state.services = services

    def page(
        request: Request, who: Session | None, template: str, code: int = 200, **context: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            template,
            {
                "who": who,
                "csrf": who.csrf if who else "",
                "has": services.has,
                "version": __version__,
                "path": request.url.path,
                **context,
            },
            status_code=code,
        )

    def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )

    @app.exception_handler(LoginNeeded)
    async def _login(request: Request, exc: LoginNeeded) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        who = sessions.get(request.cookies.get(COOKIE))
        return page(request, who, "error.html", exc.status, message=exc.message)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        who = sessions.get(request.cookies.get(COOKIE))
        if exc.status == 401 and who is not None:  # the token expired or was revoked
            sessions.drop(who.id)
            return RedirectResponse("/login", status_code=303)
        status = exc.status if exc.status in (403, 404, 422) else 502
        if exc.status == 403:
            message = (
                f"The {exc.service} refused your token for this page ({exc.detail}). "
                "Operator pages need a token with the frontend or admin scope."
            )
        elif exc.status == 0:
            message = f"The {exc.service} cannot be reached: {exc.detail}."
        else:
            message = f"The {exc.service} answered {exc.status}: {exc.detail}"
        return page(request, who, "error.html", status, message=message)

    async def form(request: Request) -> dict[str, str]:
        """An urlencoded form, refused beyond MAX_FORM_BYTES before parsing."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, f"form larger than {MAX_FORM_BYTES} bytes")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "the form is not readable") from None
        return {k: v[0] for k, v in parsed.items()}

    def check_csrf(who: Session, fields: dict[str, str]) -> None:
        if not same(who.csrf, fields.get("csrf")):
            raise Refused(403, "the form's CSRF token does not match this session; reload the page")

    # ------------------------------------------------------------ login

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        value = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        response = page(
            request,
            None,
            "login.html",
            login_csrf=value,
            token_files=bool(config.token_dirs),
            error=None,
        )
        set_cookie(response, LOGIN_COOKIE, value, 3600)
        return response

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        fields = await form(request)
        value = request.cookies.get(LOGIN_COOKIE) or ""

        def again(error: str, status: int = 400) -> Response:
            return page(
                request,
                None,
                "login.html",
                status,
                login_csrf=value or secrets.token_urlsafe(32),
                token_files=bool(config.token_dirs),
                error=error,
            )

        if not same(value, fields.get("csrf")):
            return again("The login form expired; try again.", 403)
        token = fields.get("token", "").strip()
        token_file = fields.get("token_file", "").strip()
        if not token and token_file:
            try:
                token = views.read_token_file(token_file, config.token_dirs)
            except ValueError as exc:
                return again(str(exc))
        if not token:
            return again("Paste a token.")
        if len(token) > MAX_TOKEN_BYTES or any(c.isspace() for c in token):
            return again("That is not a token (one line, no blanks).")
        try:
            await services.get("pool", "stats", token)
        except ServiceError as exc:
            if exc.status == 401:
                return again("The pool does not accept this token (invalid or expired).", 401)
            if exc.status == 0:
                return again(f"The pool cannot be reached: {exc.detail}.", 502)
            # 403: a valid token without the user scope (a frontend's): factory pages
        previous = request.cookies.get(COOKIE)
        if previous:
            sessions.drop(previous)  # a new id at every login: no session fixation
        session = sessions.new(token)
        log.info("login: %s (%s)", session.subject, " ".join(sorted(session.scopes)))
        response = RedirectResponse("/", status_code=303)
        set_cookie(response, COOKIE, session.id, None)
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=secure, samesite="strict")
        return response

    @app.post("/logout")
    async def logout(request: Request, who: Visitor) -> Response:
        check_csrf(who, await form(request))
        sessions.drop(who.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", secure=secure, samesite="strict")
        return response

    # ------------------------------------------------------------ pool

    async def plot(
        who: Session,
        service: str,
        name: str,
        title: str,
        seconds: int,
        label: Callable[[dict[str, str]], str] = views.label_text,
        unit: str = "",
        combine: bool = False,
    ) -> Any:
        since = time.time() - seconds
        try:
            found = await services.get(
                service,
                "timeseries",
                who.token,
                {"name": name, "since": since, "step": max(seconds // 600, 0)},
            )
        except ServiceError as exc:
            return views.no_plot(title, f"{exc.service}: {exc.detail}")
        return views.chart(title, found, since, label, unit, combine)

    def span(request: Request) -> tuple[str, int]:
        chosen = request.query_params.get("range", "1h")
        if chosen not in RANGES:
            chosen = "1h"
        return chosen, RANGES[chosen]

    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request, who: Visitor) -> Response:
        chosen, seconds = span(request)
        stats = None
        with contextlib.suppress(ServiceError):
            stats = await services.get("pool", "stats", who.token)
        plots = [
            await plot(
                who,
                "pool",
                "glidewms_pool_jobs_by_state",
                "Jobs by state (every owner)",
                seconds,
                lambda lab: lab.get("state", ""),
            ),
            await plot(
                who,
                "pool",
                "glidewms_pool_cores",
                "Pilot cores busy and idle",
                seconds,
                lambda lab: lab.get("status", ""),
            ),
            await plot(
                who,
                "pool",
                "glidewms_pool_job_wait_seconds_p50",
                "Submit to start: median wait",
                seconds,
                lambda _: "p50",
                unit="s",
            ),
        ]
        return page(
            request, who, "overview.html", stats=stats, plots=plots, ranges=RANGES, chosen=chosen
        )

    @app.get("/queue", response_class=HTMLResponse)
    async def queue(request: Request, who: Visitor) -> Response:
        """The live queue, or (`history=1`) the finished jobs: the visitor's
        own (an admin's: everyone's); others' jobs, which the pool shows
        redacted, are left out."""
        history = request.query_params.get("history") == "1"
        jobs = await services.get("pool", "jobs", who.token, {"history": history or None})
        state = request.query_params.get("state") or None
        mine = [j for j in jobs if not j.get("redacted")]
        summary = views.queue_summary(mine)
        shown = [j for j in mine if state is None or j.get("state") == state]
        if history:
            shown = shown[-500:][::-1]  # the latest finished first
        return page(
            request,
            who,
            "queue.html",
            summary=summary,
            jobs=shown[:500],
            total=len(mine),
            state=state,
            history=history,
        )

    def job_id(jid: str) -> str:
        if not JOB_ID.fullmatch(jid):
            raise Refused(404, "a job id is CLUSTER.PROC")
        return jid

    async def own_job(who: Session, jid: str) -> dict[str, Any]:
        job: dict[str, Any] = await services.get("pool", f"jobs/{job_id(jid)}", who.token)
        if job.get("redacted"):
            raise Refused(403, f"Job {jid} is not yours: the console shows only your own jobs.")
        return job

    @app.get("/jobs/{jid}", response_class=HTMLResponse)
    async def job(request: Request, jid: str, who: Visitor) -> Response:
        found = await own_job(who, jid)
        events = await services.get("pool", f"jobs/{jid}/events", who.token)
        explain = None
        if who.is_operator and services.has("frontend") and found.get("state") == "idle":
            with contextlib.suppress(ServiceError):
                explain = await services.get("frontend", "explain", who.token)
        prio = None
        if found.get("state") == "idle":
            with contextlib.suppress(ServiceError):
                prio = (await services.get("pool", "userprio", who.token)).get("submitters")
        reasons = views.why_idle(found, explain, prio)
        return page(request, who, "job.html", job=found, events=events[-500:], reasons=reasons)

    @app.get("/jobs/{jid}/outputs/{index}")
    async def output(jid: str, index: int, who: Visitor) -> Response:
        found = await own_job(who, jid)
        outputs = found.get("outputs") or []
        if not 0 <= index < len(outputs) or not isinstance(outputs[index], dict):
            raise Refused(404, f"job {jid} has no output {index}")
        out = outputs[index]
        sha = str(out.get("sha256", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise Refused(404, "this output has no stored file")
        name = Path(str(out.get("name", "output"))).name or "output"
        upstream = await services.open("pool", f"files/{sha}", who.token)
        return StreamingResponse(
            upstream.aiter_raw(),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
            background=BackgroundTask(upstream.aclose),
        )

    # ------------------------------------------------------------ factory

    @app.get("/factory", response_class=HTMLResponse)
    async def factory(request: Request, who: Visitor) -> Response:
        chosen, seconds = span(request)
        entries = await services.get("factory", "entries", who.token)
        stats = await services.get("factory", "stats", who.token)
        summary = await services.get("factory", "glideins", who.token, {"summary": "true"})
        plots = [
            await plot(
                who,
                "factory",
                "glidewms_factory_glideins",
                "Pilots alive per entry",
                seconds,
                lambda lab: lab.get("entry", ""),
                combine=True,
            ),
            await plot(
                who,
                "factory",
                "glidewms_factory_goodput_fraction",
                "Goodput fraction (job seconds that succeeded)",
                seconds,
                lambda _: "goodput",
            ),
        ]
        return page(
            request,
            who,
            "factory.html",
            entries=entries,
            rows=views.factory_rows(stats.get("rows", [])),
            summary=summary.get("summary", {}),
            plots=plots,
            ranges=RANGES,
            chosen=chosen,
        )

    @app.get("/pilots", response_class=HTMLResponse)
    async def pilots(request: Request, who: Visitor) -> Response:
        q = request.query_params
        filters = {
            "entry": views.bounded(q.get("entry"), 128),
            "state": views.bounded(q.get("state"), 32),
            "exit_reason": views.bounded(q.get("exit_reason"), 128),
            "limit": views.number(q.get("limit"), 200, 1, 2000),
        }
        found = await services.get("factory", "glideins", who.token, filters)
        return page(request, who, "pilots.html", pilots=found, filters=filters)

    @app.get("/pilots/{glidein_id}", response_class=HTMLResponse)
    async def pilot(request: Request, glidein_id: str, who: Visitor) -> Response:
        if not GLIDEIN_ID.fullmatch(glidein_id):
            raise Refused(404, "not a pilot id")
        logs = await services.get("factory", f"glideins/{glidein_id}/logs", who.token)
        cut: dict[str, int] = {}
        for name in ("stdout", "stderr"):  # a page a browser can still show
            text = str(logs.get(name) or "")
            if len(text) > views.MAX_LOG_CHARS:
                logs[name] = text[-views.MAX_LOG_CHARS :]
                cut[name] = len(text)
        logs["trail"] = (logs.get("trail") or [])[-views.MAX_TRAIL_RECORDS :]
        return page(request, who, "pilot.html", pilot=logs, cut=cut)

    @app.get("/search", response_class=HTMLResponse)
    async def search(request: Request, who: Visitor) -> Response:
        q = request.query_params
        text = (q.get("q") or "").strip()[:200]
        hours = views.number(q.get("hours"), 24, 1, 24 * 90)
        form_values = {
            "q": text,
            "site": views.bounded(q.get("site"), 128) or "",
            "entry": views.bounded(q.get("entry"), 128) or "",
            "hours": hours,
        }
        result = None
        if len(text) >= 2:
            result = await services.get(
                "factory",
                "logsearch",
                who.token,
                {
                    "q": text,
                    "site": form_values["site"],
                    "entry": form_values["entry"],
                    "since": time.time() - hours * 3600,
                },
            )
        return page(request, who, "search.html", form=form_values, result=result)

    # ------------------------------------------------------------ frontend

    @app.get("/frontend", response_class=HTMLResponse)
    async def frontend(request: Request, who: Visitor) -> Response:
        chosen, seconds = span(request)
        status = await services.get("frontend", "status", who.token)
        history = await services.get("frontend", "explain", who.token, {"history": "true"})
        names = (
            ("glidewms_frontend_demand_idle_jobs", "Idle jobs matching each entry (demand)"),
            ("glidewms_frontend_request_idle", "Idle pilots requested per entry"),
            ("glidewms_frontend_request_max_running", "Running pilots allowed per entry"),
        )
        plots = [
            await plot(who, "frontend", name, title, seconds, views.group_entry)
            for name, title in names
        ]
        return page(
            request,
            who,
            "frontend.html",
            status=status,
            entries=status.get("entries") or [],
            history=views.cycles(history)[:50],
            plots=plots,
            ranges=RANGES,
            chosen=chosen,
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
