"""`GET /api/cron`: the app's periodic jobs, their next tick and what they last fired."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conveyor import views
from conveyor.web.common import Shared


def router(shared: Shared) -> APIRouter:
    app = shared.app
    routes = APIRouter()

    @routes.get("/api/cron", dependencies=[shared.read])
    def cron() -> list[dict[str, Any]]:
        now = app.clock.now()
        records = app.periodic_ticks() if app.periodics else {}
        return [
            views.cron_dict(e, records.get(e.name), now, app.redact) for e in app.periodics.values()
        ]

    return routes
