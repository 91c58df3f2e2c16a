"""The worker in-process: wake-ups, registration, cancellation of running jobs, shutdown."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import conveyor
from conveyor import JobState
from conveyor.testing import running_worker, wait_until
from conveyor.worker import worker as worker_module
from conveyor.worker.worker import UNWRITTEN_PER_SLOT

# the other contract tests import these two from here
running = running_worker
until = wait_until


async def test_idle_worker_picks_up_a_job_enqueued_elsewhere(
    make_app: Callable[..., conveyor.App],
) -> None:
    worker_app, producer = make_app(), make_app()

    @worker_app.task(name="greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    producer.task(name="greet")(lambda name: None)
    async with running(conveyor.Worker(worker_app)):
        await asyncio.sleep(0.2)  # the worker has gone idle
        job = await producer.enqueue_async("greet", args=["you"])
        assert await job.wait_async(timeout=10) == "hello you"


async def test_a_job_a_claim_brings_in_begins_before_the_worker_asks_the_store_more(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a claim that leaves slots free, the worker asks the store when the next job is
    due; the jobs it just claimed begin first (a round trip sooner), not after the answer."""
    order: list[str] = []

    @app.task
    async def note() -> None:
        order.append("began")

    claim, asked = app.backend.claim, app.backend.after_short_claim

    async def claimed(*args: Any, **kwargs: Any) -> list[conveyor.Job]:
        jobs: list[conveyor.Job] = await claim(*args, **kwargs)
        order.append(f"claimed {len(jobs)}")
        return jobs

    async def after_short_claim(*args: Any) -> float | None:
        order.append("asked")
        return await asked(*args)

    monkeypatch.setattr(app.backend, "claim", claimed)
    monkeypatch.setattr(app.backend, "after_short_claim", after_short_claim)
    async with running(conveyor.Worker(app)):
        await asyncio.sleep(0.2)  # idle: its first claims found nothing
        job = await note.enqueue_async()
        await job.wait_async(timeout=10)
    after = order.index("claimed 1")
    assert order[after : after + 3] == ["claimed 1", "began", "asked"]


async def test_a_job_that_came_due_while_the_worker_idled_runs_at_its_next_look(
    make_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delayed job sends no wake-up when it comes due. The next time the worker looks (here:
    a job arriving), it starts that one too, beside it, without waiting for a re-check. (On
    SQLite the delayed job's own commit wakes the worker, which then waits for it to come due:
    it may run before the other arrives.)"""
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", 120.0)
    app, producer = make_app(), make_app()
    release = asyncio.Event()

    @app.task(name="hold")
    async def hold() -> None:
        await release.wait()

    app.task(name="later")(lambda: "ran")
    for name in ("hold", "later"):
        producer.task(name=name)(lambda: None)
    async with running(conveyor.Worker(app, concurrency=2)):
        await asyncio.sleep(0.2)  # idle: nothing is due, nothing is queued
        later = await producer.enqueue_async("later", delay=0.2)
        await asyncio.sleep(0.5)  # due now, and nobody told the worker
        held = await producer.enqueue_async("hold")
        assert await later.wait_async(timeout=10) == "ran"
        await until(lambda: held.refresh().state is JobState.RUNNING, what="the other running")
        release.set()
        await held.wait_async(timeout=10)


async def test_a_job_that_comes_due_between_a_short_claim_and_the_look_after_it_runs_at_once(
    make_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look that follows a short claim may make a job runnable itself (on PostgreSQL it
    promotes due jobs). The worker then claims again at once instead of waiting: with LISTEN
    off and re-checks two minutes apart, its next poll would be the only other wake-up."""
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", 120.0)
    app, producer = make_app(postgres_listen=False), make_app()
    app.task(name="later")(lambda: "ran")
    producer.task(name="later")(lambda: None)
    steps: list[tuple[str, Any]] = []
    due: list[float] = []
    claim, look, wait = (
        app.backend.claim,
        app.backend.after_short_claim,
        app.backend.wait_for_change,
    )

    async def claimed(*args: Any, **kwargs: Any) -> list[conveyor.Job]:
        jobs = await claim(*args, **kwargs)
        if due and not jobs:  # the job comes due while this short claim is on its way back
            await asyncio.sleep(max(0.0, due.pop() - app.clock.now()) + 0.05)
            steps.append(("claimed before it was due", len(jobs)))
        elif steps:
            steps.append(("claimed", len(jobs)))
        return jobs

    async def looked(*args: Any) -> float | None:
        found = await look(*args)
        if steps:
            steps.append(("looked", found))
        return found

    async def waited(timeout: float) -> None:
        if steps:
            steps.append(("waited", timeout))
        await wait(timeout)

    monkeypatch.setattr(app.backend, "claim", claimed)
    monkeypatch.setattr(app.backend, "after_short_claim", looked)
    monkeypatch.setattr(app.backend, "wait_for_change", waited)
    async with running(conveyor.Worker(app)):
        await asyncio.sleep(0.2)  # idle: its first claims found nothing
        later = await producer.enqueue_async("later", delay=0.3)
        due.append(later.run_at)
        assert await later.wait_async(timeout=10) == "ran"
    ran = steps.index(("claimed", 1))
    assert steps[0] == ("claimed before it was due", 0)
    assert steps[1][0] == "looked" and steps[1][1] is not None and steps[1][1] <= 0
    # between the look and the claim that took the job: no wait but a zero one
    assert [step for step in steps[2:ran] if step != ("waited", 0.0)] == []


async def test_worker_registers_and_deregisters(app: conveyor.App) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task
    def hold() -> None:
        started.set()
        release.wait(10)

    job = hold.enqueue()
    worker = conveyor.Worker(app, queues=["default", "other"], concurrency=3)
    with capture_logs() as logs:
        async with running(worker):
            await until(started.is_set)
            await worker.beat()
            [info] = app.list_workers()
            assert info.id == worker.id
            assert (info.queues, info.concurrency, info.running) == (
                ["default", "other"],
                3,
                [job.id],
            )
            assert not info.is_lost(app.clock.now(), app.settings.lease_seconds)
            release.set()
    assert app.list_workers() == []
    events = [e["event"] for e in logs]
    assert events[0] == "worker.started"
    assert events[-1] == "worker.stopped"


async def test_cancel_a_running_async_job(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app(lease_seconds=0.4)  # heartbeats every 0.1 s pick up the request
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @app.task
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    job = await long.enqueue_async()
    async with running(conveyor.Worker(app)):
        await asyncio.wait_for(started.wait(), 10)
        assert (await job.cancel_async()).state is JobState.RUNNING  # asked, not yet stopped
        await until(lambda: job.refresh().state is JobState.CANCELLED)
    assert saw_cancel.is_set()
    assert job.attempt == 1


async def test_cancel_a_running_sync_job_that_polls_the_flag(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app(lease_seconds=0.4)
    started = threading.Event()

    @app.task(pass_context=True)
    def crunch(ctx: conveyor.Context) -> str:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        return "stopped early"

    job = await crunch.enqueue_async()
    async with running(conveyor.Worker(app)):
        await until(started.is_set)
        app.cancel_job(job.id, note="cancelled by alice")
        await until(lambda: job.refresh().state is JobState.CANCELLED)
    assert job.result is None
    last = app.job_history(job.id)[-1]  # who asked, and when it took effect
    assert (last.from_state, last.to_state, last.note) == (
        JobState.RUNNING,
        JobState.CANCELLED,
        "cancelled by alice",
    )


async def test_graceful_stop_lets_running_jobs_finish(app: conveyor.App) -> None:
    started = asyncio.Event()

    @app.task
    async def short() -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "finished"

    job = await short.enqueue_async()
    worker = conveyor.Worker(app, grace=30)
    async with running(worker):
        await asyncio.wait_for(started.wait(), 10)
        worker.stop()
    assert (await job.refresh_async()).state is JobState.SUCCEEDED


async def test_shutdown_hands_unfinished_jobs_back_without_counting_the_attempt(
    app: conveyor.App,
) -> None:
    started = asyncio.Event()
    thread_started = threading.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    @app.task
    def blocking() -> None:
        thread_started.set()
        threading.Event().wait(60)

    async_job = await forever.enqueue_async()
    sync_job = await blocking.enqueue_async()
    worker = conveyor.Worker(app, grace=0.2)
    with capture_logs() as logs:
        async with running(worker):
            await asyncio.wait_for(started.wait(), 10)
            await until(thread_started.is_set)
            worker.stop()

    for job in (async_job, sync_job):
        job.refresh()
        assert (job.state, job.attempt, job.errors) == (JobState.QUEUED, 0, [])
        last = app.job_history(job.id)[-1]
        assert (last.from_state, last.to_state) == (JobState.RUNNING, JobState.QUEUED)
        assert last.note == "handed back on shutdown"
    handed = {e["job_id"] for e in logs if e["event"] == "job.handed_back"}
    assert handed == {async_job.id, sync_job.id}


async def test_second_stop_hands_back_at_once(app: conveyor.App) -> None:
    started = asyncio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    job = await forever.enqueue_async()
    worker = conveyor.Worker(app, grace=60)
    task = asyncio.create_task(worker.run_async())
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.sleep(0.1)
    assert not task.done()  # still inside its 60 s grace
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert (await job.refresh_async()).state is JobState.QUEUED


async def test_burst_returns_when_only_future_jobs_are_left(app: conveyor.App) -> None:
    @app.task
    def later() -> None: ...

    job = await later.configure(delay=3600).enqueue_async()
    await asyncio.wait_for(app.run_worker_async(burst=True), 10)
    assert (await job.refresh_async()).state is JobState.SCHEDULED


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_worker_with_max_jobs_runs_that_many_and_returns_leaving_the_rest_queued(
    app: conveyor.App, kind: str
) -> None:
    """Short jobs, so the worker claims ahead: it still claims no job it will not run (none is
    left claimed, handed back, or with an attempt counted), and it returns by itself."""
    ran: list[int] = []

    if kind == "sync":

        @app.task(name="quick")
        def quick(i: int) -> None:
            ran.append(i)

    else:

        @app.task(name="quick")
        async def quick(i: int) -> None:
            ran.append(i)

    jobs = await quick.enqueue_many_async([(i,) for i in range(40)])
    await asyncio.wait_for(app.run_worker_async(concurrency=3, max_jobs=7), 20)
    assert sorted(ran) == list(range(7))  # in claim order: the first seven enqueued
    states = [(await app.get_job_async(job.id)) for job in jobs]
    assert [job.state for job in states] == [JobState.SUCCEEDED] * 7 + [JobState.QUEUED] * 33
    assert all(job.attempt == 0 and job.worker_id is None for job in states[7:])
    assert await asyncio.to_thread(app.list_workers) == []  # it deregistered on its way out


async def test_a_named_worker_goes_by_its_name_which_no_other_live_worker_may_take(
    app: conveyor.App,
) -> None:
    @app.task(name="ping")
    def ping() -> str:
        return "pong"

    first = conveyor.Worker(app, name="render")
    assert first.id.startswith("render:")
    async with running(first):
        job = await ping.enqueue_async()
        assert await job.wait_async(timeout=10) == "pong"
        assert (await app.get_job_async(job.id)).worker_id == first.id
        history = await asyncio.to_thread(app.job_history, job.id)
        assert {h.worker_id for h in history if h.to_state is JobState.RUNNING} == {first.id}
        assert [w.id for w in await asyncio.to_thread(app.list_workers)] == [first.id]
        with pytest.raises(conveyor.ConfigurationError, match="named 'render' is running already"):
            await asyncio.wait_for(conveyor.Worker(app, name="render").run_async(), 10)
        assert [w.id for w in await asyncio.to_thread(app.list_workers)] == [first.id]
    # gone (it deregistered): the name is free again
    await asyncio.wait_for(app.run_worker_async(burst=True, name="render"), 10)


async def test_a_name_whose_worker_died_on_this_host_is_free_before_its_registration_ages(
    app: conveyor.App,
) -> None:
    """A worker killed and restarted under the same name at once: its old registration is
    still fresh, but no process of this host has its pid. On another host it would hold."""
    now = app.clock.now()
    dead_pid = 2**22 + 1  # above Linux's pid_max: no process has it
    for host in (socket.gethostname(), "elsewhere"):
        gone = conveyor.WorkerInfo(
            id=f"{host}-render:0badf00d",
            host=host,
            pid=dead_pid,
            queues=None,
            concurrency=1,
            started_at=now,
            last_beat=now,
            running=[],
        )
        await app.backend.heartbeat(gone, [], now + 30)
    named = conveyor.Worker(app, name=f"{socket.gethostname()}-render", burst=True)
    await asyncio.wait_for(named.run_async(), 10)
    with pytest.raises(conveyor.ConfigurationError, match="on elsewhere, pid 4194305"):
        await asyncio.wait_for(app.run_worker_async(burst=True, name="elsewhere-render"), 10)


async def test_a_worker_runs_few_jobs_past_the_outcomes_the_store_has_not_taken(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the store takes no outcomes (here: their write held up), the worker starts at most
    about `UNWRITTEN_PER_SLOT` jobs per slot of those it claimed ahead; the rest wait. A crash
    then runs again only those few finished jobs, not everything it claimed."""
    ran: list[int] = []

    @app.task
    def quick(i: int) -> None:
        ran.append(i)

    await asyncio.to_thread(quick.enqueue_many, [(i,) for i in range(600)])
    worker = conveyor.Worker(app, concurrency=2, prefetch=200)
    # Claim the whole prefetch ahead whatever this machine's claim and job times are (the
    # worker sizes its buffer by them): there must be far more claimed ahead than may start.
    monkeypatch.setattr(worker, "_buffer_target", lambda: worker.prefetch)
    write = app.backend.complete
    held, release = asyncio.Event(), asyncio.Event()

    async def held_up(outcomes: Any, starts: Any = ()) -> list[int]:
        if len(ran) >= 100 and not release.is_set():
            held.set()
            await release.wait()
        return await write(outcomes, starts)

    monkeypatch.setattr(app.backend, "complete", held_up)

    def claimed_ahead() -> int:
        jobs = app.list_jobs(state=JobState.RUNNING, limit=1_000)
        return sum(1 for job in jobs if job.started_at is None)

    bound = (UNWRITTEN_PER_SLOT + 2) * worker.concurrency
    async with running(worker):
        await asyncio.wait_for(held.wait(), 10)
        before = len(ran)
        await asyncio.sleep(0.5)  # ample for the jobs claimed ahead, were they started
        started = len(ran) - before
        waiting = await asyncio.to_thread(claimed_ahead)
        release.set()
        await until(lambda: len(ran) >= 600, what="the rest of the jobs")
    assert waiting > bound  # there was more to start than the bound lets through
    assert started <= bound
    assert sorted(ran) == list(range(600))


async def test_jobs_claimed_ahead_are_shown_kept_and_handed_back_on_shutdown(
    make_app: Callable[..., conveyor.App],
) -> None:
    """Short jobs make the worker claim ahead of its free slot; those jobs show as claimed
    (running, not begun), keep their lease, and go back uncounted when the worker stops."""
    app = make_app(lease_seconds=2)  # a heartbeat every half second
    began = asyncio.Event()
    gate = asyncio.Event()

    @app.task
    async def quick(i: int) -> None: ...

    @app.task
    async def slow() -> None:
        began.set()
        await gate.wait()

    await asyncio.to_thread(quick.enqueue_many, [(i,) for i in range(50)])
    await slow.enqueue_async()
    later = await asyncio.to_thread(quick.enqueue_many, [(i,) for i in range(3)])
    worker = conveyor.Worker(app, concurrency=1, prefetch=5, grace=0.1)

    def ahead() -> list[conveyor.Job]:
        return [app.get_job(job.id) for job in later]

    async with running(worker):
        await asyncio.wait_for(began.wait(), 10)
        await until(
            lambda: all(j.state is JobState.RUNNING for j in ahead()), what="the claims ahead"
        )
        claimed = ahead()
        for job in claimed:
            assert (job.worker_id, job.attempt, job.started_at) == (worker.id, 1, None)
            assert app.job_history(job.id)[-1].to_state is JobState.RUNNING
        leases = [job.lease_until or 0.0 for job in claimed]
        await until(
            lambda: all(
                (j.lease_until or 0.0) > old for j, old in zip(ahead(), leases, strict=True)
            ),
            what="the heartbeat to renew the leases of the jobs claimed ahead",
        )
        assert all(j.started_at is None for j in ahead())  # still not begun
        worker.stop()

    for job in ahead():
        assert (job.state, job.attempt, job.errors, job.started_at) == (
            JobState.QUEUED,
            0,
            [],
            None,
        )
        note = app.job_history(job.id)[-1].note
        assert note == "claimed ahead, never begun: handed back on shutdown"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"concurrency": 2**31}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"concurrency": True}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"prefetch": -1}, "prefetch must be an integer >= 0"),
        ({"max_jobs": 0}, "max_jobs must be an integer from 1 to 2,147,483,647"),
        ({"name": "render 1"}, "bad worker name 'render 1': use 1-100 characters"),
        ({"name": ""}, "bad worker name"),
    ],
)
def test_bad_worker_settings_are_refused_when_it_is_made(
    app: conveyor.App, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(conveyor.ValidationError, match=match):
        conveyor.Worker(app, **options)


async def test_an_outcome_the_store_refuses_is_set_apart_and_said_so_once(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses one job's outcome, whatever it carries, and takes the others'. Those
    are written; the refused one is tried again without the task's output, then given up: the
    log says that (`job.outcome_unstorable`, then `outcomes.write_failed`), not that the job
    was rescued or cancelled, and the job stays running, for its lease to run out."""

    @app.task
    def work(i: int) -> int:
        return i

    jobs = await asyncio.to_thread(work.enqueue_many, [(i,) for i in range(6)])
    bad = jobs[3].id
    write = app.backend.complete

    async def refusing(outcomes: Any, starts: Any = ()) -> list[int]:
        if any(o.job_id == bad for o in outcomes):
            raise ValueError("this store refuses the outcome of one job")
        return await write(outcomes, starts)

    monkeypatch.setattr(app.backend, "complete", refusing)
    with capture_logs() as logs:
        async with running(conveyor.Worker(app, concurrency=2)):
            await until(
                lambda: any(e["event"] == "outcomes.write_failed" for e in logs),
                what="the refused outcome given up",
            )
            await until(
                lambda: sum(e["event"] == "job.succeeded" for e in logs) == 5,
                what="the other outcomes written",
            )
    about_bad = [e["event"] for e in logs if e.get("job_id") == bad]
    assert about_bad == ["job.started", "job.outcome_unstorable", "outcomes.write_failed"]
    states = {job.id: (await app.get_job_async(job.id)).state for job in jobs}
    assert states == {
        job.id: JobState.RUNNING if job.id == bad else JobState.SUCCEEDED for job in jobs
    }
