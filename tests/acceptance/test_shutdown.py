"""Graceful shutdown of `conveyor worker`: SIGTERM/SIGINT stop claiming, running jobs get the
grace period, what is still running is handed back to `queued` without counting an attempt,
and a second signal hands back at once."""

from __future__ import annotations

import signal

import pytest

from conveyor import App, JobState

from .conftest import Project, event_time, transitions, wait_until

pytestmark = pytest.mark.slow

TASKS = """
import asyncio
import time

import conveyor

app = conveyor.App(DATABASE_URL)


def started(job_id):
    (WORKDIR / f"started-{job_id}").write_text("")


def released(job_id):
    return (WORKDIR / f"release-{job_id}").exists()


@app.task(name="sleep_sync", pass_context=True)
def sleep_sync(ctx, seconds):
    started(ctx.job_id)
    time.sleep(seconds)
    return "slept"


@app.task(name="sleep_async", pass_context=True)
async def sleep_async(ctx, seconds):
    started(ctx.job_id)
    await asyncio.sleep(seconds)
    return "slept"


@app.task(name="swallows_cancellation", pass_context=True)
async def swallows_cancellation(ctx):
    # Badly behaved, yet it happens in real code: a bare `except` around an await.
    started(ctx.job_id)
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass


@app.task(name="until_released_sync", pass_context=True)
def until_released_sync(ctx):
    started(ctx.job_id)
    while not released(ctx.job_id):
        time.sleep(0.01)
    return "released"


@app.task(name="until_released_async", pass_context=True)
async def until_released_async(ctx):
    started(ctx.job_id)
    while not released(ctx.job_id):
        await asyncio.sleep(0.01)
    return "released"
"""


def wait_started(project: Project, *job_ids: int) -> None:
    """Until each job's function is running (it wrote its marker)."""
    for job_id in job_ids:
        wait_until(
            (project.root / f"started-{job_id}").exists,
            f"job {job_id} to start running",
            on_timeout=project.logs,
        )


def assert_handed_back(app: App, job_id: int, worker_id: str) -> None:
    """Back in `queued` from this worker, the attempt refunded, with a history note."""
    job = app.get_job(job_id)
    assert job.state is JobState.QUEUED
    assert job.attempt == 0, "a handed-back attempt must not count"
    assert job.errors == []
    assert job.lease_until is None
    assert transitions(app, job_id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "queued"),
    ]
    last = app.job_history(job_id)[-1]
    assert last.note and "shutdown" in last.note, last
    assert last.worker_id == worker_id


def test_sigterm_hands_running_jobs_back_after_the_grace(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    sync_job = tasks.sleep_sync.enqueue(30)
    async_job = tasks.sleep_async.enqueue(30)

    worker = project.start_worker("-c", "2", "--grace", "1")
    wait_started(project, sync_job.id, async_job.id)
    worker_id = worker.wait_for_event("worker.started")["worker_id"]

    worker.send(signal.SIGTERM)
    stopping = worker.wait_for_event("worker.stopping")
    # Enqueued once the worker is stopping: it must not be claimed any more.
    late = tasks.sleep_async.enqueue(0)

    assert worker.wait_exit() == 0, worker.tail()

    for job in (sync_job, async_job):
        assert_handed_back(tasks.app, job.id, worker_id)
    late_job = tasks.app.get_job(late.id)
    assert late_job.state is JobState.QUEUED and late_job.attempt == 0
    assert transitions(tasks.app, late.id) == [(None, "queued")]

    names = worker.event_names()
    assert "job.succeeded" not in names
    handed_back = worker.events("job.handed_back")
    assert sorted(int(e["job_id"]) for e in handed_back) == sorted([sync_job.id, async_job.id])
    stopped = worker.events("worker.stopped")
    assert len(stopped) == 1 and stopped[0]["handed_back"] == "2"
    assert (
        names.index("worker.stopping")
        < names.index("job.handed_back")
        < names.index("worker.stopped")
    )
    # The running jobs got their grace before being handed back (a lower bound: a slow
    # machine only makes the gap longer).
    for event in handed_back:
        assert event_time(event) - event_time(stopping) >= 0.9, (stopping, event)
    # Deregistered on the way out.
    assert tasks.app.list_workers() == []


@pytest.mark.parametrize("task", ["until_released_sync", "until_released_async"])
def test_job_finishing_within_the_grace_succeeds(project: Project, task: str) -> None:
    tasks = project.write_tasks(TASKS)
    job = getattr(tasks, task).enqueue()

    worker = project.start_worker("--grace", "60")
    wait_started(project, job.id)
    worker.send(signal.SIGTERM)
    worker.wait_for_event("worker.stopping")
    assert tasks.app.get_job(job.id).state is JobState.RUNNING

    # The job finishes only now, while the worker is already shutting down.
    (project.root / f"release-{job.id}").write_text("")

    assert worker.wait_exit() == 0, worker.tail()
    done = tasks.app.get_job(job.id)
    assert done.state is JobState.SUCCEEDED, done
    assert done.result == "released"
    assert done.attempt == 1
    assert transitions(tasks.app, job.id)[-1] == ("running", "succeeded")

    names = worker.event_names()
    assert "job.handed_back" not in names
    assert (
        names.index("worker.stopping")
        < names.index("job.succeeded")
        < names.index("worker.stopped")
    )
    assert worker.events("worker.stopped")[0]["handed_back"] == "0"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGTERM),
    ],
    ids=["term-term", "term-int", "int-term"],
)
def test_second_signal_hands_back_at_once(
    project: Project, first: signal.Signals, second: signal.Signals
) -> None:
    tasks = project.write_tasks(TASKS)
    # Both jobs would outlive the test's deadline, and so would the grace: the worker can only
    # exit in time by handing back on the second signal.
    sync_job = tasks.sleep_sync.enqueue(300)
    async_job = tasks.sleep_async.enqueue(300)

    worker = project.start_worker("-c", "2", "--grace", "600")
    wait_started(project, sync_job.id, async_job.id)
    worker_id = worker.wait_for_event("worker.started")["worker_id"]

    worker.send(first)
    worker.wait_for_event("worker.stopping")
    # Still running after the first signal: they are inside their grace period.
    assert {tasks.app.get_job(j.id).state for j in (sync_job, async_job)} == {JobState.RUNNING}
    worker.send(second)

    assert worker.wait_exit() == 0, worker.tail()
    for job in (sync_job, async_job):
        assert_handed_back(tasks.app, job.id, worker_id)

    names = [
        n
        for n in worker.event_names()
        if n in {"worker.stopping", "worker.hand_back_now", "job.handed_back", "worker.stopped"}
    ]
    assert names == [
        "worker.stopping",
        "worker.hand_back_now",
        "job.handed_back",
        "job.handed_back",
        "worker.stopped",
    ]


def test_task_swallowing_cancellation_cannot_block_the_hand_back(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    job = tasks.swallows_cancellation.enqueue()

    worker = project.start_worker("--grace", "1")
    wait_started(project, job.id)
    worker_id = worker.wait_for_event("worker.started")["worker_id"]
    worker.send(signal.SIGTERM)
    worker.wait_for_event("worker.stopping")
    worker.send(signal.SIGTERM)
    worker.wait_for_event("worker.hand_back_now")

    # Past the 1 s grace and after the second signal, the job is handed back and the worker
    # exits: like a sync task's thread, a coroutine that will not stop is left behind.
    assert worker.wait_exit(timeout=10) == 0, worker.tail()
    assert_handed_back(tasks.app, job.id, worker_id)
