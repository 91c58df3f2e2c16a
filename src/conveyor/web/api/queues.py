"""Queues over HTTP: counts per queue and state, the overview with its throughput, pause and
resume."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from conveyor.web.common import Shared
from conveyor.web.stats import Bar


def bar_json(bar: Bar) -> dict[str, Any]:
    return {
        "start": bar.start,
        "seconds": bar.seconds,
        **{s.value: n for s, n in bar.counts.items()},
    }


def router(shared: Shared) -> APIRouter:
    app, stats, read, admin = shared.app, shared.stats, shared.read, shared.admin
    routes = APIRouter()

    @routes.get("/api/queues", dependencies=[read])
    def queues() -> dict[str, Any]:
        """Per queue: paused, concurrency limit, jobs per state, how long the oldest queued
        job has waited, and the jobs finished in the last five minutes (a few seconds old at
        most)."""
        return stats.snapshot().queues

    @routes.get("/api/overview", dependencies=[read])
    def overview() -> dict[str, Any]:
        """The queues, live workers, and jobs finished per minute (last hour) and per hour
        (last day), by state."""
        snap = stats.snapshot()
        return {
            "taken_at": snap.taken_at,
            "live_workers": snap.live_workers,
            "jobs": snap.totals,
            "queues": snap.queues,
            "last_hour": [bar_json(b) for b in snap.minutes],
            "last_day": [bar_json(b) for b in snap.hours],
        }

    @routes.post("/api/queues/{name}/pause", dependencies=[admin])
    def pause(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.pause_queue(name), "paused": True}

    @routes.post("/api/queues/{name}/resume", dependencies=[admin])
    def resume(name: str) -> dict[str, Any]:
        return {"queue": name, "changed": app.resume_queue(name), "paused": False}

    return routes
