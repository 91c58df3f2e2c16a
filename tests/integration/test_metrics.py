"""`GET /metrics` on a real store: Prometheus text with jobs per state now, jobs finished since
the server started by state, wait and run time histograms; behind the read role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import conveyor
from conveyor.circuit import Action
from conveyor.web import Tokens, create_api

#: A test client on this machine (a server without tokens answers no other).
LOOPBACK = ("127.0.0.1", 50000)

ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = f"admin:{ADMIN},read:{READER}"
NAP_S = 0.2

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tasks(app: conveyor.App) -> conveyor.App:
    app.circuit("render-worker", failure_threshold=1)

    @app.task(name="add", queue="math")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="nap", queue="math")
    def nap() -> None:
        time.sleep(NAP_S)

    @app.task(name="explode", max_attempts=1)
    def explode() -> None:
        raise ValueError("boom")

    return app


@pytest.fixture
def client(tasks: conveyor.App) -> Iterator[TestClient]:
    with TestClient(create_api(tasks, Tokens.parse(TOKENS))) as found:
        yield found


def scrape(client: TestClient) -> Samples:
    api = client.app
    assert isinstance(api, FastAPI)
    api.state.stats.forget()  # gauges come from a snapshot up to 2 s old: take it now
    answer = client.get("/metrics", headers=bearer(READER))
    assert answer.status_code == 200, answer.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_jobs_per_queue_and_state_now(client: TestClient, tasks: conveyor.App) -> None:
    for n in range(3):
        tasks.tasks["add"].enqueue(n, n)
    tasks.tasks["explode"].enqueue()
    tasks.tasks["explode"].configure(delay=3600).enqueue()
    samples = scrape(client)
    jobs = {
        (labels["queue"], labels["state"]): v
        for (name, label_set), v in samples.items()
        if name == "conveyor_jobs" and v
        for labels in [dict(label_set)]
    }
    assert jobs == {("math", "queued"): 3, ("default", "queued"): 1, ("default", "scheduled"): 1}
    assert value(samples, "conveyor_jobs", queue="math", state="dead") == 0
    assert value(samples, "conveyor_workers") == 0
    assert value(samples, "conveyor_circuit_open", circuit="render-worker") == 0

    tasks.backend.sync.change_circuit(
        "render-worker", Action.FAILURE, tasks.clock.now(), threshold=1, reason="refused"
    )
    tasks.run_worker(burst=True)
    tasks.purge()  # every job gone: the queues stay, at zero
    samples = scrape(client)
    assert value(samples, "conveyor_circuit_open", circuit="render-worker") == 1
    assert value(samples, "conveyor_jobs", queue="math", state="queued") == 0
    assert value(samples, "conveyor_jobs", queue="default", state="scheduled") == 1


def test_finished_jobs_are_counted_with_their_wait_and_run_time(
    tasks: conveyor.App,
) -> None:
    tasks.tasks["add"].enqueue(0, 0)
    tasks.run_worker(burst=True)  # before the server started: not counted
    with TestClient(create_api(tasks, Tokens.parse(TOKENS))) as client:
        before = scrape(client)
        assert value(before, "conveyor_jobs", queue="math", state="succeeded") == 1
        assert (
            value(
                before, "conveyor_jobs_finished_total", queue="math", task="add", state="succeeded"
            )
            is None
        )

        for n in range(3):
            tasks.tasks["add"].enqueue(n, n)
        naps = [tasks.tasks["nap"].enqueue() for _ in range(2)]
        for _ in range(2):
            tasks.tasks["explode"].enqueue()
        tasks.tasks["add"].enqueue(9, 9).cancel()
        tasks.run_worker(burst=True)
        assert all(tasks.get_job(j.id).state is conveyor.JobState.SUCCEEDED for j in naps)
        after = scrape(client)

        def finished(queue: str, task: str, state: str) -> float | None:
            return value(after, "conveyor_jobs_finished_total", queue=queue, task=task, state=state)

        assert finished("math", "add", "succeeded") == 3
        assert finished("math", "nap", "succeeded") == 2
        assert finished("default", "explode", "dead") == 2
        assert finished("math", "add", "cancelled") == 1  # never ran: no wait, no run time
        for metric in ("conveyor_job_queue_wait_seconds", "conveyor_job_run_seconds"):
            counts = {
                (dict(labels)["queue"], dict(labels)["task"]): v
                for (name, labels), v in after.items()
                if name == f"{metric}_count"
            }
            assert counts == {("math", "add"): 3, ("math", "nap"): 2, ("default", "explode"): 2}
            assert value(after, f"{metric}_bucket", queue="math", task="nap", le="+Inf") == 2
        naps_ran = value(after, "conveyor_job_run_seconds_sum", queue="math", task="nap")
        assert naps_ran is not None and 2 * NAP_S <= naps_ran < 30
        assert (
            value(after, "conveyor_job_run_seconds_bucket", queue="math", task="nap", le="0.1") == 0
        )

        again = scrape(client)  # nothing new happened: nothing counted twice
        finished_now = {k: v for k, v in again.items() if k[0].startswith("conveyor_job")}
        assert finished_now == {k: v for k, v in after.items() if k[0].startswith("conveyor_job")}


async def test_live_workers_are_counted(client: TestClient, tasks: conveyor.App) -> None:
    worker = conveyor.Worker(tasks, queues=["math"])
    run = asyncio.create_task(worker.run_async())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    try:
        # scrapes block: in a thread, so the worker goes on running on this loop
        while value(await asyncio.to_thread(scrape, client), "conveyor_workers") != 1:
            assert loop.time() < deadline, "the worker never showed up"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await run
    assert value(await asyncio.to_thread(scrape, client), "conveyor_workers") == 0


def test_metrics_need_a_read_token_and_use_a_registry_of_their_own(
    client: TestClient, tasks: conveyor.App
) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("x" * 30)).status_code == 401
    for token in (READER, ADMIN):
        answer = client.get("/metrics", headers=bearer(token))
        assert answer.status_code == 200
        assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
        assert {f.name for f in text_string_to_metric_families(answer.text)} >= {
            "conveyor_jobs_finished",
            "conveyor_job_queue_wait_seconds",
            "conveyor_job_run_seconds",
            "conveyor_jobs",
            "conveyor_workers",
            "conveyor_circuit_open",
        }
    # a second API of the same app in the same process: no clash, and nothing global
    with TestClient(
        create_api(tasks, None), base_url="http://127.0.0.1", client=LOOPBACK
    ) as second:
        assert second.get("/metrics").status_code == 200
    assert not [m for m in REGISTRY.collect() if m.name.startswith("conveyor_")]
    assert "/metrics" not in client.get("/api/openapi.json").json()["paths"]
