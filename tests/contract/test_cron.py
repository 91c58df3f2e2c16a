"""Periodic jobs on every backend: each tick fired once, whatever the number of schedulers,
leaders or restarts; a missed tick fired once on start (or skipped with catch_up=False)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import conveyor
from conveyor import JobState
from conveyor.services.elector import LEADERSHIP
from conveyor.services.scheduler import Scheduler
from conveyor.testing import wait_rounds

from .test_worker import running, until

#: 2027-01-15 10:07:00 UTC, a Friday: between two ticks of an hourly schedule.
START = dt.datetime(2027, 1, 15, 10, 7, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0


def scheduler(app: conveyor.App) -> Scheduler:
    """A scheduler as the leader runs it: the tests drive its rounds by hand."""
    return Scheduler(app, app.backend, interval=10.0)


def declare(app: conveyor.App, runs: list[int], **options: Any) -> None:
    @app.periodic("0 * * * *", name="sync-storage", args=[7], **options)
    def sync_storage(n: int) -> None:
        runs.append(n)


def fired(app: conveyor.App) -> list[conveyor.Job]:
    return app.list_jobs(task="sync-storage")


@pytest.fixture
def clock() -> conveyor.FrozenClock:
    return conveyor.FrozenClock(START)


async def test_each_tick_is_fired_once_and_the_job_runs(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)
    runs: list[int] = []
    declare(app, runs)
    leader = scheduler(app)

    with capture_logs() as logs:
        await leader.run_once()  # first sight: the schedule starts now, nothing is owed
        assert fired(app) == []
        clock.set(START + 53 * 60 + 0.25)  # 11:00:00.25
        await leader.run_once()
        await leader.run_once()
    [job] = fired(app)
    assert (job.args, job.state) == ([7], JobState.QUEUED)
    events = [(e["event"], e.get("tick")) for e in logs]
    assert events == [
        ("cron.started", "2027-01-15T10:00:00+00:00"),
        ("cron.fired", "2027-01-15T11:00:00+00:00"),
    ]
    assert app.periodic_ticks()["sync-storage"].job_id == job.id

    await app.run_worker_async(burst=True)
    assert runs == [7]
    record = app.periodic_ticks()["sync-storage"]
    assert (record.tick, record.fired_tick) == (START + 53 * 60, START + 53 * 60)
    assert (record.job_id, record.job_state) == (job.id, "succeeded")


async def test_a_second_scheduler_or_a_restart_at_the_tick_fires_nothing_more(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    first, second = make_app(clock=clock), make_app(clock=clock)
    for app in (first, second):
        declare(app, [])
    await scheduler(first).run_once()
    clock.advance(HOUR)

    await asyncio.gather(*(scheduler(app).run_once() for app in (first, second, first)))
    await scheduler(second).run_once()  # a restarted leader: nothing cached
    assert len(fired(first)) == 1


@pytest.mark.parametrize("catch_up", [True, False])
async def test_ticks_missed_while_no_worker_ran(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock, catch_up: bool
) -> None:
    app = make_app(clock=clock)
    declare(app, [], catch_up=catch_up)
    await scheduler(app).run_once()
    clock.advance(5 * HOUR)  # no worker for five hours: five ticks missed

    with capture_logs() as logs:
        await scheduler(app).run_once()  # a worker starts
    assert len(fired(app)) == (1 if catch_up else 0)  # once, not five times
    assert [e["event"] for e in logs] == ["cron.fired" if catch_up else "cron.skipped"]

    clock.set(START - 7 * 60 + 6 * HOUR + 0.5)  # the next tick, on time: fired either way
    await scheduler(app).run_once()
    assert len(fired(app)) == (2 if catch_up else 1)


async def test_the_leader_in_a_worker_fires_on_the_tick(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)
    runs: list[int] = []
    declare(app, runs)
    worker = conveyor.Worker(app)
    async with running(worker):
        await until(lambda: hasattr(worker, "maintainer") and worker.maintainer.running)
        await wait_rounds(worker.scheduler, kick=True)  # the schedule starts
        clock.advance(HOUR)
        worker.scheduler.kick()
        await until(lambda: runs == [7])


async def test_only_the_leader_fires(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)
    declare(app, [])

    async def lead_elsewhere() -> None:
        now = clock.now()
        assert await app.backend.try_lead(LEADERSHIP, "elsewhere", now + HOUR, now)

    await lead_elsewhere()
    worker = conveyor.Worker(app)
    try:
        async with running(worker):
            await until(lambda: hasattr(worker, "elector") and worker.elector.rounds >= 1)
            clock.advance(HOUR)
            await lead_elsewhere()  # the leader renews in time
            worker.elector.kick()
            await worker.elector.wait_rounds(1)
            assert not worker.elector.is_leader and not worker.maintainer.running
    finally:
        await app.backend.resign(LEADERSHIP, "elsewhere")
    assert worker.scheduler.rounds == 0
    assert fired(app) == [] and app.periodic_ticks() == {}


async def test_old_ticks_are_pruned_but_each_entrys_latest_stays(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)
    declare(app, [])
    leader = scheduler(app)
    for _ in range(4):
        await leader.run_once()
        clock.advance(HOUR)
    # ticks of 10:00 (first seen), 11:00, 12:00 and 13:00; it is 14:07
    assert await app.backend.prune_ticks(older_than=2.5 * HOUR, now=clock.now()) == 2
    assert await app.backend.prune_ticks(older_than=0, now=clock.now() + 100 * HOUR) == 1
    record = app.periodic_ticks()["sync-storage"]
    assert record.tick == START - 7 * 60 + 3 * HOUR
    # the latest tick is still there to carry on from: the next round owes nothing old
    await leader.run_once()
    assert len(fired(app)) == 4


def test_bad_declarations_are_refused_when_the_task_is_declared(app: conveyor.App) -> None:
    with pytest.raises(conveyor.ValidationError, match="Bad minute"):
        app.periodic("61 * * * *", name="bad")
    with pytest.raises(conveyor.ValidationError, match="unknown time zone"):
        app.periodic("@daily", name="bad", tz="Europe/Pariss")

    with pytest.raises(conveyor.ValidationError, match="bad arguments for task report"):

        @app.periodic("@daily", name="report", args=[1, 2])
        def report(n: int) -> None: ...

    assert "report" not in app.tasks and app.periodics == {}


async def test_task_options_reach_the_jobs_fired(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)
    declare(app, [], queue="reports", priority="high", max_attempts=7)
    with pytest.raises(TypeError, match="queu"):

        @app.periodic("@daily", name="typo", queu="reports")
        def typo() -> None: ...

    leader = scheduler(app)
    await leader.run_once()
    clock.advance(HOUR)
    await leader.run_once()
    [job] = fired(app)
    assert (job.queue, job.priority, job.max_attempts) == ("reports", 3, 7)
