"""`GET /api/events`: every state change and progress report as Server-Sent Events, resumable
by `Last-Event-ID`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from conveyor.app import App
from conveyor.events import Cursor
from conveyor.web.common import MAX_ID, Shared

#: An idle event stream sends a comment this often, so proxies keep it open.
KEEPALIVE_S = 15.0


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
        # from where the client left off, or (a position not of this stream) from now
        cursor = await backend.event_cursor(start)
        yield f"retry: 2000\nid: {cursor}\n\n"
        quiet = 0.0
        while True:
            found, cursor = await backend.read_events(cursor, job_id, queue)
            for n, event in enumerate(found, start=1):
                position = f"id: {cursor}\n" if n == len(found) else ""
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


def router(shared: Shared) -> APIRouter:
    app, streams = shared.app, shared.streams
    routes = APIRouter()

    @routes.get("/api/events", dependencies=[shared.read], response_class=StreamingResponse)
    async def events(
        request: Request,
        job_id: int | None = Query(None, ge=1, le=MAX_ID),
        queue: str | None = None,
        last_event_id: str | None = Header(None, max_length=64),
    ) -> StreamingResponse:
        """Server-Sent Events from now on (or after `Last-Event-ID`): every state change and
        progress report, of one job, one queue, or all."""
        return streams.response(event_stream(app, job_id, queue, Cursor.parse(last_event_id)))

    return routes
