"""At-least-once delivery: leases, heartbeats, rescue of lost workers, leader election."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import conveyor
from conveyor import JobState
from conveyor.job import JOB_COLUMNS, Outcome, Start
from conveyor.services.elector import Elector
from conveyor.services.maintainer import Maintainer
from conveyor.services.rescuer import Rescuer, rescue_expired_leases
from conveyor.testing import running_worker
from conveyor.worker.completer import Completer

from .test_worker import until


async def claim_as(
    app: conveyor.App, worker_id: str, limit: int = 10, begin: bool = True
) -> list[conveyor.Job]:
    """Claim as a worker would: for free slots (`begin`: the jobs begin now), or ahead."""
    now = app.clock.now()
    until = now + app.settings.lease_seconds
    if begin:
        return await app.backend.claim(worker_id, None, limit, until, now)
    # A store claims ahead once it knows no limits are in play (a first claim may look).
    for _ in range(2):
        if jobs := await app.backend.claim(worker_id, None, 0, until, now, ahead=limit):
            return jobs
    return []


async def test_claim_leases_jobs_to_one_worker(
    app: conveyor.App, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock

    @app.task
    def work(i: int) -> None: ...

    work.enqueue_many([(i,) for i in range(5)])
    first = await claim_as(app, "w1", limit=3)
    second = await claim_as(app, "w2", limit=10)
    third = await claim_as(app, "w3")

    assert len(first) == 3 and len(second) == 2 and third == []
    assert not {j.id for j in first} & {j.id for j in second}
    for job in first:
        assert (job.state, job.worker_id, job.attempt) == (JobState.RUNNING, "w1", 1)
        assert job.lease_until == pytest.approx(clock.now() + app.settings.lease_seconds)


@pytest.mark.parametrize(
    ("queues", "limited", "begin"),
    [
        (None, False, True),
        (None, False, False),
        (["mail"], False, False),
        (["mail", "reports"], False, True),
        (["mail", "reports"], False, False),
        (None, True, True),
    ],
    ids=["all", "all-ahead", "one-queue-ahead", "queues", "queues-ahead", "limited"],
)
async def test_a_claimed_job_reads_as_the_store_holds_it(
    app: conveyor.App,
    clock: conveyor.FrozenClock,
    queues: list[str] | None,
    limited: bool,
    begin: bool,
) -> None:
    """Each claim reads its jobs its own way; what it hands the worker is the job `get_job`
    reads afterwards, field for field, and its times are the ones sent (on PostgreSQL they come
    back as epoch seconds, `{job_columns}`, for every read of jobs)."""
    app.clock = clock

    @app.task(queue="mail", max_attempts=4)
    def send(to: str, *, cc: list[str] | None = None) -> None: ...

    @app.task(queue="reports", concurrency=3 if limited else None)
    def report(n: int) -> None: ...

    sent = send.configure(priority=2, meta={"who": "ops"}).enqueue("a@x.org", cc=["b@x.org"])
    send.configure(unique_key="mail:c", delay=5).enqueue("c@x.org")
    report.enqueue(7)
    clock.advance(6)  # the delayed job is due

    now = clock.now()
    until = now + app.settings.lease_seconds
    claimed: list[conveyor.Job] = []
    for _ in range(2):  # a store may look for limits on its first claim
        claimed += await app.backend.claim(
            "w1", queues, 10 if begin else 0, until, now, ahead=0 if begin else 10
        )

    assert sorted(job.queue for job in claimed) == sorted(
        job.queue for job in app.list_jobs() if queues is None or job.queue in queues
    )
    for job in claimed:
        assert {c: getattr(job, c) for c in JOB_COLUMNS} == {
            c: getattr(app.get_job(job.id), c) for c in JOB_COLUMNS
        }
        assert (job.state, job.worker_id, job.started_at is not None) == (
            JobState.RUNNING,
            "w1",
            begin,
        )
        assert job.lease_until == until  # to the microsecond, as the store keeps times
    [first] = [job for job in claimed if job.args == ["a@x.org"]]
    assert (first.created_at, first.run_at) == (sent.created_at, sent.run_at)
    assert (first.kwargs, first.meta, first.priority, first.max_attempts) == (
        {"cc": ["b@x.org"]},
        {"who": "ops"},
        2,
        4,
    )


async def test_lost_worker_job_is_rescued_to_retrying(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=conveyor.fixed(5))
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "ghost")

    assert await rescue_expired_leases(app, app.backend) == 0  # lease still running
    clock.advance(31)
    with capture_logs() as logs:
        assert await rescue_expired_leases(app, app.backend) == 1

    job.refresh()
    assert (job.state, job.attempt) == (JobState.RETRYING, 1)
    assert job.run_at == pytest.approx(clock.now() + 5)
    assert job.errors[-1]["type"] == "WorkerLost"
    assert job.errors[-1]["message"] == "worker lost"
    assert job.errors[-1]["worker"] == "ghost"
    assert app.job_history(job.id)[-1].note == "worker lost: ghost"
    assert [e["event"] for e in logs] == ["lease.rescued"]
    assert logs[0]["job_id"] == job.id


async def test_lost_worker_with_no_attempts_left_is_dead(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(max_attempts=1, retry_on=(ConnectionError,))
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "ghost")
    clock.advance(31)
    await rescue_expired_leases(app, app.backend)

    job.refresh()
    assert (job.state, job.attempt) == (JobState.DEAD, 1)
    assert job.errors[-1]["message"] == "worker lost"


async def test_worker_lost_is_retried_even_when_retry_on_is_narrow(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(max_attempts=3, retry_on=(ConnectionError,))
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "ghost")
    clock.advance(31)
    await rescue_expired_leases(app, app.backend)

    assert job.refresh().state is JobState.RETRYING


async def test_heartbeat_keeps_the_lease_alive(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "alive")
    worker = conveyor.WorkerInfo(
        id="alive",
        host="h",
        pid=1,
        queues=None,
        concurrency=1,
        started_at=clock.now(),
        last_beat=clock.now(),
        running=[job.id],
    )
    clock.advance(20)
    await app.backend.heartbeat(worker, [(job.id, 1)], clock.now() + 30)
    clock.advance(20)  # 40 s after the claim, 20 s after the beat

    assert await rescue_expired_leases(app, app.backend) == 0
    assert job.refresh().lease_until == pytest.approx(clock.now() + 10)


async def test_late_outcome_of_a_rescued_job_is_ignored(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=[0])
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "slowpoke")
    clock.advance(31)
    await rescue_expired_leases(app, app.backend)
    await claim_as(app, "rescuer")

    late = Outcome(job.id, "slowpoke", 1, JobState.SUCCEEDED, clock.now(), result="1")
    assert await app.backend.complete([late]) == []
    job.refresh()
    assert (job.state, job.worker_id, job.attempt) == (JobState.RUNNING, "rescuer", 2)


async def test_rescue_never_overrides_a_live_lease(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "alive")
    stale = Outcome(
        job.id,
        "alive",
        1,
        JobState.RETRYING,
        clock.now(),
        run_at=clock.now(),
        lease_expired_before=clock.now(),
    )
    assert await app.backend.complete([stale]) == []
    assert job.refresh().state is JobState.RUNNING


async def test_one_leader_at_a_time(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    first = make_app(clock=clock)
    second = make_app(clock=clock)
    now = clock.now()
    assert await first.backend.try_lead("maintenance", "a", now + 30, now)
    assert not await second.backend.try_lead("maintenance", "b", now + 30, now)
    assert await first.backend.try_lead("maintenance", "a", now + 40, now + 10)  # renews
    assert not await second.backend.try_lead("maintenance", "b", now + 40, now + 10)
    await first.backend.resign("maintenance", "a")
    assert await second.backend.try_lead("maintenance", "b", now + 50, now + 20)
    assert not await first.backend.try_lead("maintenance", "a", now + 50, now + 20)
    await second.backend.resign("maintenance", "b")


async def test_only_the_leader_rescues(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=[0])
    def work() -> None: ...

    job = work.enqueue()
    await claim_as(app, "ghost")
    clock.advance(31)
    other = make_app(lease_seconds=30, clock=clock)
    async with (
        leadership(app, "leader") as (leader, rescuer),
        leadership(other, "follower") as (follower, idle),
    ):
        await leader.run_once()
        assert leader.is_leader
        await until(lambda: rescuer.rounds >= 1)
        assert job.refresh().state is JobState.RETRYING

        await claim_as(app, "ghost-2")
        clock.advance(20)
        await leader.run_once()  # renews its leadership
        clock.advance(15)  # ghost-2's lease has run out; the leader's has not
        await follower.run_once()
        assert not follower.is_leader
        await asyncio.sleep(0.1)
        assert idle.rounds == 0
        assert job.refresh().state is JobState.RUNNING


@contextlib.asynccontextmanager
async def leadership(app: conveyor.App, holder: str) -> AsyncIterator[tuple[Elector, Rescuer]]:
    """An elector whose rounds the test drives, and the rescuer run while it leads (a minute
    apart: the test sees its first round only)."""
    rescuer = Rescuer(app, app.backend, interval=60, leader_id=holder)
    maintainer = Maintainer([rescuer])
    elector = Elector(
        app, app.backend, holder, interval=60, on_change=maintainer.leadership_changed
    )
    running = asyncio.create_task(maintainer.run())
    try:
        yield elector, rescuer
    finally:
        maintainer.stop()
        await running
        await elector.resign()


async def test_running_worker_rescues_a_lost_workers_job(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app(lease_seconds=0.5)

    @app.task(backoff=[0])
    def work() -> str:
        return "done"

    job = work.enqueue()
    await claim_as(app, "ghost")  # claimed by a worker that never beats or finishes
    worker = conveyor.Worker(app)
    running = asyncio.create_task(worker.run_async())
    try:
        assert await job.wait_async(timeout=20) == "done"
    finally:
        worker.stop()
        await running
    job.refresh()
    assert job.attempt == 2
    assert job.errors[0]["message"] == "worker lost"


async def test_a_heartbeat_tells_which_attempts_are_still_the_workers(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=conveyor.fixed(0))
    def work() -> None: ...

    kept, taken, stray = work.enqueue(), work.enqueue(), work.enqueue()
    await claim_as(app, "w")

    def info() -> conveyor.WorkerInfo:
        return conveyor.WorkerInfo(
            id="w",
            host="h",
            pid=1,
            queues=None,
            concurrency=2,
            started_at=clock.now(),
            last_beat=clock.now(),
            running=[kept.id, taken.id],
        )

    beat = await app.backend.heartbeat(info(), [(kept.id, 1), (taken.id, 1)], clock.now() + 30)
    assert beat.extended == {(kept.id, 1), (taken.id, 1)}
    assert beat.unknown == {(stray.id, 1)}  # running under "w", not named: asked to look
    named = [(kept.id, 1), (taken.id, 1)]
    beat = await app.backend.heartbeat(info(), named, clock.now() + 30, look=False)
    assert (beat.extended, beat.unknown) == ({(kept.id, 1), (taken.id, 1)}, set())
    # `taken` finished elsewhere meanwhile (an old attempt's beat must not renew a new one)
    done = Outcome(taken.id, "w", 1, JobState.SUCCEEDED, clock.now(), result="1")
    assert await app.backend.complete([done]) == [taken.id]
    beat = await app.backend.heartbeat(info(), [(kept.id, 1), (taken.id, 1)], clock.now() + 30)
    assert beat.extended == {(kept.id, 1)}
    assert beat.cancel == set()
    kept.cancel()
    pairs = [(kept.id, 1), (kept.id, 0)]
    beat = await app.backend.heartbeat(info(), pairs, clock.now() + 30, look=False)
    assert beat.extended == {(kept.id, 1)}  # not attempt 0: no such attempt runs
    assert beat.cancel == {kept.id}  # the renewal says so, without a look at everything


async def test_a_replaced_leader_can_no_longer_rescue_or_fire(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """A leader that froze past its lease is replaced; when it wakes, the rescues and cron
    fires it had decided change nothing: the store checks that it still leads."""
    first = make_app(lease_seconds=30, clock=clock)
    second = make_app(lease_seconds=30, clock=clock)

    @first.task(name="work", backoff=conveyor.fixed(0))
    def work() -> None: ...

    job = work.enqueue()
    [claimed] = await claim_as(first, "ghost")

    async def lead(app: conveyor.App, holder: str, lease: float) -> bool:
        now = clock.now()
        return await app.backend.try_lead("maintenance", holder, now + lease, now)

    assert await lead(first, "first", 1.5)
    assert not await lead(second, "second", 1.5)
    clock.advance(1.6)  # the first leader is frozen: no renewal, on any clock
    await asyncio.sleep(1.6)
    assert await lead(second, "second", 1.5)
    assert await lead(second, "second", 30)  # and renews it for longer than this test takes

    rescue = Outcome(
        job.id,
        "ghost",
        1,
        JobState.RETRYING,
        clock.now(),
        run_at=clock.now(),
        error={"type": "WorkerLost", "message": "worker lost"},
        lease_expired_before=(claimed.lease_until or 0) + 31,
        leader="first",
    )
    assert await first.backend.complete([rescue]) == []
    assert job.refresh().state is JobState.RUNNING
    assert await first.backend.fire_periodic("entry", 60.0, None, clock.now(), "first") is None
    assert first.periodic_ticks() == {}

    taken_over = dataclasses.replace(rescue, leader="second")
    assert await second.backend.complete([taken_over]) == [job.id]
    assert job.refresh().state is JobState.RETRYING
    await second.backend.fire_periodic("entry", 60.0, None, clock.now(), "second")
    assert set(second.periodic_ticks()) == {"entry"}
    await second.backend.resign("maintenance", "second")


async def test_a_worker_stops_a_job_the_store_gave_to_another(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """The store rescued a job from a worker it thought lost, but the worker lives on (it was
    cut off, or paused). At its next heartbeat the worker learns the job is no longer its own
    and stops it, as a cancel would: the task sees it, and no outcome of that attempt lands."""
    app = make_app(lease_seconds=300, clock=clock)
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.task(backoff=conveyor.fixed(3600), pass_context=True)
    async def long_call(ctx: conveyor.Context) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    job = long_call.enqueue()
    worker = conveyor.Worker(app)
    with capture_logs() as logs:
        task = asyncio.create_task(worker.run_async())
        try:
            await asyncio.wait_for(started.wait(), 10)
            await until(lambda: job.refresh().started_at is not None, what="the start written")
            worker.heartbeat.stop()  # the worker is cut off: no beat gets through
            clock.advance(301)
            await rescue_expired_leases(app, app.backend)  # or the worker's own leader does
            assert (await app.get_job_async(job.id)).state is JobState.RETRYING
            await worker.beat()  # it is back
            await asyncio.wait_for(stopped.wait(), 10)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 20)
    job.refresh()
    assert (job.state, job.attempt) == (JobState.RETRYING, 1)
    assert [e["type"] for e in job.errors] == ["WorkerLost"]
    lost = [e for e in logs if e["event"] == "job.lease_lost"]
    assert [(e["job_id"], e["attempt"]) for e in lost] == [(job.id, 1)]
    discarded = [e for e in logs if e["event"] == "job.outcome_discarded"]
    assert [e["job_id"] for e in discarded] == [job.id]


async def test_a_claim_whose_answer_never_arrived_is_handed_back(
    make_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim cut off by a timeout may still be carried out by the server later, for a worker
    that gave up on it. The worker's next heartbeat finds jobs running under its name that it
    does not run, and hands them back at once, the attempt not counted — instead of leaving
    them to wait out their lease and lose an attempt."""
    app = make_app(lease_seconds=300)

    @app.task(queue="elsewhere")
    def work() -> None: ...

    job = work.enqueue()
    worker = conveyor.Worker(app, queues=["mine"])  # it never claims `elsewhere` itself
    claim = app.backend.claim
    late: list[conveyor.Job] = []

    async def answer_lost(worker_id: str, *args: Any, **kwargs: Any) -> list[conveyor.Job]:
        if late:
            return await claim(worker_id, *args, **kwargs)
        now = app.clock.now()  # the server carries out a claim; its answer never arrives
        late.extend(await claim(worker_id, ["elsewhere"], 1, now + 300, now))
        raise conveyor.BackendUnavailable("the claim's answer was lost")

    monkeypatch.setattr(app.backend, "claim", answer_lost)
    with capture_logs() as logs:
        async with running_worker(worker):
            await until(lambda: bool(late), what="the claim whose answer is lost")
            for _ in range(20):  # a beat with a claim of its own in flight leaves them be
                await worker.beat()
                await worker.completer.flush()
                if (await app.get_job_async(job.id)).state is JobState.QUEUED:
                    break
                await asyncio.sleep(0.05)
    job.refresh()
    assert (job.state, job.attempt) == (JobState.QUEUED, 0)
    assert app.job_history(job.id)[-1].note == "claimed too late: handed back"
    assert [e["jobs"] for e in logs if e["event"] == "worker.unknown_claims"] == [[late[0].id]]


async def test_a_job_whose_lease_lapsed_before_it_began_is_handed_back_at_once(
    make_app: Callable[..., conveyor.App],
) -> None:
    """A worker paused right after a claim (a long GC pause, a slow machine) finds the lease of
    a job it has not begun already lapsed, and stops it before its first step. The job must go
    back to the queue at once, the attempt not counted — not stay `running` under this worker,
    its lease renewed by every heartbeat, until the worker stops."""
    app = make_app(lease_seconds=300)

    @app.task(queue="elsewhere")
    async def work() -> None: ...

    job = work.enqueue()
    worker = conveyor.Worker(app, queues=["mine"])  # it never claims `elsewhere` itself
    async with running_worker(worker):
        [claimed] = await claim_as(app, worker.id, 1)
        worker._start(claimed, lease_ends=time.monotonic() - 1)  # paused past it, as claimed
        worker.drop_lapsed_leases()  # before the job's first step
        await until(lambda: job.refresh().state is not JobState.RUNNING, what="the hand-back")
        assert (job.state, job.attempt) == (JobState.QUEUED, 0)  # while the worker still runs
        assert app.job_history(job.id)[-1].note == "lease lost before it began: handed back"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_worker_paused_as_a_job_begins_does_not_run_it_past_its_lease(
    make_app: Callable[..., conveyor.App], kind: str
) -> None:
    """A worker paused between a job's lease check and its task's first line (SIGSTOP, a long
    pause of the machine) resumes after the lease ran out: the store may have given the job to
    another worker meanwhile. The task must not run here; the job goes back uncounted."""
    app = make_app(lease_seconds=300)
    ran: list[int] = []

    if kind == "async":

        @app.task(name="work", queue="elsewhere")
        async def work() -> None:
            ran.append(1)

    else:

        @app.task(name="work", queue="elsewhere")
        def work() -> None:
            ran.append(1)

    job = work.enqueue()
    worker = conveyor.Worker(app, queues=["mine"])  # it never claims `elsewhere` itself
    async with running_worker(worker):
        [claimed] = await claim_as(app, worker.id, 1, begin=False)
        recorded = worker._executor.began

        def paused_as_it_begins(job: conveyor.Job, at: float) -> None:
            recorded(job, at)
            time.sleep(0.3)  # past the lease below, after the executor's first check

        worker._executor.began = paused_as_it_begins
        worker._start(claimed, lease_ends=time.monotonic() + 0.1)
        await until(lambda: job.refresh().state is not JobState.RUNNING, what="the hand-back")
        assert ran == []
        assert (job.state, job.attempt) == (JobState.QUEUED, 0)
        assert app.job_history(job.id)[-1].note == "lease lost before it began: handed back"


# -- jobs claimed ahead (prefetch) ---------------------------------------------------------------


async def test_a_claimed_job_counts_as_begun_only_once_its_start_is_recorded(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(backoff=conveyor.fixed(5))
    def work(i: int) -> None: ...

    ahead, begun = work.enqueue_many([(1,), (2,)])
    [claimed_ahead] = await claim_as(app, "ghost", limit=1, begin=False)
    await claim_as(app, "ghost", limit=1)
    assert claimed_ahead.id == ahead.id
    for job in (ahead, begun):
        job.refresh()
        assert (job.state, job.worker_id, job.attempt) == (JobState.RUNNING, "ghost", 1)
    assert ahead.started_at is None  # shown as claimed ahead, not begun
    assert begun.started_at == pytest.approx(clock.now())

    clock.advance(31)  # the worker is lost
    assert await rescue_expired_leases(app, app.backend) == 2

    ahead.refresh(), begun.refresh()
    assert (ahead.state, ahead.attempt, ahead.errors) == (JobState.QUEUED, 0, [])
    assert app.job_history(ahead.id)[-1].note == "worker lost before it began: ghost"
    assert (begun.state, begun.attempt) == (JobState.RETRYING, 1)
    assert begun.errors[-1]["type"] == "WorkerLost"


async def test_a_job_lost_twice_before_it_began_counts_the_second_attempt(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """A task that kills its worker before the start is written (os._exit, a segfault, the
    OOM killer) is lost "before it began" each time: it must not come back uncounted for ever."""
    app = make_app(lease_seconds=30, clock=clock)

    @app.task(max_attempts=2, backoff=conveyor.fixed(0))
    def crashes() -> None: ...

    job = crashes.enqueue()
    for _ in range(3):
        await claim_as(app, "ghost", begin=False)
        clock.advance(31)
        assert await rescue_expired_leases(app, app.backend) == 1
    job.refresh()
    assert (job.state, job.attempt) == (JobState.DEAD, 2)
    notes = [e.note for e in app.job_history(job.id) if e.from_state is JobState.RUNNING]
    lost = "worker lost: ghost"
    assert notes == ["worker lost before it began: ghost", lost, lost]


async def test_a_start_is_recorded_once_and_only_for_the_attempt_still_running_there(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task
    def work() -> None: ...

    job = work.enqueue()
    [claimed] = await claim_as(app, "w1", begin=False)
    began = clock.now()
    clock.advance(2)
    stale = [Start(job.id, "w1", claimed.attempt + 1, clock.now(), 0.0)]  # another attempt
    elsewhere = [Start(job.id, "w2", claimed.attempt, clock.now(), 0.0)]  # another worker
    await app.backend.complete([], [*stale, *elsewhere])
    assert job.refresh().started_at is None
    await app.backend.complete([], [Start(job.id, "w1", claimed.attempt, clock.now(), 2.0)])
    assert job.refresh().started_at == pytest.approx(began)
    clock.advance(1)
    await app.backend.complete([], [Start(job.id, "w1", claimed.attempt, clock.now(), 0.0)])
    assert job.refresh().started_at == pytest.approx(began)  # recorded once
    clock.advance(1)
    done = Outcome(job.id, "w1", claimed.attempt, JobState.SUCCEEDED, clock.now(), ran_for=4.5)
    assert await app.backend.complete([done]) == [job.id]
    # the outcome's own measure wins over the estimate sent while it ran
    assert job.refresh().started_at == pytest.approx(clock.now() - 4.5)


async def test_an_outcome_records_when_an_attempt_began(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(lease_seconds=30, clock=clock)

    @app.task
    def work() -> None: ...

    ran, never_began = work.enqueue_many([(), ()])
    claimed = {j.id: j for j in await claim_as(app, "w1", begin=False)}
    clock.advance(3)
    outcomes = [
        Outcome(ran.id, "w1", claimed[ran.id].attempt, JobState.SUCCEEDED, clock.now(), ran_for=2),
        Outcome(
            never_began.id, "w1", claimed[never_began.id].attempt, JobState.QUEUED, clock.now()
        ),
    ]
    assert sorted(await app.backend.complete(outcomes)) == sorted([ran.id, never_began.id])
    assert ran.refresh().started_at == pytest.approx(clock.now() - 2)
    assert ran.finished_at is not None and ran.started_at is not None
    assert ran.finished_at - ran.started_at == pytest.approx(2)
    assert never_began.refresh().started_at is None
    assert (never_began.state, never_began.attempt) == (JobState.QUEUED, 0)


async def test_an_outcome_is_recorded_at_its_own_time_however_long_it_waited_to_be_written(
    app: conveyor.App,
) -> None:
    """On the store's own clock too (the App's clock is the system's): an outcome made 0.4 s
    before its write (it waited in a worker's batch, or out an outage) after a 0.05 s run
    records the job finished 0.4 s and begun 0.45 s before the write, not at the write: neither
    the wait before a job starts nor its run is stretched by how its outcome was written."""

    @app.task
    def work() -> None: ...

    job = work.enqueue()
    [claimed] = await claim_as(app, "w1", begin=False)
    await asyncio.sleep(0.5)  # (it began after it was created: no start is ever before that)
    ended = time.time() - 0.4
    done = Outcome(job.id, "w1", claimed.attempt, JobState.SUCCEEDED, ended, ran_for=0.05)
    assert await app.backend.complete([done]) == [job.id]
    written = time.time()
    job.refresh()
    assert job.finished_at is not None and job.started_at is not None
    assert job.finished_at == pytest.approx(written - 0.4, abs=0.15)
    assert job.started_at == pytest.approx(written - 0.45, abs=0.15)
    assert job.finished_at - job.started_at == pytest.approx(0.05, abs=0.01)


async def test_a_start_written_after_an_outage_is_recorded_when_the_job_began(
    app: conveyor.App,
) -> None:
    """A job claimed ahead counts as begun once a worker writes its start. A write the store
    cannot take (out of reach for a while) is tried again, and the start it carries still says
    when the job began: not as long after it as the outage lasted."""

    @app.task
    def work() -> None: ...

    job = work.enqueue()
    [claimed] = await claim_as(app, "w1", begin=False)
    await asyncio.sleep(0.3)  # (it begins after it was created: no start is ever before that)
    store = app.backend
    refused: list[Any] = []

    class OutOfReachAtFirst:
        """The store, but the first write fails after 0.6 s, as one to a server out of reach."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def complete(self, outcomes: Any, starts: Any = ()) -> list[int]:
            if not refused:
                refused.append(starts)
                await asyncio.sleep(0.6)
                raise conveyor.BackendUnavailable("out of reach")
            return await store.complete(outcomes, starts)

    completer = Completer(OutOfReachAtFirst(), lambda *_: None, app.clock.now)  # type: ignore[arg-type]
    writing = asyncio.create_task(completer.run())
    began = time.time()
    completer.began(claimed, time.monotonic())
    while job.refresh().started_at is None:
        await asyncio.sleep(0.05)
    completer.close()
    await writing
    assert refused, "the first write was not refused"
    assert job.started_at == pytest.approx(began, abs=0.15)


async def test_one_write_of_many_outcomes_applies_each_as_if_written_alone(
    app: conveyor.App, clock: conveyor.FrozenClock
) -> None:
    """A worker writes what finished in one batch: each outcome lands on its own job with its
    own result, error and next run, and one that is no longer the job's (another attempt)
    changes nothing, whatever else the batch holds."""
    app.clock = clock

    @app.task(max_attempts=3)
    def work() -> None: ...

    jobs = work.enqueue_many([()] * 5)
    claimed = {j.id: j for j in await claim_as(app, "w1")}
    ok, again, dead, asked_to_stop, stale = (claimed[j.id] for j in jobs)
    jobs[3].cancel()  # while it runs: handed back, it ends cancelled instead
    clock.advance(2)
    now = clock.now()
    boom = {"type": "ValueError", "message": "boom"}
    outcomes = [
        Outcome(ok.id, "w1", ok.attempt, JobState.SUCCEEDED, now, result='{"n": 1}', ran_for=1),
        Outcome(again.id, "w1", again.attempt, JobState.RETRYING, now, run_at=now + 60, error=boom),
        Outcome(dead.id, "w1", dead.attempt, JobState.DEAD, now, error=boom, note="gave up"),
        Outcome(asked_to_stop.id, "w1", asked_to_stop.attempt, JobState.QUEUED, now),
        Outcome(stale.id, "w1", stale.attempt + 1, JobState.SUCCEEDED, now, result="2"),
    ]
    applied = await app.backend.complete(outcomes)
    assert sorted(applied) == sorted([ok.id, again.id, dead.id, asked_to_stop.id])
    ok, again, dead, asked_to_stop, stale = (j.refresh() for j in jobs)
    assert (ok.state, ok.result, ok.progress) == (JobState.SUCCEEDED, {"n": 1}, 100.0)
    assert ok.started_at == pytest.approx(now - 1)
    assert (again.state, again.run_at, again.attempt) == (JobState.RETRYING, now + 60, 1)
    assert [e["message"] for e in again.errors] == ["boom"]
    assert (dead.state, dead.finished_at) == (JobState.DEAD, now)
    assert [e["type"] for e in dead.errors] == ["ValueError"]
    assert (asked_to_stop.state, asked_to_stop.attempt) == (JobState.CANCELLED, 0)
    assert (stale.state, stale.worker_id, stale.result) == (JobState.RUNNING, "w1", None)
