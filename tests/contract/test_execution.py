"""Running jobs: results, retries and the dead-letter queue, timeouts, context, ordering."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import conveyor
from conveyor import JobState
from conveyor.job import TRANSITIONS


def transitions(app: conveyor.App, job_id: int) -> list[tuple[str | None, str]]:
    return [
        (None if h.from_state is None else h.from_state.value, h.to_state.value)
        for h in app.job_history(job_id)
    ]


def test_a_job_runs_and_keeps_its_result(app: conveyor.App) -> None:
    @app.task
    def add(x: int, y: int) -> dict[str, int]:
        return {"sum": x + y}

    job = add.enqueue(1, 2)
    app.run_worker(burst=True)

    job.refresh()
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"sum": 3}
    assert job.attempt == 1
    assert job.progress == 100
    assert job.started_at is not None and job.finished_at is not None
    assert job.finished_at >= job.started_at >= job.created_at
    assert transitions(app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_async_tasks_run_on_the_loop(app: conveyor.App) -> None:
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    job = double.enqueue(21)
    app.run_worker(burst=True)

    assert job.wait(timeout=5) == 42


def test_failing_job_retries_then_lands_in_the_dead_letter_queue(app: conveyor.App) -> None:
    calls: list[int] = []

    @app.task(max_attempts=3, backoff=conveyor.fixed(0))
    def explode(n: int) -> None:
        calls.append(n)
        raise RuntimeError(f"boom {len(calls)}")

    with capture_logs() as logs:
        job = explode.enqueue(7)
        app.run_worker(burst=True)

    job.refresh()
    assert job.state is JobState.DEAD
    assert job.attempt == 3
    assert len(calls) == 3
    assert [e["message"] for e in job.errors] == ["boom 1", "boom 2", "boom 3"]
    for attempt, error in enumerate(job.errors, start=1):
        assert error["type"] == "RuntimeError"
        assert error["attempt"] == attempt
        assert error["worker"]
        assert error["at"] >= job.created_at
        assert "Traceback (most recent call last)" in error["traceback"]
        assert 'raise RuntimeError(f"boom {len(calls)}")' in error["traceback"]
    assert transitions(app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "queued"),
        ("queued", "running"),
        ("running", "dead"),
    ]
    events = [entry["event"] for entry in logs if entry.get("job_id") == job.id]
    assert events.count("job.started") == 3
    assert events.count("job.retry_scheduled") == 2
    assert events.count("job.dead") == 1
    assert app.list_jobs(state="dead")[0].id == job.id


def test_flaky_job_succeeds_on_a_later_attempt(app: conveyor.App) -> None:
    @app.task(backoff=[0], pass_context=True)
    def flaky(ctx: conveyor.Context) -> int:
        if ctx.attempt < 3:
            raise ConnectionError("downstream hiccup")
        return ctx.attempt

    job = flaky.enqueue()
    app.run_worker(burst=True)

    assert job.wait(timeout=5) == 3
    assert len(job.refresh().errors) == 2


def test_backoff_sets_when_the_retry_runs(app: conveyor.App, clock: conveyor.FrozenClock) -> None:
    app.clock = clock

    @app.task(backoff=conveyor.exponential(base=10, cap=15, jitter=False), max_attempts=4)
    def fail() -> None:
        raise OSError("down")

    job = fail.enqueue()
    app.run_worker(burst=True)  # attempt 1, then nothing is runnable for 10 s
    job.refresh()
    assert (job.state, job.attempt) == (JobState.RETRYING, 1)
    assert job.run_at == pytest.approx(clock.now() + 10)

    clock.advance(9.9)
    app.run_worker(burst=True)
    assert job.refresh().attempt == 1

    clock.advance(0.2)
    app.run_worker(burst=True)  # attempt 2; next delay 20 s capped at 15
    job.refresh()
    assert (job.state, job.attempt) == (JobState.RETRYING, 2)
    assert job.run_at == pytest.approx(clock.now() + 15)


def test_give_up_on_goes_straight_to_dead(app: conveyor.App) -> None:
    @app.task(max_attempts=5, give_up_on=(ValueError,), backoff=[0])
    def validate() -> None:
        raise ValueError("bad input")

    job = validate.enqueue()
    app.run_worker(burst=True)

    job.refresh()
    assert (job.state, job.attempt) == (JobState.DEAD, 1)
    assert app.job_history(job.id)[-1].note == "gave up on ValueError"


def test_only_retry_on_exceptions_are_retried(app: conveyor.App) -> None:
    @app.task(max_attempts=5, retry_on=(ConnectionError,), backoff=[0])
    def lookup(key: str) -> None:
        raise KeyError(key)

    job = lookup.enqueue("k")
    app.run_worker(burst=True)

    job.refresh()
    assert (job.state, job.attempt) == (JobState.DEAD, 1)
    assert job.errors[0]["type"] == "KeyError"


def test_retry_raised_by_the_task_sets_its_delay(
    app: conveyor.App, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock

    @app.task(max_attempts=3)
    def poll() -> None:
        raise conveyor.Retry(delay=60)

    job = poll.enqueue()
    app.run_worker(burst=True)

    job.refresh()
    assert (job.state, job.attempt) == (JobState.RETRYING, 1)
    assert job.run_at == pytest.approx(clock.now() + 60)


def test_retry_with_no_attempts_left_is_dead(app: conveyor.App) -> None:
    @app.task(max_attempts=1)
    def poll() -> None:
        raise conveyor.Retry(delay=0)

    job = poll.enqueue()
    app.run_worker(burst=True)

    assert job.refresh().state is JobState.DEAD


def test_discard_goes_straight_to_dead_with_its_reason(app: conveyor.App) -> None:
    @app.task(max_attempts=5)
    def charge() -> None:
        raise conveyor.Discard("card expired")

    job = charge.enqueue()
    app.run_worker(burst=True)

    job.refresh()
    assert (job.state, job.attempt) == (JobState.DEAD, 1)
    assert app.job_history(job.id)[-1].note == "discarded: card expired"
    assert job.errors[0]["message"] == "card expired"


def test_result_that_is_not_json_is_dead_without_rerunning(app: conveyor.App) -> None:
    runs: list[int] = []

    @app.task(max_attempts=3)
    def make() -> object:
        runs.append(1)
        return object()

    job = make.enqueue()
    app.run_worker(burst=True)

    job.refresh()
    assert job.state is JobState.DEAD
    assert len(runs) == 1
    assert "cannot be stored as JSON" in job.errors[0]["message"]


def test_async_task_past_its_timeout_is_cancelled(app: conveyor.App) -> None:
    cancelled = threading.Event()

    @app.task(timeout=0.2, max_attempts=1)
    async def hang() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = hang.enqueue()
    app.run_worker(burst=True)

    job.refresh()
    assert job.state is JobState.DEAD
    assert job.errors[0]["type"] == "conveyor.errors.TaskTimeout"
    assert job.errors[0]["message"] == "timed out after 0.2s"
    assert cancelled.is_set()


def test_sync_task_past_its_timeout_gives_its_slot_back(app: conveyor.App) -> None:
    release = threading.Event()

    @app.task(timeout=0.2, max_attempts=1)
    def stuck() -> None:
        release.wait(30)

    @app.task
    def after() -> str:
        return "ran"

    slow = stuck.enqueue()
    next_job = after.configure(priority=9).enqueue()
    app.run_worker(burst=True, concurrency=1)
    release.set()

    assert slow.refresh().state is JobState.DEAD
    assert slow.errors[0]["type"] == "conveyor.errors.TaskTimeout"
    assert next_job.wait(timeout=5) == "ran"


def test_an_error_that_is_a_timeouterror_of_the_task_is_not_a_timeout(app: conveyor.App) -> None:
    @app.task(timeout=30, max_attempts=1)
    async def call() -> None:
        raise TimeoutError("upstream took too long")

    job = call.enqueue()
    app.run_worker(burst=True)

    assert job.refresh().errors[0]["type"] == "TimeoutError"


def test_context_gives_ids_and_records_progress(app: conveyor.App) -> None:
    seen: dict[str, Any] = {}

    @app.task(pass_context=True)
    async def render(ctx: conveyor.Context, product: str) -> str:
        seen["ids"] = (ctx.job_id, ctx.attempt, product)
        await ctx.progress(50, stage="voice_gen")
        stored = await app.get_job_async(ctx.job_id)
        seen["stored"] = (stored.progress, stored.stage)
        ctx.log.info("rendering")
        return product

    @app.task(pass_context=True)
    def encode(ctx: conveyor.Context) -> None:
        ctx.progress(30, stage="encode", message="a third done")
        ctx.progress(60)
        seen["sync"] = (app.get_job(ctx.job_id).progress, app.get_job(ctx.job_id).stage)

    job = render.enqueue("p1")
    sync_job = encode.enqueue()
    app.run_worker(burst=True)

    assert seen["ids"] == (job.id, 1, "p1")
    assert seen["stored"] == (50, "voice_gen")
    assert seen["sync"] == (60, "encode")
    assert job.refresh().stage == "voice_gen"
    assert sync_job.refresh().state is JobState.SUCCEEDED


def test_progress_out_of_range_is_an_error_in_the_task(app: conveyor.App) -> None:
    @app.task(pass_context=True, max_attempts=1)
    def bad(ctx: conveyor.Context) -> None:
        ctx.progress(150)

    job = bad.enqueue()
    app.run_worker(burst=True)

    assert "from 0 to 100" in job.refresh().errors[0]["message"]


def test_jobs_run_by_priority_then_run_at_then_id(
    app: conveyor.App, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock
    order: list[str] = []

    @app.task
    def record(name: str) -> None:
        order.append(name)

    record.configure(priority="low").enqueue("low")
    record.enqueue("normal-1")
    clock.advance(1)
    record.enqueue("normal-2")
    record.configure(priority=1).enqueue("critical")
    record.configure(priority=3).enqueue("high")
    record.configure(delay=5, priority=1).enqueue("later")
    app.run_worker(burst=True, concurrency=1)

    assert order == ["critical", "high", "normal-1", "normal-2", "low"]
    clock.advance(5)
    app.run_worker(burst=True, concurrency=1)
    assert order[-1] == "later"


def test_scheduled_job_waits_until_due(app: conveyor.App, clock: conveyor.FrozenClock) -> None:
    app.clock = clock

    @app.task
    def tick() -> str:
        return "tock"

    job = tick.configure(delay=30).enqueue()
    app.run_worker(burst=True)
    assert job.refresh().state is JobState.SCHEDULED

    clock.advance(30)
    app.run_worker(burst=True)
    assert job.wait(timeout=5) == "tock"
    assert transitions(app, job.id)[:2] == [(None, "scheduled"), ("scheduled", "queued")]


def test_worker_only_takes_its_queues(app: conveyor.App) -> None:
    @app.task(queue="emails")
    def send() -> None: ...

    @app.task(queue="video")
    def render() -> None: ...

    mail = send.enqueue()
    video = render.enqueue()
    app.run_worker(queues=["emails"], burst=True)

    assert mail.refresh().state is JobState.SUCCEEDED
    assert video.refresh().state is JobState.QUEUED


def test_unknown_task_in_the_worker_fails_the_job_with_a_clear_error(
    make_app: Callable[..., conveyor.App],
) -> None:
    producer = make_app()
    consumer = make_app()

    @producer.task(name="only.here", max_attempts=1)
    def only_here() -> None: ...

    job = only_here.enqueue()
    consumer.run_worker(burst=True)

    job.refresh()
    assert job.state is JobState.DEAD
    assert "task 'only.here' is not registered in this worker" in job.errors[0]["message"]


def test_wait_returns_the_result_or_raises(app: conveyor.App) -> None:
    @app.task(max_attempts=1)
    def fail() -> None:
        raise RuntimeError("no")

    @app.task
    def ok() -> int:
        return 1

    bad, good = fail.enqueue(), ok.enqueue()
    with pytest.raises(conveyor.WaitTimeout):
        good.wait(timeout=0.05)
    app.run_worker(burst=True)

    assert good.wait(timeout=5) == 1
    with pytest.raises(conveyor.JobFailed, match="ended dead: no") as failed:
        bad.wait(timeout=5)
    assert failed.value.job.id == bad.id


async def test_wait_async_sees_a_worker_finish_the_job(app: conveyor.App) -> None:
    @app.task
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    job = await slow.enqueue_async()
    worker = asyncio.create_task(app.run_worker_async(burst=True))
    assert await job.wait_async(timeout=10) == "done"
    await worker


def test_every_recorded_transition_is_allowed(app: conveyor.App) -> None:
    @app.task(backoff=[0], max_attempts=2)
    def sometimes(n: int) -> None:
        if n % 2:
            raise RuntimeError("odd")

    jobs = sometimes.enqueue_many([(i,) for i in range(10)])
    jobs.append(sometimes.configure(delay=3600).enqueue(1))
    app.cancel_job(jobs[-1].id)
    app.run_worker(burst=True)
    app.retry_jobs()

    for job in jobs:
        for entry in app.job_history(job.id):
            assert (entry.from_state, entry.to_state) in TRANSITIONS, entry


def test_many_jobs_with_concurrency_all_finish_once(app: conveyor.App) -> None:
    runs: dict[int, int] = {}
    lock = threading.Lock()

    @app.task
    def work(i: int) -> None:
        time.sleep(0.001)
        with lock:
            runs[i] = runs.get(i, 0) + 1

    work.enqueue_many([(i,) for i in range(500)])
    app.run_worker(burst=True, concurrency=20)

    assert runs == {i: 1 for i in range(500)}
    assert app.queue_stats()["default"] == {JobState.SUCCEEDED: 500}
