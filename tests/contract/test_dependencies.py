"""Dependencies and workflows: a job waits for the jobs it depends on; a dead or cancelled one
cancels it (or, with on_dependency_failure="run", it runs anyway); chains and groups are built
on that, each stored in one call."""

from __future__ import annotations

from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.backends.base import MAX_DEPENDENCY_DEPTH

#: a task of any signature, as `@app.task` returns it
AnyTask = conveyor.Task[Any, Any]


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def step(app: conveyor.App, log: list[str]) -> AnyTask:
    @app.task(name="step", max_attempts=1)
    def step(label: str, fail: bool = False) -> str:
        log.append(label)
        if fail:
            raise RuntimeError(f"{label} failed")
        return label

    return step


def state(app: conveyor.App, job: conveyor.Job) -> JobState:
    return app.get_job(job.id).state


def test_a_job_waits_until_everything_it_depends_on_succeeded(
    app: conveyor.App, step: AnyTask, log: list[str]
) -> None:
    a, b = step.enqueue("a"), step.enqueue("b")
    report = step.configure(depends_on=[a, b.id], priority=1).enqueue("report")
    assert report.state is JobState.WAITING

    app.run_worker(burst=True)  # the burst goes on while released jobs become runnable
    assert log[-1] == "report" and sorted(log[:2]) == ["a", "b"]
    assert state(app, report) is JobState.SUCCEEDED
    history = [(h.from_state, h.to_state) for h in app.job_history(report.id)]
    assert history[:2] == [(None, JobState.WAITING), (JobState.WAITING, JobState.QUEUED)]


def test_a_dead_dependency_cancels_the_dependents_down_the_line(
    app: conveyor.App, step: AnyTask, log: list[str]
) -> None:
    a = step.enqueue("a", fail=True)
    ok = step.enqueue("ok")
    b = step.configure(depends_on=[a, ok]).enqueue("b")
    c = step.configure(depends_on=[b]).enqueue("c")
    anyway = step.configure(depends_on=[a], on_dependency_failure="run").enqueue("anyway")

    app.run_worker(burst=True)
    assert sorted(log) == ["a", "anyway", "ok"]
    assert (state(app, b), state(app, c)) == (JobState.CANCELLED, JobState.CANCELLED)
    assert app.job_history(b.id)[-1].note == f"dependency {a.id} is dead"
    assert app.job_history(c.id)[-1].note == f"dependency {b.id} is cancelled"
    assert app.get_job(c.id).finished_at is not None
    assert state(app, anyway) is JobState.SUCCEEDED


def test_dependencies_that_already_finished_decide_at_once(
    app: conveyor.App, step: AnyTask
) -> None:
    done, dead = step.enqueue("done"), step.enqueue("dead", fail=True)
    app.run_worker(burst=True)

    assert step.configure(depends_on=[done]).enqueue("x").state is JobState.QUEUED
    cancelled = step.configure(depends_on=[done, dead]).enqueue("y")
    assert cancelled.state is JobState.CANCELLED
    assert app.job_history(cancelled.id)[-1].note == f"dependency {dead.id} is dead"
    later = step.configure(depends_on=[done], delay=3600).enqueue("z")
    assert later.state is JobState.SCHEDULED


def test_a_released_job_keeps_its_delay(
    app: conveyor.App, step: AnyTask, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock
    first = step.enqueue("first")
    later = step.configure(depends_on=[first], delay=600).enqueue("later")
    app.run_worker(burst=True)
    assert state(app, later) is JobState.SCHEDULED  # released, but not due for ten minutes
    clock.advance(601)
    app.run_worker(burst=True)
    assert state(app, later) is JobState.SUCCEEDED


def test_a_waiting_job_can_be_cancelled_and_its_dependents_follow(
    app: conveyor.App, step: AnyTask
) -> None:
    a = step.configure(delay=3600).enqueue("a")
    b = step.configure(depends_on=[a]).enqueue("b")
    c = step.configure(depends_on=[b]).enqueue("c")
    assert app.cancel_job(b.id).state is JobState.CANCELLED
    assert state(app, c) is JobState.CANCELLED
    assert state(app, a) is JobState.SCHEDULED


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depends_on": [999]}, "depends_on names no such job: 999"),
        ({"depends_on": "12"}, "depends_on must be a list"),
        ({"depends_on": [0]}, "depends_on takes jobs or job ids"),
        ({"depends_on": [True]}, "depends_on takes jobs or job ids"),
        ({"on_dependency_failure": "maybe"}, "on_dependency_failure must be 'cancel' or 'run'"),
    ],
)
def test_bad_dependencies_are_refused_and_nothing_is_stored(
    app: conveyor.App, step: AnyTask, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(conveyor.ValidationError, match=message):
        step.configure(**options).enqueue("x")
    with pytest.raises(conveyor.ValidationError, match=message):
        step.enqueue_many([step.s("ok"), step.configure(**options).s("x")])
    assert app.list_jobs() == []


def test_a_chain_runs_in_order_and_stops_at_a_failure(
    app: conveyor.App, step: AnyTask, log: list[str]
) -> None:
    jobs = conveyor.chain(step.s("one"), step.s("two", fail=True), step.s("three")).enqueue()
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.WAITING, JobState.WAITING]
    app.run_worker(burst=True)
    assert log == ["one", "two"]
    assert [state(app, j) for j in jobs] == [JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED]


def test_a_group_fans_out_and_its_callback_fans_in(
    app: conveyor.App, step: AnyTask, log: list[str]
) -> None:
    @app.task(name="collect")
    def collect() -> str:
        log.append("collect")
        return "collected"

    jobs = conveyor.group([step.s(str(i)) for i in range(4)], then=collect.s()).enqueue()
    assert len(jobs) == 5 and jobs[-1].state is JobState.WAITING
    app.run_worker(burst=True)
    assert sorted(log[:4]) == ["0", "1", "2", "3"] and log[4] == "collect"
    assert app.get_job(jobs[-1].id).result == "collected"


def test_dependencies_chain_at_most_the_cap_deep_and_the_cascade_runs_through(
    app: conveyor.App, step: AnyTask
) -> None:
    cap = MAX_DEPENDENCY_DEPTH
    with pytest.raises(conveyor.ValidationError, match=f"at most {cap} jobs deep"):
        conveyor.chain(*[step.s(str(i)) for i in range(cap + 2)]).enqueue()
    assert app.list_jobs() == []

    longest = conveyor.chain(*[step.s(str(i)) for i in range(cap + 1)]).enqueue()
    with pytest.raises(conveyor.ValidationError, match=f"would be {cap + 1} deep"):
        step.configure(depends_on=[longest[-1]]).enqueue("one more")
    app.cancel_job(longest[0].id)  # cancels the whole chain, in one transaction
    assert app.get_job(longest[-1].id).state is JobState.CANCELLED
    assert app.job_history(longest[-1].id)[-1].note == f"dependency {longest[-2].id} is cancelled"


def test_a_group_whose_members_share_a_unique_key_waits_for_the_one_stored(
    app: conveyor.App, step: AnyTask, log: list[str]
) -> None:
    @app.task(name="collect")
    def collect() -> None:
        log.append("collect")

    same = step.configure(unique_key="thumb:1")
    jobs = conveyor.group([same.s("a"), same.s("b"), step.s("c")], then=collect.s()).enqueue()
    assert jobs[1].deduplicated and jobs[1].id == jobs[0].id
    app.run_worker(burst=True)
    assert sorted(log[:2]) == ["a", "c"] and log[2:] == ["collect"]
    assert app.get_job(jobs[-1].id).state is JobState.SUCCEEDED
