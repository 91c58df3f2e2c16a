"""The JSON API: enqueue, inspect and steer jobs, queues, circuits over HTTP.

Every path is under `/api` except `/health`; the OpenAPI schema is at `/api/openapi.json`.
Errors are `{"error": "...", "detail": ...}` with the right 4xx status. With tokens, every
request needs `Authorization: Bearer <token>`: `read` for GETs, `admin` for the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor import views
from conveyor.app import App
from conveyor.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConveyorError,
    InvalidTransition,
    JobNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor.events import Cursor
from conveyor.job import FINISHED_STATES, RETRYABLE_STATES, Job, JobState
from conveyor.web.auth import Throttle, Tokens
from conveyor.web.guard import MAX_BODY_BYTES, GuardedAPI
from conveyor.web.metrics import add_metrics
from conveyor.web.stats import Bar, Stats

#: The most jobs one listing returns.
MAX_PAGE = 500
#: The most jobs one bulk action names, and the most one dead-letter group action touches.
MAX_BULK = 1000
MAX_GROUP = 10_000
#: A text search looks at this many of the newest job ids at a time (a `next` cursor goes on);
#: the store itself narrows the window down when the text has a plain-ASCII part of 3
#: characters or more, else it is read through, SEARCH_SCAN ids at a time.
SEARCH_WINDOW = 200_000
SEARCH_SCAN = 10_000
#: The largest job id (a signed 64-bit integer).
MAX_ID = 2**63 - 1
#: Event streams open at once, per server (on PostgreSQL each holds a LISTEN connection).
MAX_STREAMS = 50
#: An idle event stream sends a comment this often, so proxies keep it open.
KEEPALIVE_S = 15.0


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, detail: Any = None, retry_after: int | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = {} if retry_after is None else {"Retry-After": str(retry_after)}


def client_of(request: Request) -> str:
    """The client's address (a trusted proxy's `X-Forwarded-For` already applied)."""
    return request.client.host if request.client is not None else "-"


def as_id(text: str) -> int | None:
    """A job id written in ASCII digits, or None."""
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
        return None
    return int(text)


def leaves(value: Any) -> Iterator[str]:
    """Every key and scalar value in `value`, as text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)
    else:
        yield str(value)


def find_jobs(
    app: App, *, state: JobState | None = None, queue: str | None = None, task: str | None = None,
    error_type: str | None = None, search: str | None = None, limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[Job], int | None]:  # fmt: skip
    """A page of jobs, newest first, and the `before_id` of the next page (None: no more).

    `search` matches a job id exactly, or text in the task name or the arguments as a person
    sees them (redacted: a secret cannot be found by guessing it), case-insensitively; it looks
    at a window of the newest job ids below `before_id` (SEARCH_WINDOW or SEARCH_SCAN), and
    `next` goes on below it."""
    filters: dict[str, Any] = {
        "state": state,
        "queue": queue,
        "task": task,
        "error_type": error_type,
    }
    if not search:
        jobs = app.list_jobs(limit=limit, before_id=before_id, **filters)
        return jobs, jobs[-1].id if len(jobs) == limit else None
    if search.strip().isdigit():
        job_id = as_id(search)
        try:
            job = app.get_job(job_id) if job_id is not None else None
        except JobNotFound:
            job = None
        last = job.errors[-1].get("type") if job is not None and job.errors else None
        wanted = job is not None and (
            state in (None, job.state) and queue in (None, job.queue)
            and task in (None, job.task) and error_type in (None, last)
        )  # fmt: skip
        return ([job] if wanted and job is not None else []), None
    needle = search.casefold()
    # the store narrows the window down by the longest plain-ASCII part of the text (kept
    # verbatim in stored JSON); the redacted text of what it finds decides
    fragments = re.findall(r"[a-z0-9 _.,:;@/+=#%&*()<>!?-]{3,}", needle)
    hint = max(fragments, key=len) if fragments else None
    newest = app.list_jobs(limit=1, before_id=before_id)
    if not newest:
        return [], None
    top = newest[0].id + 1
    floor = max(top - (SEARCH_WINDOW if hint else SEARCH_SCAN), 0)
    found: list[Job] = []
    cursor = top
    while True:
        page = app.list_jobs(
            limit=500,
            before_id=cursor,
            after_id=floor,
            contains=hint,
            **filters,
        )
        for job in page:
            cursor = job.id
            shown = views.redacted(job)
            if needle in "\n".join(leaves([job.task, shown.args, shown.kwargs])).casefold():
                found.append(job)
                if len(found) == limit:
                    return found, job.id
        if len(page) < 500:
            return found, floor + 1 if floor > 0 else None


def job_json(job: Job, *, history: bool = False) -> dict[str, Any]:
    out = views.job_dict(job)
    out["status_message"] = views.redacted(job).status_message
    out["held_by"] = job.held_by
    if history and job.app is not None:
        out["history"] = [views.history_dict(h) for h in job.app.job_history(job.id)]
    return out


JobId = Annotated[int, Field(ge=1, le=MAX_ID)]
#: Text a store can hold: no NUL characters.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]


class ErrorBody(BaseModel):
    """Every error: one sentence, and what there is to say about it."""

    error: str
    detail: Any = None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (400, "Bad request"), (401, "No or unknown token"), (403, "The token's role may not"),
        (404, "No such job, task or path"), (409, "Not in this state"),
        (413, "Body too large"), (422, "Invalid input"), (503, "Store unreachable or busy"),
    ]
}  # fmt: skip


class BulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "cancel", "purge"]
    ids: list[JobId] = Field(min_length=1, max_length=MAX_BULK)


class GroupBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Text | None = None
    error_type: Text | None = None
    queue: Text | None = None


def bulk(app: App, action: str, ids: list[int]) -> int:
    """Retry, cancel or purge these jobs; how many it applied to."""
    if action == "retry":
        return app.retry_jobs(RETRYABLE_STATES, job_ids=ids)
    if action == "cancel":
        return app.cancel_jobs(job_ids=ids, note="cancelled over HTTP (bulk)")
    return app.purge(FINISHED_STATES, job_ids=ids)


def group_action(app: App, action: str, body: GroupBody) -> dict[str, Any]:
    """Retry or purge the dead jobs of a task and error type (or all), MAX_GROUP at most; `more`
    says whether some were left for another call."""
    done, cursor = 0, None
    for _ in range(MAX_GROUP // MAX_BULK):
        page = app.list_jobs(
            JobState.DEAD, queue=body.queue, task=body.task, error_type=body.error_type,
            limit=MAX_BULK, before_id=cursor,
        )  # fmt: skip
        if not page:
            return {"action": action, "affected": done, "more": False}
        done += bulk(app, action, [j.id for j in page])
        cursor = page[-1].id
        if len(page) < MAX_BULK:
            return {"action": action, "affected": done, "more": False}
    return {"action": action, "affected": done, "more": True}


def bar_json(bar: Bar) -> dict[str, Any]:
    return {"start": bar.start, "seconds": bar.seconds,
            **{s.value: n for s, n in bar.counts.items()}}  # fmt: skip


def parse_cursor(text: str | None) -> Cursor | None:
    """An event id as sent (`<history>.<progress>`), or None if it is not one."""
    history, sep, progress = (text or "").partition(".")
    after = as_id(history), as_id(progress)
    if not sep or after[0] is None or after[1] is None:
        return None
    return Cursor(after[0], after[1])


async def event_stream(
    app: App, job_id: int | None, queue: str | None, start: Cursor | None, poll: float = 1.0
) -> AsyncIterator[str]:
    """Server-Sent Events: each job event as `event: state|progress` with JSON data; the last
    of each batch carries the stream's position as its id, so a reconnecting EventSource
    resumes after it (`Last-Event-ID`). A comment every KEEPALIVE_S keeps idle streams open.
    It runs until the client goes (the response then cancels it)."""
    backend = app.backend
    subscription = await backend.subscribe()
    try:
        end = await backend.event_cursor()
        # a position past the end (made up, or of another store) would never see an event
        beyond = start is not None and (
            start.history > end.history or start.progress > end.progress
        )
        cursor = end if start is None or beyond else start
        yield f"retry: 2000\nid: {cursor.history}.{cursor.progress}\n\n"
        quiet = 0.0
        while True:
            found, cursor = await backend.read_events(cursor, job_id, queue)
            for n, event in enumerate(found, start=1):
                position = f"id: {cursor.history}.{cursor.progress}\n" if n == len(found) else ""
                data = json.dumps(event.to_dict())
                yield f"{position}event: {event.kind}\ndata: {data}\n\n"
            if found:
                quiet = 0.0
                continue
            await subscription.wait(poll)
            quiet += poll
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keepalive\n\n"
    finally:
        await subscription.close()


class Streams:
    """Counts the event streams open, up to MAX_STREAMS."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit, self.open = limit, 0

    def response(self, events: AsyncIterator[str]) -> StreamingResponse:
        if self.open >= self.limit:
            raise ApiError(503, "too many event streams are open; try again later",
                           {"limit": self.limit})  # fmt: skip
        self.open += 1

        async def counted() -> AsyncIterator[str]:
            try:
                async for chunk in events:
                    yield chunk
            finally:
                self.open -= 1

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(counted(), media_type="text/event-stream", headers=headers)


class NewJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Text = Field(min_length=1, max_length=255)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # strict, as the library: `true` is not a priority of 1 nor a delay of one second
    priority: StrictInt | StrictStr | None = None
    delay: StrictFloat | None = None
    queue: Text | None = None
    unique_key: Text | None = None


def conveyor_error_json(exc: ConveyorError) -> JSONResponse:
    """Any other conveyor error: a store whose schema is not current is unavailable (503);
    the rest are bad requests."""
    status = 503 if isinstance(exc, ConfigurationError) else 400
    return JSONResponse({"error": str(exc), "detail": None}, status_code=status)


def create_api(
    app: App, tokens: Tokens | None, *, dashboard: bool = True, public_url: str | None = None
) -> FastAPI:
    """The API of `app`. Without `tokens` every request is allowed (`conveyor serve` permits
    that only on a loopback address, and `Guard` only from this machine). `public_url`: the
    address browsers use (behind a proxy), for the cross-site checks and the cookies."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await app.backend.release()  # what is bound to the server's event loop

    api = GuardedAPI(
        title="conveyor", openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
        lifespan=lifespan, responses=ERRORS,
    )  # fmt: skip
    api.guard = {"max_body": MAX_BODY_BYTES, "loopback_only": tokens is None,
                 "public_url": public_url}  # fmt: skip
    stats = Stats(app)
    streams = Streams()
    throttle = Throttle()
    api.state.conveyor = app
    api.state.stats, api.state.streams, api.state.throttle = stats, streams, throttle
    api.state.public_url = public_url

    def role(needed: str) -> Callable[[Request], None]:
        def check(request: Request) -> None:
            if {"token", "access_token"} & set(request.query_params):
                raise ApiError(400, "tokens are never accepted in a query string",
                               "send Authorization: Bearer <token>")  # fmt: skip
            if tokens is None:
                return
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "this needs a bearer token", "Authorization: Bearer <token>")
            client = client_of(request)
            wait = throttle.retry_after(client)
            if wait is not None:
                raise ApiError(429, "too many unknown tokens from this address; wait",
                               {"retry_after_s": wait}, retry_after=wait)  # fmt: skip
            found = tokens.role_of(token.strip())
            if found is None:
                throttle.failed(client)
                raise ApiError(401, "unknown token")
            if needed == "admin" and found != "admin":
                raise ApiError(403, "this needs an admin token")

        return check

    read, admin = Depends(role("read")), Depends(role("admin"))

    @api.exception_handler(ApiError)
    def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status,
                            headers=exc.headers)  # fmt: skip

    @api.exception_handler(JobNotFound)
    def _not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc), "detail": None}, status_code=404)

    @api.exception_handler(InvalidTransition)
    def _conflict(request: Request, exc: InvalidTransition) -> JSONResponse:
        return JSONResponse({"error": str(exc), "detail": None}, status_code=409)

    @api.exception_handler(ValidationError)
    def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        status = 404 if isinstance(exc, UnknownTask) else 422
        return JSONResponse({"error": str(exc), "detail": None}, status_code=status)

    @api.exception_handler(ConveyorError)
    def _conveyor_error(request: Request, exc: ConveyorError) -> JSONResponse:
        return conveyor_error_json(exc)

    @api.exception_handler(BackendUnavailable)
    def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"error": "the store is unreachable", "detail": str(exc)},
                            status_code=503)  # fmt: skip

    @api.exception_handler(RequestValidationError)
    def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "detail": None},
                            status_code=exc.status_code)  # fmt: skip

    @api.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal server error", "detail": None}, status_code=500)

    @api.get("/health")
    def health() -> JSONResponse:
        """Whether the store answers, its schema is current, and how many workers are live."""
        try:
            version = app.schema_version()
            current = version == app.backend.sync.latest_version()
            live = len(app.live_workers()) if current else 0
        except BackendUnavailable as exc:
            return JSONResponse({"ok": False, "store": str(exc)}, status_code=503)
        body = {"ok": current, "store": "reachable", "schema_version": version,
                "migrations_current": current, "live_workers": live}  # fmt: skip
        return JSONResponse(body, status_code=200 if current else 503)

    @api.post("/api/jobs", status_code=201, dependencies=[admin])
    def enqueue(body: NewJobBody) -> dict[str, Any]:
        options = {
            k: v for k, v in
            {"priority": body.priority, "delay": body.delay, "queue": body.queue,
             "unique_key": body.unique_key}.items()
            if v is not None
        }  # fmt: skip
        job = app.enqueue(body.task, args=body.args, kwargs=body.kwargs, **options)
        return job_json(job)

    @api.get("/api/jobs", dependencies=[read])
    def list_jobs(
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        error_type: str | None = Query(None, max_length=255),
        search: str | None = Query(None, max_length=200),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> dict[str, Any]:
        """Newest first; `next` is the `before_id` of the next page (None: the last page).
        `search`: a job id, or text in the task name or the (redacted) arguments."""
        jobs, after = find_jobs(
            app, state=state, queue=queue, task=task, error_type=error_type, search=search,
            limit=limit, before_id=before_id,
        )  # fmt: skip
        return {"jobs": [job_json(j) for j in jobs], "next": after}

    @api.post("/api/jobs/bulk", dependencies=[admin])
    def bulk_action(body: BulkBody) -> dict[str, Any]:
        """Retry (dead or cancelled), cancel (not finished) or purge (finished) up to
        MAX_BULK jobs by id; `affected` counts those it applied to."""
        ids = list(dict.fromkeys(body.ids))
        return {"action": body.action, "requested": len(ids),
                "affected": bulk(app, body.action, ids)}  # fmt: skip

    @api.get("/api/jobs/{job_id}", dependencies=[read])
    def get_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.get_job(job_id), history=True)

    @api.post("/api/jobs/{job_id}/cancel", dependencies=[admin])
    def cancel_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.cancel_job(job_id, note="cancelled over HTTP"))

    @api.post("/api/jobs/{job_id}/retry", dependencies=[admin])
    def retry_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.retry_job(job_id))

    @api.get("/api/dlq", dependencies=[read])
    def dead_letter(
        queue: str | None = None, task: str | None = None,
        error_type: str | None = Query(None, max_length=255),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> dict[str, Any]:  # fmt: skip
        jobs, after = find_jobs(
            app, state=JobState.DEAD, queue=queue, task=task, error_type=error_type,
            limit=limit, before_id=before_id,
        )  # fmt: skip
        return {"jobs": [job_json(j) for j in jobs], "next": after}

    @api.get("/api/dlq/groups", dependencies=[read])
    def dead_groups(queue: str | None = None) -> dict[str, Any]:
        """Dead jobs counted by task and the type of their last error, biggest group first."""
        return {"groups": [dataclasses.asdict(g) for g in app.dead_groups(queue)]}

    @api.post("/api/dlq/retry", dependencies=[admin])
    def retry_dead(body: GroupBody) -> dict[str, Any]:
        """Retry the dead jobs of a task and error type (each optional: all of them)."""
        return group_action(app, "retry", body)

    @api.post("/api/dlq/purge", dependencies=[admin])
    def purge_dead(body: GroupBody) -> dict[str, Any]:
        """Delete the dead jobs of a task and error type (each optional: all of them)."""
        return group_action(app, "purge", body)

    @api.get("/api/queues", dependencies=[read])
    def queues() -> dict[str, Any]:
        """Per queue: paused, concurrency limit, jobs per state, how long the oldest queued
        job has waited, and the jobs finished in the last five minutes (a few seconds old at
        most)."""
        return stats.snapshot().queues

    @api.get("/api/overview", dependencies=[read])
    def overview() -> dict[str, Any]:
        """The queues, live workers, and jobs finished per minute (last hour) and per hour
        (last day), by state."""
        snap = stats.snapshot()
        return {
            "taken_at": snap.taken_at, "live_workers": snap.live_workers, "jobs": snap.totals,
            "queues": snap.queues,
            "last_hour": [bar_json(b) for b in snap.minutes],
            "last_day": [bar_json(b) for b in snap.hours],
        }  # fmt: skip

    @api.post("/api/queues/{name}/pause", dependencies=[admin])
    def pause(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.pause_queue(name), "paused": True}

    @api.post("/api/queues/{name}/resume", dependencies=[admin])
    def resume(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.resume_queue(name), "paused": False}

    @api.get("/api/workers", dependencies=[read])
    def workers() -> list[dict[str, Any]]:
        """Registered workers, with the age of their last heartbeat and their running jobs."""
        now, lease = app.clock.now(), app.settings.lease_seconds
        return [views.worker_dict(w, now, lease) for w in app.list_workers()]

    @api.get("/api/cron", dependencies=[read])
    def cron() -> list[dict[str, Any]]:
        now = app.clock.now()
        records = app.periodic_ticks() if app.periodics else {}
        return [views.cron_dict(e, records.get(e.name), now, app.redact)
                for e in app.periodics.values()]  # fmt: skip

    @api.get("/api/circuits", dependencies=[read])
    def circuits() -> dict[str, Any]:
        return views.circuits_dict(app.circuits, app.circuit_states(), app.circuit_log(limit=50))

    @api.post("/api/circuits/{name}/close", dependencies=[admin])
    def close_circuit(name: str) -> dict[str, Any]:
        """Close a circuit from outside (its service is back): held jobs run again at once."""
        changed = app.close_circuit(name, reason="closed over HTTP")
        return {"circuit": name, "changed": changed, "state": "closed"}

    @api.get("/api/events", dependencies=[read], response_class=StreamingResponse)
    async def events(
        request: Request, job_id: int | None = Query(None, ge=1, le=MAX_ID),
        queue: str | None = None, last_event_id: str | None = Header(None, max_length=64),
    ) -> StreamingResponse:  # fmt: skip
        """Server-Sent Events from now on (or after `Last-Event-ID`): every state change and
        progress report, of one job, one queue, or all."""
        return streams.response(event_stream(app, job_id, queue, parse_cursor(last_event_id)))

    add_metrics(api, app, read, stats)
    if dashboard:
        from conveyor.web.dashboard import create_dashboard

        create_dashboard(api, app, tokens, stats, streams, throttle, public_url)
    return api
