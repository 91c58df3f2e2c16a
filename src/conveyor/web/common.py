"""What the API's routers and the dashboard share: limits, errors, the auth dependencies, request
parsing, finding and steering jobs, and the count of open event streams.

`Shared` holds what one `create_api` made for all its routers: the App, its tokens, the overview
snapshot, the event streams and the throttle of unknown tokens.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from conveyor import views
from conveyor.app import App
from conveyor.errors import ConfigurationError, ConveyorError, JobNotFound
from conveyor.job import FINISHED_STATES, RETRYABLE_STATES, Job, JobState
from conveyor.web.auth import Throttle, Tokens
from conveyor.web.stats import Stats

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

#: Text a store can hold: no NUL characters.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, detail: Any = None, retry_after: int | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = {} if retry_after is None else {"Retry-After": str(retry_after)}


def conveyor_error_json(exc: ConveyorError) -> JSONResponse:
    """Any other conveyor error: a store whose schema is not current is unavailable (503);
    the rest are bad requests."""
    status = 503 if isinstance(exc, ConfigurationError) else 400
    return JSONResponse({"error": str(exc), "detail": None}, status_code=status)


def client_of(request: Request) -> str:
    """The client's address (a trusted proxy's `X-Forwarded-For` already applied)."""
    return request.client.host if request.client is not None else "-"


def as_id(text: str) -> int | None:
    """A job id written in ASCII digits, or None."""
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
        return None
    return int(text)


class Streams:
    """Counts the event streams open, up to MAX_STREAMS."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit, self.open = limit, 0

    def response(self, events: AsyncIterator[str]) -> StreamingResponse:
        if self.open >= self.limit:
            raise ApiError(
                503, "too many event streams are open; try again later", {"limit": self.limit}
            )
        self.open += 1

        async def counted() -> AsyncIterator[str]:
            try:
                async for chunk in events:
                    yield chunk
            finally:
                self.open -= 1

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(counted(), media_type="text/event-stream", headers=headers)


class Shared:
    """What every router of one API uses: the App, its tokens (None: every request is allowed),
    the overview snapshot, the open event streams, the throttle of unknown tokens, the public
    URL; and `read` and `admin`, the dependencies that check a request's bearer token."""

    def __init__(self, app: App, tokens: Tokens | None, public_url: str | None) -> None:
        self.app, self.tokens, self.public_url = app, tokens, public_url
        self.stats = Stats(app)
        self.streams = Streams()
        self.throttle = Throttle()
        self.read: params.Depends = Depends(self.role("read"))
        self.admin: params.Depends = Depends(self.role("admin"))

    def role(self, needed: str) -> Callable[[Request], None]:
        tokens, throttle = self.tokens, self.throttle

        def check(request: Request) -> None:
            if {"token", "access_token"} & set(request.query_params):
                raise ApiError(
                    400,
                    "tokens are never accepted in a query string",
                    "send Authorization: Bearer <token>",
                )
            if tokens is None:
                return
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "this needs a bearer token", "Authorization: Bearer <token>")
            client = client_of(request)
            wait = throttle.retry_after(client)
            if wait is not None:
                raise ApiError(
                    429,
                    "too many unknown tokens from this address; wait",
                    {"retry_after_s": wait},
                    retry_after=wait,
                )
            found = tokens.role_of(token.strip())
            if found is None:
                throttle.failed(client)
                raise ApiError(401, "unknown token")
            if needed == "admin" and found != "admin":
                raise ApiError(403, "this needs an admin token")

        return check


# -- finding and steering jobs ------------------------------------------------------------


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
    app: App,
    *,
    state: JobState | None = None,
    queue: str | None = None,
    task: str | None = None,
    error_type: str | None = None,
    search: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[Job], int | None]:
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
            state in (None, job.state)
            and queue in (None, job.queue)
            and task in (None, job.task)
            and error_type in (None, last)
        )
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
            JobState.DEAD,
            queue=body.queue,
            task=body.task,
            error_type=body.error_type,
            limit=MAX_BULK,
            before_id=cursor,
        )
        if not page:
            return {"action": action, "affected": done, "more": False}
        done += bulk(app, action, [j.id for j in page])
        cursor = page[-1].id
        if len(page) < MAX_BULK:
            return {"action": action, "affected": done, "more": False}
    return {"action": action, "affected": done, "more": True}
