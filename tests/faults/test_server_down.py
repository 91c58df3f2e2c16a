"""The PostgreSQL server is down (stopped on the suite's throwaway cluster): enqueue gives up
promptly with BackendUnavailable and stores nothing, works again as soon as the server is back,
and a worker started while the server is down waits for it instead of exiting, then drains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from acceptance.conftest import wait_until

from .cluster import Cluster
from .harness import Scenario

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

#: "Promptly": the test process's connect timeout (2 s, see conftest), and a little for the rest.
PROMPT_S = 2.0 + 1.5
#: How long the server stays down while a worker waits for it (several of its back-offs).
DOWN_S = 6.0
#: A worker started during the outage: nothing runs before the server is back, so nothing is a
#: victim; the drain afterwards has no bound but the drain's own deadline.
NO_VICTIM_SLACK_S = 0.0


def cluster_of(scenario: Scenario) -> Cluster:
    assert scenario.cluster is not None
    return scenario.cluster


def refused_promptly(what: str, call: Callable[[], Any]) -> conveyor.BackendUnavailable:
    started = time.monotonic()
    with pytest.raises(conveyor.BackendUnavailable) as caught:
        call()
    took = time.monotonic() - started
    assert took <= PROMPT_S, f"{what} took {took:.1f}s to give up"
    assert "PostgreSQL" in str(caught.value), caught.value
    return caught.value


def stored_ids(scenario: Scenario) -> list[int]:
    return sorted(j.id for j in scenario.app.list_jobs(limit=1000))


def test_enqueue_while_the_server_is_down_raises_backend_unavailable(scenario: Scenario) -> None:
    tasks = scenario.open()
    before = tasks.work.enqueue(0)  # the pool holds live connections when the server goes
    fresh = conveyor.App(scenario.project.url, postgres_schema=scenario.schema, connect_timeout=2)
    fresh.task(name="work")(lambda n, ms=0: n)  # an App whose first use is during the outage
    cluster = cluster_of(scenario)

    cluster.stop()
    try:
        refused_promptly("enqueue on a broken connection", lambda: tasks.work.enqueue(1))
        many = [(n,) for n in range(1000)]
        refused_promptly("enqueue_many", lambda: tasks.work.enqueue_many(many))
        refused_promptly("enqueue_async", lambda: asyncio.run(tasks.work.enqueue_async(3)))
        refused_promptly("a fresh App's first enqueue", lambda: fresh.enqueue("work", args=[4]))
    finally:
        cluster.start()

    def enqueue_after() -> conveyor.Job | None:
        try:
            job: conveyor.Job = tasks.work.enqueue(5)
        except conveyor.BackendUnavailable:
            return None
        return job

    after = wait_until(enqueue_after, "enqueue to work again", 30)
    assert stored_ids(scenario) == [before.id, after.id]  # nothing of the outage was stored
    assert fresh.enqueue("work", args=[6]).refresh().state is conveyor.JobState.QUEUED
    fresh.close()
    scenario.conclude(jobs=3, faults=1)


def test_enqueue_works_as_soon_as_the_server_is_back(scenario: Scenario) -> None:
    """An application that keeps trying through an outage of some eight seconds: the first
    enqueue after the server accepts connections again works, within its connect timeout (no
    pool waiting out a back-off that grew with the outage)."""
    tasks = scenario.open()
    before = tasks.work.enqueue(0)
    cluster = cluster_of(scenario)
    cluster.stop()
    try:
        outage_began = time.monotonic()
        while time.monotonic() < outage_began + 7.5:
            refused_promptly("enqueue with no server", lambda: tasks.work.enqueue(1))
    finally:
        cluster.start()
    started = time.monotonic()
    after = tasks.work.enqueue(2)
    took = time.monotonic() - started
    assert took <= PROMPT_S, f"enqueue took {took:.1f}s"
    assert stored_ids(scenario) == [before.id, after.id]
    scenario.conclude(jobs=2, faults=1, first_enqueue_after_s=round(took, 3))


def test_a_worker_started_while_the_server_is_down_waits_for_it(scenario: Scenario) -> None:
    scenario.open()
    scenario.enqueue(500, task="work")
    cluster = cluster_of(scenario)
    cluster.stop()
    try:
        worker = scenario.start_worker()
        worker.wait_for_event("worker.store_failed", timeout=30)
        time.sleep(DOWN_S)
        scenario.expect_alive([worker], "while the server was down")
        assert not worker.events("worker.started"), "it started without a store"
    finally:
        cluster.start()
    worker.wait_for_event("worker.store_recovered", timeout=30)
    worker.wait_for_event("worker.started", timeout=30)
    scenario.drain()
    failures = worker.events("worker.store_failed")
    scenario.extra["outage_log_lines"] = len(failures)
    if len(failures) != 1:
        scenario.problems.append(f"the outage was logged {len(failures)} times, not once")
    scenario.check(slack=NO_VICTIM_SLACK_S)
