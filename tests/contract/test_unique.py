"""Unique jobs: while a job with a key is unfinished, enqueueing that key returns it instead of
storing a second; `unique_for` widens that to jobs that finished within a period. The store
enforces it, so concurrent enqueuers cannot race past it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState

from .test_worker import running, until

#: a task of any signature, as `@app.task` returns it
AnyTask = conveyor.Task[Any, Any]


def count_jobs(app: conveyor.App) -> int:
    return sum(sum(states.values()) for states in app.queue_stats().values())


@pytest.fixture
def thumb(app: conveyor.App) -> AnyTask:
    @app.task(name="thumb", max_attempts=2)
    def thumb(target: int, fail: bool = False) -> int:
        if fail:
            raise RuntimeError("no thumbnail today")
        return target

    return thumb


def test_an_unfinished_job_with_the_key_is_returned_instead_of_a_second(
    app: conveyor.App, thumb: AnyTask
) -> None:
    first = thumb.configure(unique_key="thumb:123").enqueue(123)
    again = thumb.configure(unique_key="thumb:123").enqueue(123)
    other = thumb.configure(unique_key="thumb:456").enqueue(456)
    plain = [thumb.enqueue(123), thumb.enqueue(123)]  # no key: no uniqueness

    assert not first.deduplicated and not other.deduplicated
    assert again.deduplicated
    assert again.id == first.id and again.state is JobState.QUEUED
    assert again.unique_key == first.unique_key == "thumb:123"
    assert len({first.id, other.id, *(j.id for j in plain)}) == 4
    assert count_jobs(app) == 4

    app.run_worker(burst=True)
    assert app.get_job(first.id).result == 123
    assert not app.get_job(first.id).deduplicated  # a flag of the handle enqueue returned
    later = thumb.configure(unique_key="thumb:123").enqueue(123)
    assert not later.deduplicated and later.id not in {first.id, other.id}


@pytest.mark.parametrize("state", ["scheduled", "retrying"])
def test_the_key_holds_while_the_job_waits_its_turn(
    app: conveyor.App, thumb: AnyTask, clock: conveyor.FrozenClock, state: str
) -> None:
    app.clock = clock
    if state == "scheduled":
        first = thumb.configure(unique_key="k", delay=600).enqueue(1)
    else:
        first = thumb.configure(unique_key="k").enqueue(1, fail=True)
        app.run_worker(burst=True)  # the first attempt fails; the retry is minutes away
    assert app.get_job(first.id).state is JobState(state)
    again = thumb.configure(unique_key="k").enqueue(2)
    assert again.deduplicated and again.id == first.id
    assert again.args == [1]  # the stored job, not the new call


async def test_the_key_holds_while_the_job_runs(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app()
    started, release = threading.Event(), threading.Event()

    @app.task(name="hold")
    def hold() -> None:
        started.set()
        release.wait(10)

    first = await hold.configure(unique_key="k").enqueue_async()
    worker = conveyor.Worker(app, concurrency=1)
    async with running(worker):
        await until(started.is_set)
        again = await hold.configure(unique_key="k").enqueue_async()
        assert again.deduplicated and again.id == first.id
        assert again.state is JobState.RUNNING
        release.set()
        await first.wait_async(timeout=10)


def test_unique_for_widens_the_key_to_jobs_finished_within_the_period(
    app: conveyor.App, thumb: AnyTask, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock
    call = thumb.configure(unique_key="daily-report", unique_for=3600)
    first = call.enqueue(1)
    app.run_worker(burst=True)
    assert app.get_job(first.id).state is JobState.SUCCEEDED

    clock.advance(1800)
    again = call.enqueue(2)
    assert again.deduplicated and again.id == first.id
    assert again.state is JobState.SUCCEEDED and again.result == 1
    # without unique_for, a finished job does not hold the key
    assert not thumb.configure(unique_key="daily-report").enqueue(3).deduplicated

    app.run_worker(burst=True)
    clock.advance(3601)  # both finished jobs are now older than the period
    fresh = call.enqueue(4)
    assert not fresh.deduplicated
    assert count_jobs(app) == 3


def test_enqueue_many_deduplicates_within_the_batch_and_against_the_store(
    app: conveyor.App, thumb: AnyTask
) -> None:
    held = thumb.configure(unique_key="a").enqueue(0)
    jobs = thumb.enqueue_many(
        [
            thumb.configure(unique_key="a").s(1),
            thumb.configure(unique_key="b").s(2),
            thumb.s(3),
            thumb.configure(unique_key="b").s(4),
            thumb.configure(unique_key="c").s(5),
        ]
    )
    assert [j.deduplicated for j in jobs] == [True, False, False, True, False]
    assert jobs[0].id == held.id and jobs[0].args == [0]
    assert jobs[3].id == jobs[1].id and jobs[3].args == [2]
    assert len({j.id for j in jobs}) == 4
    assert count_jobs(app) == 4
    assert [app.get_job(j.id).args for j in jobs] == [[0], [2], [3], [2], [5]]


def test_concurrent_enqueuers_store_one_job(make_app: Callable[..., conveyor.App]) -> None:
    apps = [make_app() for _ in range(6)]
    for app in apps:
        app.task(name="thumb")(lambda target: target)
    gate = threading.Barrier(len(apps))
    results: list[conveyor.Job] = []
    errors: list[BaseException] = []

    def enqueue(app: conveyor.App) -> None:
        try:
            gate.wait(10)
            for _ in range(5):
                results.append(app.enqueue("thumb", args=[1], unique_key="race"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue, args=(app,)) for app in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 30
    assert len({j.id for j in results}) == 1
    assert sum(not j.deduplicated for j in results) == 1
    assert count_jobs(apps[0]) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_key": ""}, "unique_key must be"),
        ({"unique_key": 123}, "unique_key must be"),
        ({"unique_key": "x" * 256}, "unique_key must be"),
        ({"unique_key": "a\x00b"}, "unique_key must be"),
        ({"unique_key": "k", "unique_for": -1}, "unique_for must be"),
        ({"unique_key": "k", "unique_for": "1h"}, "unique_for must be"),
        ({"unique_for": 60}, "unique_for needs a unique_key"),
    ],
)
def test_bad_unique_options_are_refused_and_nothing_is_stored(
    app: conveyor.App, thumb: AnyTask, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(conveyor.ValidationError, match=message):
        thumb.configure(**options).enqueue(1)
    assert count_jobs(app) == 0


def test_retrying_a_dead_job_whose_key_is_held_is_refused(
    app: conveyor.App, thumb: AnyTask
) -> None:
    dead = thumb.configure(unique_key="k", max_attempts=1).enqueue(1, fail=True)
    app.run_worker(burst=True)
    assert app.get_job(dead.id).state is JobState.DEAD
    holder = thumb.configure(unique_key="k").enqueue(2)
    assert not holder.deduplicated

    with pytest.raises(conveyor.InvalidTransition, match=f"job {holder.id} holds its unique key"):
        app.retry_job(dead.id)
    assert app.retry_jobs(state="dead") == 0  # skipped, not half-done
    assert app.get_job(dead.id).state is JobState.DEAD

    app.run_worker(burst=True)  # the holder finishes: the key is free again
    assert app.retry_job(dead.id).state is JobState.QUEUED
