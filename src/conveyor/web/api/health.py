"""`GET /health`: whether the store answers, for load balancers and probes (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from conveyor.errors import BackendUnavailable
from conveyor.web.common import Shared


def router(shared: Shared) -> APIRouter:
    app = shared.app
    routes = APIRouter()

    @routes.get("/health")
    def health() -> JSONResponse:
        """Whether the store answers, its schema is current, and how many workers are live."""
        try:
            version = app.schema_version()
            current = version == app.backend.sync.latest_version()
            live = len(app.live_workers()) if current else 0
        except BackendUnavailable as exc:
            return JSONResponse({"ok": False, "store": str(exc)}, status_code=503)
        body = {
            "ok": current,
            "store": "reachable",
            "schema_version": version,
            "migrations_current": current,
            "live_workers": live,
        }
        return JSONResponse(body, status_code=200 if current else 503)

    return routes
