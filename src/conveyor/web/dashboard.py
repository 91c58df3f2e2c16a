"""The web dashboard: server-rendered pages, live by Server-Sent Events, no build step.

Sign-in: a token (read or admin, as for the API) is exchanged for a signed session cookie
(HttpOnly, SameSite=Strict; over https `Secure` and named `__Host-…`). Sign-out revokes the
session in the store, so no server sharing it accepts the cookie again; taking a token out of
the server's tokens ends its sessions. Unknown tokens are throttled per client address, as on
the API. Every action is a POST carrying the session's CSRF token, from this origin (`Guard`
refuses other origins); a GET never changes anything. Without API tokens (this machine only)
every visitor is an admin, still with a session, so the CSRF check holds. Pages escape
everything (Jinja2 autoescaping) and load only this origin's script and style (see `guard.CSP`).

Live updates: each page listens to `/ui/events` (of the page's job or queue, or everything),
which sends at most one `change` a second however busy the store is; the page then fetches
itself again and swaps its `data-live` parts in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import jinja2
import pydantic
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi import Path as InPath
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from conveyor import views
from conveyor.app import App
from conveyor.errors import ConfigurationError, ConveyorError, InvalidTransition, JobNotFound
from conveyor.job import FINISHED_STATES, RETRYABLE_STATES, JobState
from conveyor.web.auth import Tokens, digest
from conveyor.web.common import (
    MAX_BULK,
    MAX_ID,
    MAX_PAGE,
    GroupBody,
    Shared,
    as_id,
    bulk,
    client_of,
    conveyor_error_json,
    find_jobs,
    group_action,
)
from conveyor.web.stats import Bar

HERE = Path(__file__).parent
SESSION_COOKIE = "conveyor_session"
FLASH_COOKIE = "conveyor_flash"
SESSION_S = 12 * 3600
#: The shortest CONVEYOR_SECRET_KEY accepted.
MIN_KEY_LENGTH = 32
#: A dashboard's live stream says "changed" at most this often.
CHANGE_EVERY_S = 1.0
PAGE = 50


@dataclass(frozen=True)
class Session:
    role: str
    nonce: str
    expires: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class SignedIn(Exception):
    """Not signed in (or not enough): answered with a redirect to the sign-in page or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tag_of(token_digest: bytes) -> str:
    return token_digest.hex()[:16]


def equal(given: str, expected: str) -> bool:
    """In constant time; `given` may hold any text a client sent."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class Sessions:
    """Session cookies signed with HMAC-SHA256: `role.expiry.nonce.tag.signature`, where `tag`
    names the token signed in with (a prefix of its digest): a session ends when its token is
    taken out of the server's tokens. The key comes from CONVEYOR_SECRET_KEY (so several
    servers share sessions), else it is made at start."""

    def __init__(self, tokens: Tokens | None, key: bytes | None = None) -> None:
        configured = os.environ.get("CONVEYOR_SECRET_KEY")
        if configured is not None and len(configured) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                f"CONVEYOR_SECRET_KEY must be at least {MIN_KEY_LENGTH} characters"
            )
        self.key = key or (configured.encode() if configured else secrets.token_bytes(32))
        #: the role of each token's tag; None: no tokens, every session is an admin's
        self.tags: dict[str, str] | None = None
        if tokens is not None:
            self.tags = {}
            for role, digest in tokens.entries:
                if self.tags.get(tag_of(digest)) != "admin":
                    self.tags[tag_of(digest)] = role

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, role: str, token: str | None = None) -> str:
        tag = "-" if token is None else tag_of(digest(token))
        body = f"{role}.{int(time.time()) + SESSION_S}.{secrets.token_urlsafe(16)}.{tag}"
        return f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie signed here, unexpired, whose token is still known (it may
        have been revoked since: see `App.session_revoked`)."""
        parts = (cookie or "").split(".")
        if len(parts) != 5:
            return None
        role, expiry, nonce, tag, signature = parts
        if not equal(signature, self._sign(f"{role}.{expiry}.{nonce}.{tag}")):
            return None
        if not expiry.isdigit() or int(expiry) < time.time() or role not in ("read", "admin"):
            return None
        if self.tags is not None and self.tags.get(tag) != role:
            return None  # its token is no longer known (or no longer has this role)
        return Session(role, nonce, float(expiry))

    def csrf(self, session: Session) -> str:
        return self._sign(f"csrf.{session.nonce}")[:40]

    def sign_flash(self, message: str) -> str:
        text = quote(message[:300])
        return f"{text}.{self._sign(f'flash.{text}')}"

    def read_flash(self, cookie: str | None) -> str:
        """A message this server set (not one planted by another page or site), or ''."""
        text, _, signature = (cookie or "").rpartition(".")
        return unquote(text) if text and equal(signature, self._sign(f"flash.{text}")) else ""


# -- what pages show ----------------------------------------------------------------------


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def chart(bars: list[Bar], label: Callable[[Bar], str]) -> dict[str, Any]:
    """An SVG bar chart's geometry: jobs finished per bar, succeeded below, failures above."""
    top = max((b.total for b in bars), default=0) or 1
    width, height = 600, 120
    step = width / len(bars)
    columns = []
    for i, bar in enumerate(bars):
        y, parts = float(height), []
        for state in (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED):
            h = bar.counts[state] / top * height
            if h > 0:
                y -= h
                parts.append({"state": state.value, "y": round(y, 2), "h": round(h, 2)})
        columns.append(
            {
                "x": round(i * step, 2),
                "w": round(max(step - 1, 1), 2),
                "parts": parts,
                "title": f"{label(bar)}: "
                + ", ".join(f"{n} {s.value}" for s, n in bar.counts.items() if n)
                if bar.total
                else f"{label(bar)}: none",
            }
        )
    total = {s.value: sum(b.counts[s] for b in bars) for s in bars[0].counts} if bars else {}
    return {"width": width, "height": height, "columns": columns, "top": top, "total": total}


def local_hm(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def safe_next(target: str | None, default: str = "/") -> str:
    """A path on this site to go back to; anything else (another site, `//host`) is refused."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


def create_dashboard(api: FastAPI, shared: Shared) -> None:
    """Add the dashboard to `api` (the JSON API's application): its static files, its pages,
    and error pages for everything but the API's paths."""
    app, tokens, stats, streams = shared.app, shared.tokens, shared.stats, shared.streams
    throttle, public_url = shared.throttle, shared.public_url
    sessions = Sessions(tokens)
    public_https = (public_url or "").lower().startswith("https:")
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters.update(pretty=pretty, span=views.span, when=views.when)
    api.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    routes = APIRouter()

    def secure(request: Request) -> bool:
        """Whether the browser reached us over https (directly, by a trusted proxy, or by the
        configured public URL): cookies are then `Secure` and `__Host-` named."""
        return public_https or request.url.scheme == "https"

    def cookie_name(request: Request, name: str) -> str:
        return f"__Host-{name}" if secure(request) else name

    def session_of(request: Request) -> Session | None:
        found = sessions.read(request.cookies.get(cookie_name(request, SESSION_COOKIE)))
        if found is None or app.session_revoked(found.nonce):
            return None
        return found

    def page(
        request: Request,
        template: str,
        session: Session,
        title: str,
        *,
        stream: str = "/ui/events",
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """A page for `session`; a session `viewer` just issued goes out as its cookie."""
        now = app.clock.now()
        flash = sessions.read_flash(request.cookies.get(cookie_name(request, FLASH_COOKIE)))
        html = templates.get_template(template).render(
            request=request,
            session=session,
            csrf=sessions.csrf(session),
            title=title,
            path=request.url.path,
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            stream=stream,
            flash=flash,
            now=now,
            ago=lambda ts: views.ago(ts, now),
            signed_in=tokens is not None,
            JobState=JobState,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
        if flash:
            response.delete_cookie(
                cookie_name(request, FLASH_COOKIE), path="/", secure=secure(request)
            )
        issued = getattr(request.state, "new_session", None)
        if issued is not None:
            set_session(response, issued, request)
        return response

    def set_session(response: Response, value: str, request: Request) -> None:
        response.set_cookie(
            cookie_name(request, SESSION_COOKIE),
            value,
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )

    def viewer(request: Request) -> Session:
        """The signed-in session (or, without tokens, an admin one); else to the sign-in page."""
        found = session_of(request)
        if found is not None:
            return found
        if tokens is None:
            cookie = sessions.issue("admin")
            request.state.new_session = cookie
            session = sessions.read(cookie)
            assert session is not None
            return session
        raise SignedIn(303, "sign in")

    def actor(request: Request, csrf: str) -> Session:
        """An admin session whose form carries its CSRF token (from this origin: `Guard`)."""
        session = session_of(request)
        if session is None:
            raise SignedIn(403, "sign in first")
        if not equal(csrf, sessions.csrf(session)):
            raise SignedIn(403, "the form is stale or was not sent by this dashboard; reload it")
        if not session.admin:
            raise SignedIn(403, "this needs an admin token")
        return session

    def done(request: Request, message: str, back: str | None, default: str) -> Response:
        response = RedirectResponse(safe_next(back, default), status_code=303)
        response.set_cookie(
            cookie_name(request, FLASH_COOKIE),
            sessions.sign_flash(message),
            max_age=30,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return response

    @api.exception_handler(SignedIn)
    def _signed_in(request: Request, exc: SignedIn) -> Response:
        if exc.status == 303:
            target = "/signin?" + urlencode({"next": request.url.path})
            return RedirectResponse(target, status_code=303)
        return error_page(str(exc), exc.status)

    # -- signing in -----------------------------------------------------------------------

    @routes.get("/signin", include_in_schema=False)
    def signin_page(request: Request, next: str = "/") -> Response:
        html = templates.get_template("signin.html").render(
            next=safe_next(next), error=None, tokens=tokens is not None
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @routes.post("/signin", include_in_schema=False)
    def signin(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
        def again(error: str, status: int, headers: dict[str, str] | None = None) -> Response:
            html = templates.get_template("signin.html").render(
                next=safe_next(next), error=error, tokens=True
            )
            return HTMLResponse(html, status_code=status, headers=headers)

        client = client_of(request)
        wait = None if tokens is None else throttle.retry_after(client)
        if wait is not None:
            return again(
                f"Too many unknown tokens from this address: try again in {wait} s.",
                429,
                {"Retry-After": str(wait)},
            )
        role = None if tokens is None else tokens.role_of(token.strip())
        if tokens is not None and role is None:
            throttle.failed(client)
            return again("That token is not known.", 401)
        response = RedirectResponse(safe_next(next), status_code=303)
        set_session(
            response, sessions.issue(role or "admin", token.strip() if role else None), request
        )
        return response

    @routes.post("/signout", include_in_schema=False)
    def signout(request: Request, csrf: str = Form("")) -> Response:
        session = session_of(request)
        if session is not None and equal(csrf, sessions.csrf(session)):
            app.revoke_session(session.nonce, session.expires)
            response = RedirectResponse("/signin", status_code=303)
            response.delete_cookie(
                cookie_name(request, SESSION_COOKIE),
                path="/",
                secure=secure(request),
                httponly=True,
                samesite="strict",
            )
            return response
        raise SignedIn(403, "the form is stale; reload the page")

    # -- pages ----------------------------------------------------------------------------

    @routes.get("/", include_in_schema=False)
    def overview(request: Request) -> Response:
        session = viewer(request)
        snap = stats.snapshot()
        return page(
            request,
            "overview.html",
            session,
            "Overview",
            snap=snap,
            workers=snap.workers,
            hour=chart(snap.minutes, lambda b: local_hm(b.start)),
            day=chart(snap.hours, lambda b: f"{local_hm(b.start)} to {local_hm(b.start + 3600)}"),
        )

    @routes.get("/queues", include_in_schema=False)
    def queues(request: Request) -> Response:
        session = viewer(request)
        snap = stats.snapshot()
        return page(request, "queues.html", session, "Queues", snap=snap)

    @routes.post("/queues/{name}/{action}", include_in_schema=False)
    def steer_queue(
        request: Request, name: str, action: str, csrf: str = Form(""), back: str = Form("/queues")
    ) -> Response:
        actor(request, csrf)
        if action not in ("pause", "resume"):
            raise SignedIn(404, f"no action {action!r} for queues")
        changed = (app.pause_queue if action == "pause" else app.resume_queue)(name)
        stats.forget()
        verb = "paused" if action == "pause" else "resumed"
        message = f"Queue {name} {verb}." if changed else f"Queue {name} was {verb} already."
        return done(request, message, back, "/queues")

    @routes.get("/jobs", include_in_schema=False)
    def jobs(
        request: Request,
        state: str = "",
        queue: str = "",
        task: str = "",
        search: str = "",
        error_type: str = "",
        limit: int = PAGE,
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> Response:
        session = viewer(request)
        wanted = JobState(state) if state in {s.value for s in JobState} else None
        limit = min(max(limit, 1), MAX_PAGE)
        found, after = find_jobs(
            app,
            state=wanted,
            queue=queue or None,
            task=task or None,
            search=search[:200] or None,
            error_type=error_type or None,
            limit=limit,
            before_id=before_id,
        )
        snap = stats.snapshot()
        filters = {
            "state": state,
            "queue": queue,
            "task": task,
            "search": search,
            "error_type": error_type,
        }
        older = (
            None
            if after is None
            else "/jobs?"
            + urlencode({**{k: v for k, v in filters.items() if v}, "before_id": after})
        )
        return page(
            request,
            "jobs.html",
            session,
            "Jobs",
            jobs=found,
            filters=filters,
            older=older,
            paged=before_id is not None,
            snap=snap,
            tasks=sorted(app.tasks),
            # a search reads many jobs: it is not repeated live
            stream="" if search else "/ui/events" + (f"?queue={quote(queue)}" if queue else ""),
            info=lambda j: views.job_info(j, snap.taken_at),
            max_bulk=MAX_BULK,
        )

    @routes.post("/jobs/bulk", include_in_schema=False)
    async def bulk_jobs(request: Request) -> Response:
        form = await request.form()
        actor(request, str(form.get("csrf", "")))
        action = str(form.get("action", ""))
        if action not in ("retry", "cancel", "purge"):
            raise SignedIn(400, "choose retry, cancel or purge")
        ids = [i for i in (as_id(str(v)) for v in form.getlist("ids")) if i is not None][:MAX_BULK]
        back = str(form.get("back", "/jobs"))
        if not ids:
            return done(request, "No jobs were selected.", back, "/jobs")
        count = await asyncio.to_thread(bulk, app, action, ids)
        stats.forget()
        verb = {"retry": "retried", "cancel": "cancelled or asked to stop", "purge": "purged"}
        return done(request, f"{count} of {len(ids)} jobs {verb[action]}.", back, "/jobs")

    @routes.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: int = InPath(ge=1, le=MAX_ID)) -> Response:
        session = viewer(request)
        try:
            job = app.get_job(job_id)
        except JobNotFound:
            return page(
                request, "missing.html", session, f"Job {job_id}", job_id=job_id, status=404
            )
        shown = views.redacted(job)
        return page(
            request,
            "job.html",
            session,
            f"Job {job.id}",
            job=job,
            shown=shown,
            history=app.job_history(job.id),
            stream=f"/ui/events?job_id={job.id}",
            retryable=job.state in RETRYABLE_STATES,
            cancellable=job.state not in FINISHED_STATES and not job.cancel_requested,
        )

    @routes.post("/jobs/{job_id}/{action}", include_in_schema=False)
    def steer_job(
        request: Request,
        action: str,
        job_id: int = InPath(ge=1, le=MAX_ID),
        csrf: str = Form(""),
        back: str = Form(""),
    ) -> Response:
        actor(request, csrf)
        default = f"/jobs/{job_id}"
        try:
            if action == "retry":
                app.retry_job(job_id)
                message = f"Job {job_id} is queued again."
            elif action == "cancel":
                job = app.cancel_job(job_id, note="cancelled from the dashboard")
                message = (
                    f"Job {job_id} cancelled."
                    if job.state is JobState.CANCELLED
                    else f"Job {job_id} was asked to stop."
                )
            else:
                raise SignedIn(404, f"no action {action!r} for jobs")
        except (InvalidTransition, JobNotFound) as exc:
            message = str(exc)
        stats.forget()
        return done(request, message, back, default)

    @routes.get("/dlq", include_in_schema=False)
    def dead_letter(
        request: Request,
        task: str = "",
        error_type: str = "",
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> Response:
        session = viewer(request)
        groups = app.dead_groups()
        found, after = find_jobs(
            app,
            state=JobState.DEAD,
            task=task or None,
            error_type=error_type or None,
            limit=PAGE,
            before_id=before_id,
        )
        filters = {k: v for k, v in {"task": task, "error_type": error_type}.items() if v}
        older = None if after is None else "/dlq?" + urlencode({**filters, "before_id": after})
        return page(
            request,
            "dlq.html",
            session,
            "Dead-letter queue",
            groups=groups,
            jobs=found,
            filters=filters,
            older=older,
            total=sum(g.count for g in groups),
            last_error=views.last_error,
        )

    @routes.post("/dlq/{action}", include_in_schema=False)
    def steer_dead(
        request: Request,
        action: str,
        csrf: str = Form(""),
        task: str = Form(""),
        error_type: str = Form(""),
        back: str = Form("/dlq"),
    ) -> Response:
        actor(request, csrf)
        if action not in ("retry", "purge"):
            raise SignedIn(404, f"no action {action!r} for the dead-letter queue")
        try:
            body = GroupBody(task=task or None, error_type=error_type or None)
        except pydantic.ValidationError:
            raise SignedIn(400, "the task and error type may not hold NUL characters") from None
        result = group_action(app, action, body)
        stats.forget()
        what = " ".join(p for p in (task, error_type) if p) or "all dead jobs"
        verb = "retried" if action == "retry" else "purged"
        more = " More remain: repeat to go on." if result["more"] else ""
        return done(request, f"{result['affected']} jobs ({what}) {verb}.{more}", back, "/dlq")

    @routes.get("/workers", include_in_schema=False)
    def workers(request: Request) -> Response:
        session = viewer(request)
        now, lease = app.clock.now(), app.settings.lease_seconds
        found = [views.worker_dict(w, now, lease) for w in app.list_workers()]
        return page(request, "workers.html", session, "Workers", workers=found)

    @routes.get("/cron", include_in_schema=False)
    def cron(request: Request) -> Response:
        session = viewer(request)
        now = app.clock.now()
        records = app.periodic_ticks() if app.periodics else {}
        entries = [
            views.cron_dict(e, records.get(e.name), now, app.redact) for e in app.periodics.values()
        ]
        return page(request, "cron.html", session, "Cron", entries=entries)

    @routes.get("/circuits", include_in_schema=False)
    def circuits(request: Request) -> Response:
        session = viewer(request)
        shown = views.circuits_dict(app.circuits, app.circuit_states(), app.circuit_log(limit=50))
        return page(
            request,
            "circuits.html",
            session,
            "Circuits",
            circuits=shown["circuits"],
            log=shown["log"],
        )

    @routes.post("/circuits/{name}/close", include_in_schema=False)
    def close_circuit(request: Request, name: str, csrf: str = Form("")) -> Response:
        actor(request, csrf)
        changed = app.close_circuit(name, reason="closed from the dashboard")
        message = f"Circuit {name} closed." if changed else f"Circuit {name} was closed already."
        return done(request, message, "/circuits", "/circuits")

    @routes.get("/ui/events", include_in_schema=False)
    async def changes(
        request: Request,
        job_id: int | None = Query(None, ge=1, le=MAX_ID),
        queue: str | None = None,
    ) -> Response:
        await asyncio.to_thread(viewer, request)  # it reads the store
        return streams.response(change_stream(app, job_id, queue))

    api.include_router(routes)

    def error_page(message: str, status: int) -> HTMLResponse:
        html = templates.get_template("error.html").render(message=message, status=status)
        return HTMLResponse(html, status_code=status)

    def for_programs(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/health", "/metrics"))

    @api.exception_handler(ConveyorError)
    def _conveyor_error(request: Request, exc: ConveyorError) -> Response:
        if for_programs(request):
            return conveyor_error_json(exc)
        return error_page(str(exc), 400)

    @api.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> Response:
        if for_programs(request):
            return JSONResponse({"error": "internal server error", "detail": None}, 500)
        return error_page("Something went wrong on the server; it is in the server's log.", 500)


async def change_stream(
    app: App, job_id: int | None, queue: str | None, poll: float = 1.0
) -> AsyncIterator[str]:
    """`event: change` when the job, the queue or anything changed, at most once a second."""
    backend = app.backend
    subscription = await backend.subscribe()
    try:
        cursor = await backend.event_cursor()
        yield "retry: 2000\n\n"
        quiet = 0.0
        while True:
            found, _ = await backend.read_events(cursor, job_id, queue, limit=1)
            if found:
                cursor = await backend.event_cursor()
                yield "event: change\ndata: {}\n\n"
                quiet = 0.0
                await asyncio.sleep(CHANGE_EVERY_S)
                continue
            await subscription.wait(poll)
            quiet += poll
            if quiet >= 15:
                quiet = 0.0
                yield ": keepalive\n\n"
    finally:
        await subscription.close()
