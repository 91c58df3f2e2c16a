"""Faults a user would notice: cancels that must stick, tasks and policies that misbehave, a
job re-claimed while an old attempt still runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import conveyor
from conveyor import JobState
from conveyor.services.rescuer import rescue_expired_leases
from conveyor.testing import running_worker as running
from conveyor.testing import wait_until as until

from .test_leases import claim_as

# -- a cancel of a running job sticks when the job leaves its worker ---------------------------


async def test_cancel_of_running_job_survives_rescue(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """The user cancels a running job; its worker then dies. The rescuer must not re-queue it."""
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=conveyor.fixed(0))
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "ghost")
    job.cancel()  # running: cancel requested
    clock.advance(31)
    await rescue_expired_leases(app, app.backend)

    job.refresh()
    # The rescue honours the cancel request: cancelled, not retrying (and run again).
    assert job.state is JobState.CANCELLED, (job.state, job.cancel_requested)


async def test_cancel_of_running_job_survives_shutdown_hand_back(app: conveyor.App) -> None:
    """Cancel a running sync job, then stop the worker before its next heartbeat: the job is
    cancelled, not handed back to `queued` with the request erased for the next worker to run."""
    started, release = threading.Event(), threading.Event()

    @app.task
    def hold() -> None:
        started.set()
        release.wait(5)

    job = hold.enqueue()
    worker = conveyor.Worker(app, grace=0)
    try:
        async with running(worker):
            await until(started.is_set)
            await app.cancel_job_async(job.id)
            worker.stop()
    finally:
        release.set()
    await job.refresh_async()
    assert job.state is JobState.CANCELLED, (job.state, job.cancel_requested)


# -- whatever a task or its policy raises, the job gets an outcome, never stays `running` ------


def test_async_task_raising_cancelled_error_gets_an_outcome(app: conveyor.App) -> None:
    @app.task(max_attempts=1)
    async def flaky_io() -> None:
        raise asyncio.CancelledError()  # e.g. an HTTP client's internal cancellation leaking out

    job = flaky_io.enqueue()
    app.run_worker(burst=True)
    job.refresh()
    # The task's own CancelledError is its failure: the job is dead when the burst worker
    # returns, not left `running` under a worker that is gone for the rescuer to find.
    assert job.state is JobState.DEAD, job.state


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("broken __str__")


def test_exception_with_broken_str_gets_an_outcome(app: conveyor.App) -> None:
    @app.task(max_attempts=1)
    def boom() -> None:
        raise BadStr()

    job = boom.enqueue()
    app.run_worker(burst=True)
    job.refresh()
    assert job.state is JobState.DEAD, job.state


def test_buggy_backoff_callable_gets_an_outcome(app: conveyor.App) -> None:
    @app.task(max_attempts=3, backoff=lambda attempt: 1 / 0)
    def fails() -> None:
        raise ValueError("nope")

    job = fails.enqueue()
    app.run_worker(burst=True)
    job.refresh()
    assert job.state is not JobState.RUNNING, job.state


async def test_one_buggy_backoff_does_not_block_every_rescue(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(name="bad", backoff=lambda attempt: 1 / 0)
    def bad() -> None: ...

    @app.task(name="good", backoff=conveyor.fixed(1))
    def good() -> None: ...

    bad.enqueue()
    ok = good.enqueue()
    await claim_as(app, "ghost")
    clock.advance(31)
    await rescue_expired_leases(app, app.backend)  # the broken policy must not stop the round
    ok.refresh()
    assert ok.state is JobState.RETRYING, ok.state


# -- the same worker re-claiming a job it still runs keeps the two attempts apart --------------


async def test_reclaimed_job_does_not_get_the_old_attempts_outcome(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """The lease lapses (store locked, loop stalled) while the worker is alive; the rescuer puts the
    job back and the SAME worker claims it again. When attempt 1 then returns, its outcome must
    not be written over attempt 2, which is still running."""
    app = make_app(lease_seconds=30, clock=clock)
    gates = [asyncio.Event(), asyncio.Event()]
    runs: list[int] = []

    @app.task(backoff=conveyor.fixed(0), pass_context=True)
    async def work(ctx: conveyor.Context) -> str:
        n = len(runs)
        runs.append(ctx.attempt)
        await gates[n].wait()
        return f"run {n + 1}"

    job = work.enqueue()
    worker = conveyor.Worker(app, concurrency=4)
    async with running(worker):
        await until(lambda: len(runs) == 1)
        # The worker's own rescuer has had its first round; the next is 10 s away, so the
        # rescue below is this test's alone.
        await until(lambda: worker.rescuer.rounds >= 1)
        clock.advance(31)
        assert await rescue_expired_leases(app, app.backend) == 1
        await until(lambda: len(runs) == 2)  # the same worker runs attempt 2
        gates[0].set()  # attempt 1 returns
        await until(lambda: worker.processed == 1)  # and its outcome has gone to the store
        await job.refresh_async()
        state_while_attempt_2_runs = job.state
        gates[1].set()
    await job.refresh_async()
    assert runs == [1, 2]
    # Attempt 1's outcome is not written over attempt 2 while it runs; attempt 2's is the one
    # that lands.
    assert state_while_attempt_2_runs is JobState.RUNNING, state_while_attempt_2_runs
    assert job.result == "run 2", job.result


# -- text no store keeps, written by a task, is made storable and holds back nothing -----------

POISON = "bad\x00text\ud800!"  # a NUL (PostgreSQL refuses it) and a lone surrogate (not UTF-8)
STORED = "bad\ufffdtext\ufffd!"


def test_what_a_task_writes_is_made_storable_and_holds_back_nothing(app: conveyor.App) -> None:
    """Error messages, tracebacks, results, stages and reasons with a NUL or a lone surrogate
    are stored with U+FFFD in their place, on every backend; the jobs finishing beside them in
    the same batch are written as usual, and a burst worker ends."""

    @app.task(max_attempts=1)
    def raises() -> None:
        raise ValueError(POISON)

    @app.task
    def returns() -> dict[str, str]:
        return {POISON: POISON}

    @app.task(pass_context=True)
    def reports(ctx: conveyor.Context) -> None:
        ctx.progress(50, stage=POISON, message=POISON)

    @app.task
    def discards() -> None:
        raise conveyor.Discard(POISON)

    @app.task
    def plain(n: int) -> int:
        return n

    poison = [raises.enqueue(), returns.enqueue(), reports.enqueue(), discards.enqueue()]
    ordinary = plain.enqueue_many([(n,) for n in range(20)])
    app.run_worker(burst=True, concurrency=8)

    failed, returned, reported, discarded = (job.refresh() for job in poison)
    assert failed.state is JobState.DEAD
    assert failed.errors[0]["message"] == STORED
    assert STORED in failed.errors[0]["traceback"]
    assert (returned.state, returned.result) == (JobState.SUCCEEDED, {STORED: STORED})
    assert (reported.state, reported.stage) == (JobState.SUCCEEDED, STORED)
    assert discarded.state is JobState.DEAD
    assert app.job_history(discarded.id)[-1].note == f"discarded: {STORED}"
    assert [job.refresh().state for job in ordinary] == [JobState.SUCCEEDED] * 20
