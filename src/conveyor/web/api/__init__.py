"""The JSON API: enqueue, inspect and steer jobs, queues, circuits over HTTP.

Every path is under `/api` except `/health`; the OpenAPI schema is at `/api/openapi.json`.
Errors are `{"error": "...", "detail": ...}` with the right 4xx status. With tokens, every
request needs `Authorization: Bearer <token>`: `read` for GETs, `admin` for the rest.

A router per area: `health`, `jobs` (and the dead-letter queue), `queues` (and the overview),
`workers`, `cron`, `circuits`, `events` (Server-Sent Events).
"""

from __future__ import annotations

from fastapi import APIRouter

from conveyor.web.api import circuits, cron, events, health, jobs, queues, workers
from conveyor.web.common import Shared


def routers(shared: Shared) -> list[APIRouter]:
    """The API's routers, in the order their paths are matched and documented."""
    return [
        health.router(shared),
        jobs.router(shared),
        queues.router(shared),
        workers.router(shared),
        cron.router(shared),
        circuits.router(shared),
        events.router(shared),
    ]
