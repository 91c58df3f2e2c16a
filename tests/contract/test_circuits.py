"""Circuits: downstream failures of tasks behind one open it for every worker; its jobs are then
held — queued, no attempt spent — until the leader's probe gets an answer (half-open: a few run,
the first success closes it) or someone closes it by hand."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.circuit import CircuitInfo, CircuitState
from conveyor.testing import wait_rounds

from .test_worker import running, until

#: a task of any signature, as `@app.task` returns it
AnyTask = conveyor.Task[Any, Any]


class Downstream:
    """A stand-in service the tasks call: up or down, and how often it was called."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def call(self, n: int) -> int:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return n * 10


def states(app: conveyor.App, jobs: list[conveyor.Job]) -> Counter[JobState]:
    return Counter(app.get_job(j.id).state for j in jobs)


def settled(app: conveyor.App, jobs: list[conveyor.Job]) -> bool:
    """No job of these runs now: each is held (or waits for its retry)."""
    return set(states(app, jobs)) <= {JobState.QUEUED, JobState.RETRYING}


def circuit(app: conveyor.App, name: str) -> Any:
    """The circuit as the store has it (a closed stand-in before it has a row)."""
    found = [c for c in app.circuit_states() if c.name == name]
    return found[0] if found else CircuitInfo(name, CircuitState.CLOSED, 0, None, None, None, 0)


@pytest.fixture
def downstream() -> Downstream:
    return Downstream()


def declare(app: conveyor.App, downstream: Downstream, **options: Any) -> AnyTask:
    options.setdefault("failure_threshold", 3)
    options.setdefault("probe", lambda: downstream.up)
    options.setdefault("schedule", [("1h", "1m"), (None, "10m")])
    render = app.circuit("render-worker", **options)

    @app.task(name="assemble", circuit=render, backoff=conveyor.fixed(0), max_attempts=2)
    def assemble(n: int) -> int:
        return downstream.call(n)

    return assemble


async def test_an_outage_holds_the_jobs_and_they_run_once_the_probe_answers(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock, downstream: Downstream
) -> None:
    app = make_app(clock=clock)
    assemble = declare(app, downstream)
    jobs = assemble.enqueue_many([(i,) for i in range(6)])
    async with running(conveyor.Worker(app, concurrency=1)) as worker:
        await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
        await until(lambda: settled(app, jobs))  # no failure still on its way
        calls = downstream.calls
        assert calls == 3  # the threshold: three failures in a row
        await asyncio.sleep(0.3)
        assert downstream.calls == calls
        held = [app.get_job(j.id) for j in jobs]
        # no attempt spent: max_attempts=2 and three failures, yet nothing is dead
        assert {j.state for j in held} <= {JobState.QUEUED, JobState.RETRYING}
        assert {j.attempt for j in held} == {0}
        assert {j.held_by for j in held} == {"render-worker"}
        assert held[0].status_message == "Queued — will run when render-worker is back"
        assert circuit(app, "render-worker").held == 6

        clock.advance(59)  # the schedule: a probe a minute after opening
        await wait_rounds(worker.prober, kick=True)
        assert circuit(app, "render-worker").state is CircuitState.OPEN  # not probed yet
        downstream.up = True
        clock.advance(1)
        worker.prober.kick()
        await until(lambda: states(app, jobs)[JobState.SUCCEEDED] == 6)
    assert [app.get_job(j.id).result for j in jobs] == [0, 10, 20, 30, 40, 50]
    assert {app.get_job(j.id).attempt for j in jobs} == {1}
    assert circuit(app, "render-worker").state is CircuitState.CLOSED
    log = app.circuit_log("render-worker")
    assert [e.event for e in log] == ["closed", "half_open", "opened"]
    assert log[2].held == 6 and "ConnectionRefusedError" in (log[2].reason or "")
    assert log[0].open_for == pytest.approx(60, abs=1)


async def test_a_job_a_claim_brings_in_while_its_circuit_opens_here_is_handed_back(
    make_app: Callable[..., conveyor.App],
    downstream: Downstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim on its way while this worker's failure opens the circuit brings in a job behind
    it: the job goes back to the queue, its attempt not counted, and the downstream that just
    failed is not called again."""
    app = make_app()
    render = app.circuit("render-worker", failure_threshold=1, probe=None)
    go = threading.Event()

    @app.task(name="assemble", circuit=render, backoff=conveyor.fixed(0), max_attempts=2)
    def assemble(n: int) -> int:
        if n == 1:
            go.wait(10)  # fails once the second job's claim is on its way
        return downstream.call(n)

    first = assemble.enqueue(1)
    second: list[conveyor.Job] = []
    claim = app.backend.claim

    async def claim_while_it_opens(*args: Any, **kwargs: Any) -> list[conveyor.Job]:
        jobs = await claim(*args, **kwargs)
        # by its argument: the claim may come before `enqueue` has returned the handle
        if any(job.args == [2] for job in jobs):
            go.set()
            await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
            await asyncio.sleep(0.1)  # the worker has heard its report's answer
        return jobs

    monkeypatch.setattr(app.backend, "claim", claim_while_it_opens)
    async with running(conveyor.Worker(app, concurrency=2, prefetch=0)):
        await until(lambda: app.get_job(first.id).worker_id is not None, what="the first job")
        second.append(await asyncio.to_thread(assemble.enqueue, 2))
        await until(lambda: go.is_set(), what="the second job's claim")
        await until(lambda: settled(app, [first, *second]), what="both jobs held")
    assert downstream.calls == 1
    held = app.get_job(second[0].id)
    assert (held.state, held.attempt, held.held_by) == (JobState.QUEUED, 0, "render-worker")


async def test_a_failing_probe_keeps_the_circuit_open_and_probes_on_schedule(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock, downstream: Downstream
) -> None:
    app = make_app(clock=clock)
    probes: list[float] = []

    def probe() -> bool:
        probes.append(clock.now())
        return downstream.up

    assemble = declare(app, downstream, probe=probe, schedule=[("2m", "1m"), (None, "10m")])
    job = assemble.enqueue(1)
    async with running(conveyor.Worker(app)) as worker:
        await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
        opened = clock.now()
        for probed, minutes in enumerate((1, 2, 12), start=1):  # each minute for two, then ten
            clock.set(opened + minutes * 60)
            await wait_rounds(worker.prober, kick=True)
            assert len(probes) == probed
        await wait_rounds(worker.prober, kick=True)
        assert len(probes) == 3
    assert [p - opened for p in probes] == [60, 120, 720]
    assert app.get_job(job.id).held_by == "render-worker"


async def test_closing_by_hand_releases_the_held_jobs(
    make_app: Callable[..., conveyor.App], downstream: Downstream
) -> None:
    app = make_app()
    assemble = declare(app, downstream, probe=None)
    jobs = assemble.enqueue_many([(i,) for i in range(4)])
    async with running(conveyor.Worker(app)):
        await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
        await until(lambda: settled(app, jobs))  # no failure still on its way
        downstream.up = True
        # from a thread: a blocking call must not stall the worker sharing this event loop
        assert await asyncio.to_thread(app.close_circuit, "render-worker") is True
        await until(lambda: states(app, jobs)[JobState.SUCCEEDED] == 4)
    assert app.close_circuit("render-worker") is False  # closed already
    assert [e.event for e in app.circuit_log("render-worker")][:1] == ["closed"]
    assert app.circuit_log("render-worker")[0].reason == "closed by hand"


async def test_a_failure_while_half_open_opens_it_again(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock, downstream: Downstream
) -> None:
    app = make_app(clock=clock)
    answers = iter([True, False, False, False])
    assemble = declare(app, downstream, probe=lambda: next(answers))
    jobs = assemble.enqueue_many([(i,) for i in range(3)])
    async with running(conveyor.Worker(app)) as worker:
        await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
        await until(lambda: settled(app, jobs))  # nothing still in flight
        calls = downstream.calls
        clock.advance(60)  # the probe answers, but the service still fails the first job
        worker.prober.kick()
        await until(
            lambda: (
                [e.event for e in app.circuit_log("render-worker")][:2] == ["opened", "half_open"]
            )
        )
    assert downstream.calls == calls + 1  # one job let through while half-open, no more
    assert circuit(app, "render-worker").state is CircuitState.OPEN
    assert {app.get_job(j.id).attempt for j in jobs} == {0}


async def test_jobs_not_behind_the_circuit_keep_running(
    make_app: Callable[..., conveyor.App], downstream: Downstream
) -> None:
    app = make_app()
    declare(app, downstream, probe=None)

    @app.task(name="local")
    def local(n: int) -> int:
        return n

    held = app.tasks["assemble"].enqueue_many([(i,) for i in range(3)])
    async with running(conveyor.Worker(app)):
        await until(lambda: circuit(app, "render-worker").state is CircuitState.OPEN)
        others = local.enqueue_many([(i,) for i in range(5)])
        await until(lambda: states(app, others)[JobState.SUCCEEDED] == 5)
        await until(lambda: settled(app, held))
    assert {app.get_job(j.id).held_by for j in held} == {"render-worker"}


async def test_an_error_of_the_job_itself_counts_as_usual(
    make_app: Callable[..., conveyor.App], downstream: Downstream
) -> None:
    app = make_app()
    api = app.circuit("render-worker", failure_threshold=1)

    @app.task(name="strict", circuit=api, backoff=conveyor.fixed(0), max_attempts=2)
    def strict(n: int) -> None:
        raise ValueError(f"bad input {n}")

    job = strict.enqueue(7)
    await app.run_worker_async(burst=True)
    dead = app.get_job(job.id)
    assert (dead.state, dead.attempt) == (JobState.DEAD, 2)
    assert dead.status_message == "Failed: ValueError: bad input 7"
    assert app.circuit_states() == []  # the downstream was never blamed


def test_bad_circuits_are_refused_where_they_are_declared(app: conveyor.App) -> None:
    cases: list[tuple[dict[str, Any], str]] = [  # options of every wrong kind
        ({"failure_threshold": 0}, "failure_threshold must be an integer from 1 to 2,147,483,647"),
        ({"half_open_jobs": 2**31}, "half_open_jobs must be an integer from 1 to 2,147,483,647"),
        ({"probe": "ftp://x"}, "probe must be an http"),
        ({"schedule": [("1h", "1m")]}, "the last probe schedule step must be"),
        ({"schedule": [(None, "1m"), (None, "5m")]}, "longer and longer"),
        ({"schedule": [("1h", "0s"), (None, "5m")]}, "must be > 0"),
        ({"schedule": [("soon", "1m"), (None, "5m")]}, "not a duration"),
    ]
    for options, message in cases:
        with pytest.raises(conveyor.ValidationError, match=message):
            app.circuit("svc", **options)
    with pytest.raises(conveyor.ValidationError, match="bad circuit name"):
        app.circuit("no spaces")
    with pytest.raises(conveyor.ValidationError, match="not declared"):
        app.task(name="t", circuit="elsewhere")(lambda: None)
    app.circuit("svc")
    with pytest.raises(ValueError, match="already declared"):
        app.circuit("svc")
