"""Rate and concurrency limits, global across workers: per task, per key, per queue. A job held
back by a limit stays queued with no attempt spent, and runs once a slot frees or its rate
window opens. (Several worker processes: tests/acceptance/test_limits.py.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.testing import drain_async
from conveyor.worker import worker as worker_module

from .test_worker import running, until


class Tally:
    """What a set of tasks saw: how many ran at once (per key), in which order they started."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.started: list[str] = []

    async def run(self, key: str, seconds: float = 0.05) -> None:
        self.started.append(key)
        self.active[key] += 1
        self.most[key] = max(self.most[key], self.active[key])
        try:
            await asyncio.sleep(seconds)
        finally:
            self.active[key] -= 1


async def burst_workers(apps: list[conveyor.App], concurrency: int = 5) -> None:
    """Several workers at once, each until nothing is runnable."""
    await asyncio.gather(*(drain_async(a, concurrency=concurrency, timeout=60) for a in apps))


def states(app: conveyor.App, jobs: list[conveyor.Job]) -> Counter[JobState]:
    return Counter(app.get_job(j.id).state for j in jobs)


# -- concurrency -------------------------------------------------------------------------------


async def test_a_task_concurrency_limit_holds_across_workers(
    make_app: Callable[..., conveyor.App],
) -> None:
    tally = Tally()
    apps = [make_app() for _ in range(3)]
    for app in apps:

        @app.task(name="crunch", concurrency=2)
        async def crunch(i: int) -> None:
            await tally.run("crunch")

    jobs = apps[0].tasks["crunch"].enqueue_many([(i,) for i in range(16)])
    await burst_workers(apps)  # 15 slots between them; the limit lets 2 run
    assert tally.most["crunch"] == 2
    assert len(tally.started) == 16
    done = [apps[0].get_job(j.id) for j in jobs]
    assert {(j.state, j.attempt) for j in done} == {(JobState.SUCCEEDED, 1)}


async def test_a_concurrency_key_limits_each_key_and_lets_the_others_run(
    app: conveyor.App,
) -> None:
    tally = Tally()

    @app.task(name="sync_tenant", concurrency=1, concurrency_key="tenant")
    async def sync_tenant(tenant: str, i: int) -> None:
        await tally.run(tenant)

    sync_tenant.enqueue_many([("acme", i) for i in range(6)])
    sync_tenant.enqueue_many([("globex", i) for i in range(2)])
    sync_tenant.configure(concurrency_key="globex").enqueue("initech", 99)  # the call's key
    await burst_workers([app], concurrency=4)
    assert tally.most == {"acme": 1, "globex": 1, "initech": 1}
    # globex's jobs were not stuck behind acme's backlog, enqueued before them
    assert tally.started.index("globex") < len(tally.started) - 1 - tally.started[::-1].index(
        "acme"
    )


async def test_an_idle_worker_that_ran_plain_jobs_starts_a_limited_one_when_it_arrives(
    make_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Having seen no limits, a worker claims with the plain claim alone; a limited job that
    arrives while it idles is still taken when it arrives, not at the next look of its own."""
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", 120.0)
    app, producer = make_app(), make_app()
    for a in (app, producer):
        a.task(name="plain")(lambda: "plain")
        a.task(name="limited", concurrency=1, concurrency_key="tenant")(lambda tenant: tenant)
    async with running(conveyor.Worker(app)):
        first = await producer.enqueue_async("plain")
        assert await first.wait_async(timeout=10) == "plain"
        await asyncio.sleep(0.2)  # idle, knowing of no limits
        job = await producer.enqueue_async("limited", args=["acme"])
        assert await job.wait_async(timeout=10) == "acme"


async def test_a_queue_concurrency_limit_holds_and_other_queues_run_beside_it(
    make_app: Callable[..., conveyor.App],
) -> None:
    tally = Tally()
    apps = [make_app() for _ in range(2)]
    for app in apps:
        app.queue("video", concurrency=2)

        @app.task(name="render", queue="video")
        async def render(i: int) -> None:
            await tally.run("video")

        @app.task(name="mail")
        async def mail(i: int) -> None:
            await tally.run("mail", 0.01)

    renders = apps[0].tasks["render"].enqueue_many([(i,) for i in range(10)])
    mails = apps[0].tasks["mail"].enqueue_many([(i,) for i in range(10)])
    await burst_workers(apps, concurrency=4)
    assert tally.most["video"] == 2
    assert tally.most["mail"] > 1
    assert states(apps[0], renders + mails) == {JobState.SUCCEEDED: 20}
    assert apps[0].queue_limits() == {"video": 2}


async def test_a_queue_limit_declared_without_concurrency_is_lifted(app: conveyor.App) -> None:
    app.queue("video", concurrency=3)
    await app.run_worker_async(burst=True)
    assert app.queue_limits() == {"video": 3}
    app.queue("video")
    await app.run_worker_async(burst=True)
    assert app.queue_limits() == {}


async def test_a_limited_job_of_higher_priority_starts_before_plain_ones(
    app: conveyor.App,
) -> None:
    tally = Tally()

    @app.task(name="plain")
    async def plain(i: int) -> None:
        await tally.run("plain", 0)

    @app.task(name="limited", concurrency=1)
    async def limited() -> None:
        await tally.run("limited", 0)

    plain.enqueue_many([(i,) for i in range(3)])
    limited.configure(priority="critical").enqueue()
    await burst_workers([app], concurrency=1)
    assert tally.started == ["limited", "plain", "plain", "plain"]


# -- rate --------------------------------------------------------------------------------------


async def test_a_rate_limited_job_waits_queued_for_its_window(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)

    @app.task(name="call_api", rate_limit="2/m")
    def call_api(i: int) -> int:
        return i

    jobs = call_api.enqueue_many([(i,) for i in range(5)])
    async with running(conveyor.Worker(app)):
        await until(lambda: states(app, jobs)[JobState.SUCCEEDED] == 2)
        await asyncio.sleep(0.5)  # the worker looks again and again: nothing more may start
        held = [app.get_job(j.id) for j in jobs[2:]]
        assert {(j.state, j.attempt) for j in held} == {(JobState.QUEUED, 0)}

        clock.advance(59)
        await asyncio.sleep(0.5)
        assert states(app, jobs)[JobState.SUCCEEDED] == 2

        clock.advance(1)  # a minute after the first two started
        await until(lambda: states(app, jobs)[JobState.SUCCEEDED] == 4)
        clock.advance(60)
        await until(lambda: states(app, jobs)[JobState.SUCCEEDED] == 5)
    assert [app.get_job(j.id).result for j in jobs] == [0, 1, 2, 3, 4]


async def test_a_rate_limit_is_kept_per_key(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    app = make_app(clock=clock)

    @app.task(name="notify", rate_limit="1/h", rate_limit_key="tenant")
    def notify(tenant: str, message: str) -> str:
        return f"{tenant}: {message}"

    acme = notify.enqueue_many([("acme", "a"), ("acme", "b")])
    globex = notify.enqueue("globex", "c")
    vip = notify.configure(rate_key="vip").enqueue("acme", "d")  # the call's key wins
    async with running(conveyor.Worker(app)):
        await until(lambda: states(app, [*acme, globex, vip])[JobState.SUCCEEDED] == 3)
        await asyncio.sleep(0.3)
    assert [app.get_job(j.id).state for j in acme] == [JobState.SUCCEEDED, JobState.QUEUED]
    assert app.get_job(globex.id).state is JobState.SUCCEEDED
    assert app.get_job(vip.id).state is JobState.SUCCEEDED


async def test_burst_waits_for_limited_jobs_but_not_for_later_or_paused_ones(
    app: conveyor.App,
) -> None:
    @app.task(name="one_at_a_time", concurrency=1)
    async def one_at_a_time(i: int) -> int:
        await asyncio.sleep(0.02)
        return i

    @app.task(name="paced", rate_limit="2/s")
    def paced(i: int) -> int:
        return i

    @app.task(name="elsewhere", queue="paused")
    def elsewhere() -> None: ...

    limited = one_at_a_time.enqueue_many([(i,) for i in range(4)])
    rated = paced.enqueue_many([(i,) for i in range(5)])  # needs a third window
    later = one_at_a_time.configure(delay=3600).enqueue(99)
    app.pause_queue("paused")
    parked = elsewhere.enqueue()
    await asyncio.wait_for(app.run_worker_async(concurrency=10, burst=True), 60)
    assert states(app, limited + rated) == {JobState.SUCCEEDED: 9}
    assert app.get_job(later.id).state is JobState.SCHEDULED
    assert app.get_job(parked.id).state is JobState.QUEUED
    # when each was claimed: what the rate window counts (each began a moment later)
    starts = sorted(
        h.at for j in rated for h in app.job_history(j.id) if h.to_state is JobState.RUNNING
    )
    assert len(starts) == 5
    assert starts[4] - starts[0] >= 2.0  # two more windows had to open


# -- the edge ----------------------------------------------------------------------------------


def test_bad_limits_are_refused_where_the_task_is_declared(app: conveyor.App) -> None:
    def fn(tenant: str) -> None: ...

    cases: list[tuple[dict[str, Any], str]] = [  # options of every wrong kind
        ({"rate_limit": "100"}, "rate_limit must look like"),
        ({"rate_limit": "0/m"}, "at least 1 start"),
        ({"rate_limit": "5/fortnight"}, "the period must be"),
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"concurrency": True}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"concurrency": 2**31}, "concurrency must be an integer from 1 to 2,147,483,647"),
        ({"rate_limit": "2147483648/s"}, "allows more than 2,147,483,647 starts"),
        ({"concurrency_key": "tenant"}, "concurrency_key needs concurrency="),
        ({"rate_limit": "5/s", "rate_limit_key": "user"}, "has no argument named 'user'"),
    ]
    for options, message in cases:
        with pytest.raises(conveyor.ValidationError, match=message):
            app.task(name=f"t{len(app.tasks)}", **options)(fn)
    with pytest.raises(conveyor.ValidationError, match="concurrency must be an integer"):
        app.queue("video", concurrency=-1)
    assert app.tasks == {}


def test_bad_limit_keys_are_refused_at_enqueue_and_nothing_is_stored(app: conveyor.App) -> None:
    @app.task(name="keyed", concurrency=2, concurrency_key="tenant")
    def keyed(tenant: Any) -> None: ...

    @app.task(name="plain")
    def plain() -> None: ...

    for bad in [None, {"id": 1}, "", "x" * 201, "tab\there"]:
        with pytest.raises(conveyor.ValidationError, match="concurrency_key"):
            keyed.enqueue(bad)
    with pytest.raises(conveyor.ValidationError, match="rate_key needs a rate_limit="):
        plain.configure(rate_key="a").enqueue()
    with pytest.raises(conveyor.ValidationError, match="concurrency_key needs a concurrency="):
        plain.configure(concurrency_key="a").enqueue()
    with pytest.raises(conveyor.ValidationError, match="concurrency_key must be text"):
        keyed.configure(concurrency_key=1.5)
    assert keyed.enqueue(42).state is JobState.QUEUED  # integers are keys too
    assert app.queue_stats() == {"default": {JobState.QUEUED: 1}}
