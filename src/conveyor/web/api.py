"""The JSON API: enqueue, inspect and steer jobs, queues, circuits over HTTP.

Every path is under `/api` except `/health`; the OpenAPI schema is at `/api/openapi.json`.
Errors are `{"error": "...", "detail": ...}` with the right 4xx status. With tokens, every
request needs `Authorization: Bearer <token>`: `read` for GETs, `admin` for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.app import App
from conveyor.cli import render
from conveyor.errors import (
    BackendUnavailable,
    InvalidTransition,
    JobNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor.job import Job, JobState
from conveyor.web.auth import Tokens

#: The most jobs one listing returns.
MAX_PAGE = 500
#: Argument keys whose values are never shown (passwords, tokens, secrets, keys).
SECRET_KEY = re.compile(r"pass|secret|token|api_?key|auth|credential", re.IGNORECASE)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def redact(value: Any) -> Any:
    """Arguments as shown over HTTP: values under secret-looking keys replaced."""
    if isinstance(value, Mapping):
        return {k: "***" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def job_json(job: Job, *, history: bool = False) -> dict[str, Any]:
    out = render.job_dict(job)
    out["args"], out["kwargs"], out["meta"] = (
        redact(job.args), redact(job.kwargs), redact(job.meta)
    )  # fmt: skip
    out["status_message"] = job.status_message
    out["held_by"] = job.held_by
    if history and job.app is not None:
        out["history"] = [render.history_dict(h) for h in job.app.job_history(job.id)]
    return out


class NewJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=255)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    priority: int | str | None = None
    delay: float | None = None
    queue: str | None = None
    unique_key: str | None = None


def create_api(app: App, tokens: Tokens | None) -> FastAPI:
    """The API of `app`. Without `tokens` every request is allowed (`conveyor serve` permits
    that only on a loopback address)."""
    api = FastAPI(
        title="conveyor", openapi_url="/api/openapi.json", docs_url="/api/docs",
        redoc_url=None,
    )  # fmt: skip

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
            found = tokens.role_of(token.strip())
            if found is None:
                raise ApiError(401, "unknown token")
            if needed == "admin" and found != "admin":
                raise ApiError(403, "this needs an admin token")

        return check

    read, admin = Depends(role("read")), Depends(role("admin"))

    @api.exception_handler(ApiError)
    def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

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

    @api.get("/health")
    def health() -> JSONResponse:
        """Whether the store answers, its schema is current, and how many workers are live."""
        try:
            version = app.schema_version()
            current = version == app.backend.sync.latest_version()
            workers = app.list_workers() if current else []
        except BackendUnavailable as exc:
            return JSONResponse({"ok": False, "store": str(exc)}, status_code=503)
        now, lease = app.clock.now(), app.settings.lease_seconds
        live = sum(1 for w in workers if not w.is_lost(now, lease))
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
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before_id: int | None = Query(None, ge=1),
    ) -> dict[str, Any]:
        """Newest first; `next` is the `before_id` of the next page (None: the last page)."""
        jobs = app.list_jobs(state=state, queue=queue, task=task, limit=limit,
                             before_id=before_id)  # fmt: skip
        return {"jobs": [job_json(j) for j in jobs],
                "next": jobs[-1].id if len(jobs) == limit else None}  # fmt: skip

    @api.get("/api/jobs/{job_id}", dependencies=[read])
    def get_job(job_id: int) -> dict[str, Any]:
        return job_json(app.get_job(job_id), history=True)

    @api.post("/api/jobs/{job_id}/cancel", dependencies=[admin])
    def cancel_job(job_id: int) -> dict[str, Any]:
        return job_json(app.cancel_job(job_id, note="cancelled over HTTP"))

    @api.post("/api/jobs/{job_id}/retry", dependencies=[admin])
    def retry_job(job_id: int) -> dict[str, Any]:
        return job_json(app.retry_job(job_id))

    @api.get("/api/dlq", dependencies=[read])
    def dead_letter(
        queue: str | None = None, task: str | None = None,
        limit: int = Query(50, ge=1, le=MAX_PAGE), before_id: int | None = Query(None, ge=1),
    ) -> dict[str, Any]:  # fmt: skip
        jobs = app.list_jobs(state=JobState.DEAD, queue=queue, task=task, limit=limit,
                             before_id=before_id)  # fmt: skip
        return {"jobs": [job_json(j) for j in jobs],
                "next": jobs[-1].id if len(jobs) == limit else None}  # fmt: skip

    @api.get("/api/queues", dependencies=[read])
    def queues() -> dict[str, Any]:
        return render.queues_dict(app.queue_stats(), app.paused_queues(), app.queue_limits())

    @api.post("/api/queues/{name}/pause", dependencies=[admin])
    def pause(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.pause_queue(name), "paused": True}

    @api.post("/api/queues/{name}/resume", dependencies=[admin])
    def resume(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.resume_queue(name), "paused": False}

    @api.get("/api/workers", dependencies=[read])
    def workers() -> list[dict[str, Any]]:
        now, lease = app.clock.now(), app.settings.lease_seconds
        return [render.worker_dict(w, now, lease) for w in app.list_workers()]

    @api.get("/api/cron", dependencies=[read])
    def cron() -> list[dict[str, Any]]:
        now = app.clock.now()
        records = app.periodic_ticks() if app.periodics else {}
        return [render.cron_dict(e, records.get(e.name), now) for e in app.periodics.values()]

    @api.get("/api/circuits", dependencies=[read])
    def circuits() -> dict[str, Any]:
        return render.circuits_dict(app.circuits, app.circuit_states(), app.circuit_log(limit=50))

    @api.post("/api/circuits/{name}/close", dependencies=[admin])
    def close_circuit(name: str) -> dict[str, Any]:
        """Close a circuit from outside (its service is back): held jobs run again at once."""
        changed = app.close_circuit(name, reason="closed over HTTP")
        return {"circuit": name, "changed": changed, "state": "closed"}

    return api
