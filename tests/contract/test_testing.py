"""conveyor.testing: the helpers users' tests (and these) run jobs and workers with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import conveyor
from conveyor import JobState
from conveyor.events import Event
from conveyor.testing import drain, drain_async, running_worker, subscribe, wait_rounds


async def test_drain_runs_what_is_due_and_leaves_what_is_due_later(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)

    @app.task(name="double", backoff=conveyor.fixed(60), max_attempts=2)
    def double(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    one, two, bad = double.enqueue_many([(1,), (2,), (-1,)])
    assert await drain_async(app) == 3
    assert [(await j.refresh_async()).result for j in (one, two)] == [2, 4]
    assert (await bad.refresh_async()).state is JobState.RETRYING  # its retry is a minute away
    clock.advance(60)
    assert await drain_async(app) == 1
    assert (await bad.refresh_async()).state is JobState.DEAD


def test_drain_without_an_event_loop(app: conveyor.App) -> None:
    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    job = add.enqueue(1, 2)
    assert drain(app) == 1
    assert job.refresh().result == 3


async def test_drain_fails_and_hands_back_when_the_queues_do_not_drain_in_time(
    app: conveyor.App,
) -> None:
    @app.task(name="forever")
    async def forever() -> None:
        await asyncio.sleep(60)

    job = await forever.enqueue_async()
    with pytest.raises(TimeoutError, match=r"not drained within 0\.5 s"):
        await drain_async(app, timeout=0.5)
    job = await job.refresh_async()
    assert (job.state, job.attempt) == (JobState.QUEUED, 0)


async def test_running_worker_is_entered_once_the_worker_has_started(app: conveyor.App) -> None:
    async with running_worker(app, queues=["default"], concurrency=2) as worker:
        [info] = app.list_workers()
        assert (info.id, info.queues, info.concurrency) == (worker.id, ["default"], 2)
        assert worker.elector.is_leader  # the first round has elected it
        assert worker.rescuer.rounds >= 1  # and the leader's services have begun
        before = worker.rescuer.rounds
        await wait_rounds(worker.rescuer, kick=True)
        assert worker.rescuer.rounds == before + 1
        with pytest.raises(TimeoutError, match="rescuer service"):
            await wait_rounds(worker.rescuer, timeout=0.2)  # the next is seconds away
    assert worker.stopping
    assert app.list_workers() == []


async def test_subscribe_sees_every_event_from_the_start_of_the_block(app: conveyor.App) -> None:
    @app.task(name="echo")
    def echo(n: int) -> int:
        return n

    seen: list[Event] = []
    async with subscribe(app, queue="default") as stream:
        job = await echo.enqueue_async(1)
        await drain_async(app)
        async with asyncio.timeout(10):
            async for event in stream:  # read only now, after the job has finished
                seen.append(event)
                if event.finished:
                    break
    states = [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
    assert [(e.job_id, e.state) for e in seen] == [(job.id, state) for state in states]
