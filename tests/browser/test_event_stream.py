"""`GET /api/events` over a real server: Server-Sent Events of one queue as its jobs move,
resumed with Last-Event-ID, behind a token, and limited in number."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

import conveyor
from conveyor.web import Tokens, create_api

from .conftest import Serve

READER = "read-token-0123456789abcdef"
TOKENS = Tokens.parse(f"admin:admin-token-0123456789abcdef,read:{READER}")
HEADERS = {"Authorization": f"Bearer {READER}"}


def messages(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Each SSE message as `{"id", "event", "data"}` (fields it lacks left out)."""
    message: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if message:
                yield message
            message = {}
            continue
        field, _, value = line.partition(": ")
        if field in ("id", "event"):
            message[field] = value
        elif field == "data":
            message["data"] = json.loads(value)


def events_until(
    stream: Iterator[dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict[str, Any]], str | None]:
    seen, last_id = [], None
    for message in stream:
        last_id = message.get("id", last_id)
        if "event" in message:
            seen.append(message["data"])
            if done(message["data"]):
                break
    return seen, last_id


def test_a_queue_s_events_stream_live_and_resume(
    make_app: Callable[..., conveyor.App], serve: Serve
) -> None:
    app = make_app()

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    worker = make_app()  # the server's App stays on the server's event loop
    worker.tasks.update(app.tasks)
    base = serve(create_api(app, TOKENS))
    assert httpx.get(f"{base}/api/events").status_code == 401
    timeout = httpx.Timeout(10.0)
    with httpx.stream(
        "GET", f"{base}/api/events", params={"queue": "mail"}, headers=HEADERS, timeout=timeout
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = messages(response.iter_lines())
        start = next(stream)["id"]
        job = add.configure(queue="mail").enqueue(1, 2)
        add.enqueue(3, 4)  # another queue: not in this stream
        worker.run_worker(burst=True)
        seen, last_id = events_until(stream, lambda e: e.get("state") == "succeeded")
    assert [(e["job_id"], e["state"]) for e in seen] == [
        (job.id, "queued"),
        (job.id, "running"),
        (job.id, "succeeded"),
    ]
    assert seen[-1]["run_time"] >= 0 and seen[-1]["queue"] == "mail"
    assert last_id is not None and last_id != start

    # a client that lost the stream gets what it missed, from where it was
    resumed_headers = {**HEADERS, "Last-Event-ID": start}
    with httpx.stream(
        "GET",
        f"{base}/api/events",
        params={"job_id": job.id},
        headers=resumed_headers,
        timeout=timeout,
    ) as response:
        again, _ = events_until(
            messages(response.iter_lines()), lambda e: e.get("state") == "succeeded"
        )
    assert [e["state"] for e in again] == ["queued", "running", "succeeded"]


def test_event_streams_are_limited(make_app: Callable[..., conveyor.App], serve: Serve) -> None:
    api = create_api(make_app(), None)
    api.state.streams.limit = 1
    base = serve(api)
    with httpx.stream("GET", f"{base}/api/events", timeout=10.0) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # held: a dropped iterator closes the stream
        assert next(lines) == "retry: 2000"
        second = httpx.get(f"{base}/api/events", timeout=10.0)
        assert second.status_code == 503
        assert second.json()["error"] == "too many event streams are open; try again later"
    assert api.state.streams.open <= 1
