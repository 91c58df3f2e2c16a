"""Events: state changes and progress reports, in order, to whoever subscribes; progress is
throttled; `job.wait_async` is woken by them. (Another process: tests/acceptance/test_events.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.events import Cursor, Event
from conveyor.testing import subscribe

from .test_worker import running, until


async def collect(stream: Any, into: list[Event], until_finished: int = 1) -> None:
    finished = 0
    async for event in stream:
        into.append(event)
        if event.finished:
            finished += 1
            if finished == until_finished:
                return


async def test_state_changes_and_progress_arrive_in_order(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()

    @app.task(name="encode", pass_context=True)
    async def encode(ctx: conveyor.Context, video: str) -> str:
        for percent, stage in ((10, "probe"), (50, "encode"), (90, "upload")):
            await ctx.progress(percent, stage=stage, message=f"{stage} {video}")
            await asyncio.sleep(0.3)  # slower than the throttle: every report goes out
        return "done"

    seen: list[Event] = []
    async with subscribe(app, queue="default") as stream:
        watcher = asyncio.create_task(collect(stream, seen))
        job = await encode.enqueue_async("intro.mp4")
        async with running(conveyor.Worker(app)):
            await asyncio.wait_for(watcher, 30)
    assert [(e.kind, e.state, e.progress, e.stage) for e in seen] == [
        ("state", JobState.QUEUED, None, None),
        ("state", JobState.RUNNING, None, None),
        ("progress", None, 10.0, "probe"),
        ("progress", None, 50.0, "encode"),
        ("progress", None, 90.0, "upload"),
        ("state", JobState.SUCCEEDED, None, None),
    ]
    assert {(e.job_id, e.queue, e.task) for e in seen} == {(job.id, "default", "encode")}
    assert seen[2].message == "probe intro.mp4"
    assert "intro.mp4" not in str(seen[1].to_dict())  # never the job's arguments
    assert [e.at for e in seen] == sorted(e.at for e in seen)


async def test_events_name_the_worker_that_sent_them(
    make_app: Callable[..., conveyor.App],
) -> None:
    """A claim, a progress report and an outcome name the worker; a job enqueued, a retry
    coming due or a cancel by hand names none (though the job's row may still hold the last
    attempt's worker, as a retrying job's does)."""
    app = make_app()

    @app.task(name="flaky", pass_context=True)
    async def flaky(ctx: conveyor.Context) -> str:
        await ctx.progress(50, stage="half")
        if ctx.attempt == 1:
            raise conveyor.Retry(delay=0.05)
        return "ok"

    @app.task(name="later")
    def later() -> None:
        raise conveyor.Retry(delay=3600)

    seen: list[Event] = []
    worker = conveyor.Worker(app)
    async with subscribe(app) as stream:
        watcher = asyncio.create_task(collect(stream, seen, until_finished=2))
        job = await flaky.enqueue_async()
        waiting = await later.enqueue_async()
        async with running(worker):
            assert await job.wait_async(timeout=30) == "ok"
            await until(lambda: app.get_job(waiting.id).state is JobState.RETRYING)
        assert app.get_job(waiting.id).worker_id == worker.id
        await app.cancel_job_async(waiting.id)
        await asyncio.wait_for(watcher, 30)
    cancelled = [e for e in seen if e.job_id == waiting.id]
    assert [(e.state, e.worker) for e in cancelled] == [
        (JobState.QUEUED, None),
        (JobState.RUNNING, worker.id),
        (JobState.RETRYING, worker.id),
        (JobState.CANCELLED, None),
    ]
    seen = [e for e in seen if e.job_id != waiting.id]
    assert [(e.kind, e.state, e.worker) for e in seen] == [
        ("state", JobState.QUEUED, None),
        ("state", JobState.RUNNING, worker.id),
        ("progress", None, worker.id),
        ("state", JobState.RETRYING, worker.id),
        ("state", JobState.QUEUED, None),
        ("state", JobState.RUNNING, worker.id),
        ("progress", None, worker.id),
        ("state", JobState.SUCCEEDED, worker.id),
    ]
    assert seen[2].to_dict()["worker"] == worker.id
    assert "worker" not in seen[0].to_dict()


async def test_progress_is_throttled_and_the_latest_gets_out(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()
    done = asyncio.Event()

    @app.task(name="crunch", pass_context=True)
    def crunch(ctx: conveyor.Context) -> None:
        for i in range(1, 201):
            ctx.progress(i / 2, stage="crunch")  # 200 reports, as fast as it can
        ctx.progress(100, stage="crunch")

    @app.task(name="hold", pass_context=True)
    async def hold(ctx: conveyor.Context) -> None:
        for i in range(1, 101):
            await ctx.progress(i)
        await done.wait()

    seen: list[Event] = []
    async with subscribe(app) as stream:
        watcher = asyncio.create_task(collect(stream, seen))
        job = crunch.enqueue()
        held = hold.enqueue()
        async with running(conveyor.Worker(app)):
            await asyncio.wait_for(watcher, 30)
            # the held job's last report (100) goes out after the throttle, while it still runs
            await until(lambda: app.get_job(held.id).progress == 100)
            done.set()
    reports = [e.progress for e in seen if e.kind == "progress" and e.job_id == job.id]
    assert 1 <= len(reports) <= 12  # a few a second at most, not 201
    assert reports == sorted(p for p in reports if p is not None)  # numbers, in order


async def test_events_of_one_job_only(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app()

    @app.task(name="echo")
    def echo(n: int) -> int:
        return n

    first, second = echo.enqueue(1), echo.enqueue(2)
    seen: list[Event] = []
    async with subscribe(app, job_id=second.id) as stream:
        watcher = asyncio.create_task(collect(stream, seen))
        await app.run_worker_async(burst=True)
        await asyncio.wait_for(watcher, 30)
    assert {e.job_id for e in seen} == {second.id}
    assert [e.state for e in seen] == [JobState.RUNNING, JobState.SUCCEEDED]
    assert app.get_job(first.id).state is JobState.SUCCEEDED


async def test_wait_async_returns_when_the_job_finishes(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()

    @app.task(name="slow")
    async def slow(n: int) -> int:
        await asyncio.sleep(0.2)
        return n * 2

    @app.task(name="broken", max_attempts=1)
    def broken() -> None:
        raise ValueError("nope")

    job, bad = slow.enqueue(21), broken.enqueue()
    with pytest.raises(conveyor.WaitTimeout, match="still queued"):
        await job.wait_async(timeout=0.3)
    async with running(conveyor.Worker(app)):
        assert await job.wait_async(timeout=20) == 42
        with pytest.raises(conveyor.JobFailed):
            await bad.wait_async(timeout=20)
    assert await job.wait_async(timeout=1) == 42  # finished already: at once


async def test_finished_events_carry_the_wait_and_run_time_of_the_attempt_that_ran(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()

    @app.task(name="nap")
    async def nap() -> None:
        await asyncio.sleep(0.2)

    @app.task(name="broken", max_attempts=1)
    def broken() -> None:
        raise ValueError("nope")

    start = await app.backend.event_cursor()
    napped, bad, never = nap.enqueue(), broken.enqueue(), nap.enqueue()
    await app.cancel_job_async(never.id)
    await app.run_worker_async(burst=True)
    app.retry_job(bad.id)  # its row now describes a later attempt
    await app.run_worker_async(burst=True)
    events, _ = await app.backend.read_events(start, None, None, limit=100)
    finished = {(e.job_id, e.state): e for e in events if e.finished}
    done = finished[napped.id, JobState.SUCCEEDED]
    assert done.wait is not None and 0 <= done.wait < 10
    assert done.run_time is not None and 0.2 <= done.run_time < 10
    assert {"wait", "run_time"} <= set(done.to_dict())
    cancelled = finished[never.id, JobState.CANCELLED]  # never started
    assert (cancelled.wait, cancelled.run_time) == (None, None)
    assert not {"wait", "run_time"} & set(cancelled.to_dict())
    first_dead, last_dead = [e for e in events if e.job_id == bad.id and e.finished]
    assert (first_dead.wait, first_dead.run_time) == (None, None)
    assert last_dead.run_time is not None and last_dead.run_time < 10
    assert all(e.wait is None and e.run_time is None for e in events if not e.finished)


async def test_a_cursor_handed_back_resumes_and_one_not_of_the_stream_starts_from_now(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()

    @app.task(name="step")
    def step() -> None: ...

    backend = app.backend
    first = step.enqueue()
    start = await backend.event_cursor()
    second = step.enqueue()
    # a client hands the cursor's text back (an SSE Last-Event-ID): it resumes there
    resumed = await backend.event_cursor(Cursor.parse(str(start)))
    events, end = await backend.read_events(resumed, None, None)
    assert [(e.job_id, e.state) for e in events] == [(second.id, JobState.QUEUED)]
    # made up, of another store, or past the end: the stream starts from now
    for foreign in ("nonsense", "999999999.999999999", f"{end}x"):
        cursor = await backend.event_cursor(Cursor.parse(foreign))
        assert cursor == end
        assert await backend.read_events(cursor, None, None) == ([], end)
    with pytest.raises(conveyor.ValidationError, match="not a position"):
        await backend.read_events(Cursor("nonsense"), None, None)
    # state changes only: progress reports are left unread, the state changes are all there
    events, _ = await backend.read_events(start, first.id, None, progress=False)
    assert events == []
