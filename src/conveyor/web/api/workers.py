"""`GET /api/workers`: the registered workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conveyor import views
from conveyor.web.common import Shared


def router(shared: Shared) -> APIRouter:
    app = shared.app
    routes = APIRouter()

    @routes.get("/api/workers", dependencies=[shared.read])
    def workers() -> list[dict[str, Any]]:
        """Registered workers, with the age of their last heartbeat and their running jobs."""
        now, lease = app.clock.now(), app.settings.lease_seconds
        return [views.worker_dict(w, now, lease) for w in app.list_workers()]

    return routes
