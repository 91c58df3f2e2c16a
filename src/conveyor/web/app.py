"""`create_api`: the HTTP application of an App, assembled from the API's routers
(`conveyor.web.api`), the metrics and the dashboard, under `Guard`, with the JSON error shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.app import App
from conveyor.errors import (
    BackendUnavailable,
    ConveyorError,
    InvalidTransition,
    JobNotFound,
    UnknownTask,
    ValidationError,
)
from conveyor.web import api as json_api
from conveyor.web import metrics
from conveyor.web.auth import Tokens
from conveyor.web.common import ApiError, Shared, conveyor_error_json
from conveyor.web.dashboard import create_dashboard
from conveyor.web.guard import MAX_BODY_BYTES, GuardedAPI


class ErrorBody(BaseModel):
    """Every error: one sentence, and what there is to say about it."""

    error: str
    detail: Any = None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (400, "Bad request"),
        (401, "No or unknown token"),
        (403, "The token's role may not"),
        (404, "No such job, task or path"),
        (409, "Not in this state"),
        (413, "Body too large"),
        (422, "Invalid input"),
        (503, "Store unreachable or busy"),
    ]
}


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
        title="conveyor",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        responses=ERRORS,
    )
    api.guard = {
        "max_body": MAX_BODY_BYTES,
        "loopback_only": tokens is None,
        "public_url": public_url,
    }
    shared = Shared(app, tokens, public_url)
    api.state.conveyor = app
    api.state.stats, api.state.streams = shared.stats, shared.streams
    api.state.throttle, api.state.public_url = shared.throttle, public_url
    add_error_handlers(api)
    for router in json_api.routers(shared):
        api.include_router(router)
    api.include_router(metrics.router(shared))
    if dashboard:
        # its error pages take over from the JSON errors but on the API's paths
        create_dashboard(api, shared)
    return api


def add_error_handlers(api: FastAPI) -> None:
    """Every error as `{"error": "...", "detail": ...}` with its status."""

    @api.exception_handler(ApiError)
    def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.error, "detail": exc.detail}, status_code=exc.status, headers=exc.headers
        )

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
        return JSONResponse(
            {"error": "the store is unreachable", "detail": str(exc)}, status_code=503
        )

    @api.exception_handler(RequestValidationError)
    def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "detail": None}, status_code=exc.status_code)

    @api.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal server error", "detail": None}, status_code=500)
