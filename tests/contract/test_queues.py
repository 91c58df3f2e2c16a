"""Pausing and resuming queues: a paused queue starts nothing new, on every worker, until
resumed; the state lives in the store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState

from .test_worker import running, until

#: a task of any signature, as `@app.task` returns it
AnyTask = conveyor.Task[Any, Any]


@pytest.fixture
def tasks(app: conveyor.App) -> dict[str, AnyTask]:
    @app.task(queue="video")
    def render(i: int) -> int:
        return i

    @app.task(queue="default")
    def mail(i: int) -> int:
        return i

    return {"render": render, "mail": mail}


def test_a_paused_queue_starts_nothing_until_resumed(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    renders = tasks["render"].enqueue_many([(i,) for i in range(3)])
    mails = tasks["mail"].enqueue_many([(i,) for i in range(3)])
    assert app.pause_queue("video") is True
    assert app.paused_queues() == ["video"]

    app.run_worker(burst=True)  # returns: what is left sits in a paused queue
    assert {app.get_job(j.id).state for j in mails} == {JobState.SUCCEEDED}
    assert {app.get_job(j.id).state for j in renders} == {JobState.QUEUED}

    app.run_worker(queues=["video"], burst=True)  # naming the queue does not get round it
    assert {app.get_job(j.id).state for j in renders} == {JobState.QUEUED}

    assert app.resume_queue("video") is True
    assert app.paused_queues() == []
    app.run_worker(burst=True)
    assert [app.get_job(j.id).result for j in renders] == [0, 1, 2]


def test_pausing_twice_or_resuming_a_running_queue_changes_nothing(app: conveyor.App) -> None:
    assert app.resume_queue("video") is False
    assert app.pause_queue("video") is True
    assert app.pause_queue("video") is False
    assert app.paused_queues() == ["video"]


def test_the_paused_state_is_kept_in_the_store(
    make_app: Callable[..., conveyor.App], tasks: dict[str, AnyTask]
) -> None:
    first = make_app()
    first.pause_queue("video")
    first.pause_queue("audio")
    first.close()

    later = make_app()  # another process, or the same one after a restart
    assert later.paused_queues() == ["audio", "video"]

    @later.task(name=tasks["render"].name, queue="video")
    def render(i: int) -> int:
        return i

    job = render.enqueue(1)
    later.run_worker(burst=True)
    assert later.get_job(job.id).state is JobState.QUEUED


def test_a_bad_queue_name_is_refused_and_nothing_is_paused(app: conveyor.App) -> None:
    with pytest.raises(conveyor.ValidationError, match="queue name"):
        app.pause_queue("no spaces")
    with pytest.raises(conveyor.ValidationError, match="queue name"):
        app.resume_queue("")
    assert app.paused_queues() == []


async def test_running_jobs_finish_when_their_queue_is_paused(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()
    started = threading.Event()
    release = threading.Event()

    @app.task(queue="video")
    def hold(i: int) -> int:
        started.set()
        release.wait(10)
        return i

    first = await hold.enqueue_async(1)
    async with running(conveyor.Worker(app, concurrency=1)):
        await until(started.is_set)
        app.pause_queue("video")
        second = await hold.enqueue_async(2)
        release.set()
        assert await first.wait_async(timeout=10) == 1
        await asyncio.sleep(0.3)  # the worker is free and awake; the queue is paused
        assert (await app.get_job_async(second.id)).state is JobState.QUEUED
        app.resume_queue("video")
        assert await second.wait_async(timeout=10) == 2
