"""Every dashboard page on a real store, as HTML: what each shows, the actions of the cron,
circuits and workers pages, the day of throughput read in the background, and a search that
goes on below its window."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import conveyor
from conveyor import JobState
from conveyor.circuit import Action, CircuitState
from conveyor.web import common as web_common
from conveyor.web import create_api

#: A test client on this machine (a server without tokens answers no other).
LOOPBACK = ("127.0.0.1", 50000)

LOCAL = "http://127.0.0.1:8000"


@pytest.fixture
def tasks(app: conveyor.App) -> conveyor.App:
    render = app.circuit("render-worker", failure_threshold=1)

    @app.task(name="add")
    def add(a: Any, b: Any) -> Any:
        return a + b

    @app.task(name="fail", max_attempts=1)
    def fail() -> None:
        raise TimeoutError("the gateway did not answer")

    @app.task(name="render", circuit=render)
    def render_page(page: int) -> None: ...

    @app.periodic("*/5 * * * *", name="nightly-report", kwargs={"api_key": "SECRET"})
    def report(api_key: str) -> None: ...

    return app


@pytest.fixture
def client(tasks: conveyor.App) -> Iterator[TestClient]:
    with TestClient(create_api(tasks, None), base_url=LOCAL, client=LOOPBACK) as found:
        yield found


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "the page has no form"
    return found.group(1)


def test_every_page_shows_what_the_store_holds(client: TestClient, tasks: conveyor.App) -> None:
    done = tasks.tasks["add"].enqueue(2, 3)
    dead = tasks.tasks["fail"].enqueue()
    tasks.run_worker(burst=True)
    held = tasks.tasks["render"].enqueue(7)
    tasks.backend.sync.change_circuit(
        "render-worker", Action.FAILURE, tasks.clock.now(), threshold=1, reason="refused"
    )
    pages = {
        "/": ["Overview", "Finished, last hour", "default", "No worker is running"],
        "/queues": ["Pause", "default"],
        "/jobs": [f'href="/jobs/{done.id}"', f'href="/jobs/{dead.id}"', "Jobs"],
        f"/jobs/{done.id}": ["succeeded", '<pre class="json">5</pre>', "History"],
        f"/jobs/{held.id}": ["Queued — will run when render-worker is back", "render-worker"],
        "/dlq": ["TimeoutError", "the gateway did not answer", "Retry 1"],
        "/workers": ["No worker is registered"],
        "/cron": ["nightly-report", "*/5 * * * *"],
        "/circuits": ["render-worker", "open", "refused", "Close"],
        "/jobs/99999": ["There is no job 99999"],
    }
    for path, wanted in pages.items():
        answer = client.get(path)
        assert answer.status_code == (404 if path == "/jobs/99999" else 200), path
        for text in wanted:
            assert text in answer.text, (path, text)
    assert "SECRET" not in client.get("/api/cron").text


def test_a_circuit_is_closed_from_its_page(client: TestClient, tasks: conveyor.App) -> None:
    tasks.backend.sync.change_circuit(
        "render-worker", Action.FAILURE, tasks.clock.now(), threshold=1, reason="refused"
    )
    page = client.get("/circuits")
    closed = client.post(
        "/circuits/render-worker/close", data={"csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert (closed.status_code, closed.headers["location"]) == (303, "/circuits")
    assert tasks.circuit_states()[0].state is CircuitState.CLOSED
    assert tasks.circuit_log("render-worker")[0].reason == "closed from the dashboard"
    assert "Circuit render-worker closed." in client.get("/circuits").text


async def test_workers_show_their_heartbeat_and_running_jobs(
    client: TestClient, tasks: conveyor.App
) -> None:
    release = asyncio.Event()

    @tasks.task(name="hold", queue="slow")
    async def hold() -> None:
        await release.wait()

    job = hold.enqueue()
    worker = conveyor.Worker(tasks, queues=["slow"])
    run = asyncio.create_task(worker.run_async())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    try:
        while True:  # requests block: in a thread, so the worker runs on this loop meanwhile
            shown = (await asyncio.to_thread(client.get, "/api/workers")).json()
            if shown and shown[0]["running"] == [job.id]:
                break
            assert loop.time() < deadline, f"the worker never showed its job: {shown}"
            await asyncio.sleep(0.05)
        [found] = shown
        assert found["id"] == worker.id and found["lost"] is False
        assert 0 <= found["heartbeat_age"] < tasks.settings.lease_seconds
        html = (await asyncio.to_thread(client.get, "/workers")).text
        assert worker.id in html and f'href="/jobs/{job.id}"' in html
    finally:
        release.set()
        worker.stop()
        await run


def test_the_day_of_throughput_is_read_in_the_background(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    add.enqueue_many([(i, i) for i in range(3)])
    app.run_worker(burst=True)
    clock.advance(5 * 3600)  # those jobs finished five hours ago
    add.enqueue(1, 1)
    app.run_worker(burst=True)
    api = create_api(app, None)
    assert isinstance(api, FastAPI)
    with TestClient(api, base_url=LOCAL, client=LOOPBACK) as client:
        for _ in range(200):
            api.state.stats.forget()
            shown = client.get("/api/overview").json()
            if sum(b["succeeded"] for b in shown["last_day"]) == 4:
                break
            time.sleep(0.05)  # the day is read in a thread of its own
        assert sum(b["succeeded"] for b in shown["last_day"]) == 4
        assert sum(b["succeeded"] for b in shown["last_hour"]) == 1
        assert api.state.stats.snapshot().day_complete


def test_a_search_goes_on_below_its_window(
    client: TestClient, tasks: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_common, "SEARCH_WINDOW", 3)
    wanted = [tasks.tasks["add"].enqueue("needle", i).id for i in range(2)]
    for i in range(4):
        tasks.tasks["add"].enqueue("hay", i)
    found, cursor = [], None
    for _ in range(5):
        params: dict[str, Any] = {"search": "needle", **({"before_id": cursor} if cursor else {})}
        page = client.get("/api/jobs", params=params).json()
        found += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert found == sorted(wanted, reverse=True)
    assert cursor is None
    assert [j.state for j in tasks.list_jobs()] == [JobState.QUEUED] * 6
