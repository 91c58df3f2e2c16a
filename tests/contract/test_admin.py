"""Inspecting and steering: listing, stats, cancel, manual retry, purge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState
from conveyor.app import BULK_CHUNK
from conveyor.backends.base import JobFilter

#: a task of any signature, as `@app.task` returns it
AnyTask = conveyor.Task[Any, Any]


@pytest.fixture
def tasks(app: conveyor.App) -> dict[str, AnyTask]:
    @app.task(queue="a")
    def ok(i: int = 0) -> int:
        return i

    @app.task(queue="b", max_attempts=1)
    def bad() -> None:
        raise RuntimeError("always")

    return {"ok": ok, "bad": bad}


def test_queue_stats_count_jobs_per_queue_and_state(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    tasks["ok"].enqueue_many([(i,) for i in range(3)])
    tasks["bad"].enqueue_many([(), ()])
    tasks["ok"].configure(delay=3600).enqueue()
    app.run_worker(burst=True)

    assert app.queue_stats() == {
        "a": {JobState.SUCCEEDED: 3, JobState.SCHEDULED: 1},
        "b": {JobState.DEAD: 2},
    }


def test_list_jobs_filters_and_pages_newest_first(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    oks = tasks["ok"].enqueue_many([(i,) for i in range(5)])
    bads = tasks["bad"].enqueue_many([(), ()])
    app.run_worker(burst=True)

    assert [j.id for j in app.list_jobs()] == [j.id for j in reversed(oks + bads)]
    assert [j.id for j in app.list_jobs(state="dead")] == [bads[1].id, bads[0].id]
    assert [j.id for j in app.list_jobs(state=[JobState.DEAD, "succeeded"], limit=2)] == [
        bads[1].id,
        bads[0].id,
    ]
    assert {j.id for j in app.list_jobs(queue="a")} == {j.id for j in oks}
    assert {j.id for j in app.list_jobs(task=tasks["bad"].name)} == {j.id for j in bads}
    page = app.list_jobs(queue="a", limit=2, before_id=oks[3].id)
    assert [j.id for j in page] == [oks[2].id, oks[1].id]
    with pytest.raises(conveyor.ValidationError, match="unknown state"):
        app.list_jobs(state="finished")


def test_a_listing_by_ids_lists_those_jobs_only(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    """The store's listing takes every field of its filter, ids too, alone or with states: a
    field passed over would widen the listing."""
    oks = tasks["ok"].enqueue_many([(i,) for i in range(5)])
    bads = tasks["bad"].enqueue_many([(), ()])
    app.run_worker(burst=True)
    wanted = {oks[1].id, oks[3].id, bads[0].id}

    listed = app.backend.sync.list_jobs(JobFilter.of(ids=wanted), 100)
    assert [j.id for j in listed] == sorted(wanted, reverse=True)
    dead = app.backend.sync.list_jobs(JobFilter.of([JobState.DEAD], ids=wanted), 100)
    assert [j.id for j in dead] == [bads[0].id]
    assert app.backend.sync.list_jobs(JobFilter.of(ids=()), 100) == []


def test_get_job_of_an_unknown_id(app: conveyor.App) -> None:
    with pytest.raises(conveyor.JobNotFound, match="no job with id 999"):
        app.get_job(999)
    with pytest.raises(conveyor.JobNotFound):
        app.cancel_job(999)


def test_cancelled_job_never_runs(app: conveyor.App, tasks: dict[str, AnyTask]) -> None:
    runs: list[int] = []

    @app.task
    def record(i: int) -> None:
        runs.append(i)

    queued = record.enqueue(1)
    scheduled = record.configure(delay=3600).enqueue(2)
    kept = record.enqueue(3)
    assert queued.cancel().state is JobState.CANCELLED
    assert app.cancel_job(scheduled.id).state is JobState.CANCELLED
    app.run_worker(burst=True)

    assert runs == [3]
    assert kept.refresh().state is JobState.SUCCEEDED
    history = app.job_history(queued.id)
    assert (history[-1].from_state, history[-1].to_state) == (JobState.QUEUED, JobState.CANCELLED)
    assert queued.refresh().finished_at is not None


def test_cancel_jobs_cancels_what_has_not_started_in_one_go(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    queued = tasks["ok"].enqueue_many([(i,) for i in range(3)])
    scheduled = tasks["ok"].configure(delay=3600).enqueue(9)
    other_queue = tasks["bad"].enqueue()
    done = tasks["ok"].configure(queue="c").enqueue(1)
    app.run_worker(queues=["c"], burst=True)

    assert app.cancel_jobs(queue="a", state="queued", note="cancelled by ops") == 3
    assert [app.get_job(j.id).state for j in queued] == [JobState.CANCELLED] * 3
    assert app.job_history(queued[0].id)[-1].note == "cancelled by ops"
    assert app.get_job(scheduled.id).state is JobState.SCHEDULED
    assert app.cancel_jobs(queue="a") == 1  # every state not started yet, by default
    assert app.get_job(scheduled.id).state is JobState.CANCELLED
    assert app.cancel_jobs(task=tasks["ok"].name) == 0  # the finished one stays as it is
    assert app.get_job(done.id).state is JobState.SUCCEEDED
    assert app.get_job(other_queue.id).state is JobState.QUEUED

    with pytest.raises(conveyor.ValidationError, match="give a queue or a task"):
        app.cancel_jobs()
    with pytest.raises(conveyor.ValidationError, match="not started"):
        app.cancel_jobs(queue="b", state="running")


def test_cancelling_a_finished_job_changes_nothing(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    job = tasks["ok"].enqueue(5)
    app.run_worker(burst=True)

    assert app.cancel_job(job.id).state is JobState.SUCCEEDED
    assert job.refresh().result == 5


def test_retry_a_dead_job_starts_its_attempts_again(app: conveyor.App) -> None:
    fail = {"now": True}

    @app.task(max_attempts=2, backoff=[0])
    def fragile() -> str:
        if fail["now"]:
            raise RuntimeError("broken")
        return "fixed"

    job = fragile.enqueue()
    app.run_worker(burst=True)
    assert job.refresh().state is JobState.DEAD

    fail["now"] = False
    retried = app.retry_job(job.id)
    assert (retried.state, retried.attempt) == (JobState.QUEUED, 0)
    app.run_worker(burst=True)

    job.refresh()
    assert (job.state, job.result, job.attempt) == (JobState.SUCCEEDED, "fixed", 1)
    assert len(job.errors) == 2  # the earlier attempts' errors are kept
    assert any(h.note == "retried by hand" for h in app.job_history(job.id))


def test_retry_a_cancelled_job(app: conveyor.App, tasks: dict[str, AnyTask]) -> None:
    job = tasks["ok"].enqueue(1)
    job.cancel()

    assert app.retry_job(job.id).state is JobState.QUEUED


def test_only_dead_or_cancelled_jobs_can_be_retried(
    app: conveyor.App, tasks: dict[str, AnyTask]
) -> None:
    job = tasks["ok"].enqueue(1)
    with pytest.raises(conveyor.InvalidTransition, match="is queued; only dead or cancelled"):
        app.retry_job(job.id)
    app.run_worker(burst=True)
    with pytest.raises(conveyor.InvalidTransition, match="is succeeded"):
        app.retry_job(job.id)
    with pytest.raises(conveyor.JobNotFound):
        app.retry_job(12345)


def test_bulk_retry_of_the_dead_letter_queue(app: conveyor.App, tasks: dict[str, AnyTask]) -> None:
    @app.task(queue="c", max_attempts=1)
    def other() -> None:
        raise RuntimeError("x")

    tasks["bad"].enqueue_many([(), (), ()])
    other.enqueue()
    app.run_worker(burst=True)

    assert app.retry_jobs(queue="b") == 3
    assert app.queue_stats()["b"] == {JobState.QUEUED: 3}
    assert app.queue_stats()["c"] == {JobState.DEAD: 1}
    assert app.retry_jobs(task=other.name) == 1
    assert app.retry_jobs() == 0
    with pytest.raises(conveyor.ValidationError, match="only dead or cancelled"):
        app.retry_jobs(state="succeeded")


def test_purge_deletes_old_finished_jobs_and_their_history(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    # retention far off, so that the workers' leader does not prune first
    app = make_app(clock=clock, retention_succeeded="1000d", retention_failed="1000d")

    @app.task(max_attempts=1)
    def run(fail: bool) -> None:
        if fail:
            raise RuntimeError("x")

    old_ok, old_dead = run.enqueue(False), run.enqueue(True)
    app.run_worker(burst=True)
    clock.advance(8 * 86400)
    new_ok = run.enqueue(False)
    waiting = run.configure(delay=30 * 86400).enqueue(False)
    app.run_worker(burst=True)

    assert app.purge(state="succeeded", older_than=7 * 86400) == 1
    with pytest.raises(conveyor.JobNotFound):
        app.get_job(old_ok.id)
    assert app.job_history(old_ok.id) == []
    assert old_dead.refresh().state is JobState.DEAD
    assert app.purge(older_than=7 * 86400) == 1  # every finished state
    assert app.purge(older_than=0) == 1  # new_ok, finished just now
    assert new_ok.id not in {j.id for j in app.list_jobs()}
    assert waiting.refresh().state is JobState.SCHEDULED
    with pytest.raises(conveyor.ValidationError, match="only finished jobs"):
        app.purge(state="queued")


def test_bulk_changes_made_in_chunks_report_their_progress_and_change_the_same_jobs(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    """With `progress` (the CLI's bar on a terminal), cancel, retry and purge go a chunk at a
    time: they change exactly what the one-statement form would, and say how far they got."""
    app = make_app(clock=clock, retention_succeeded="1000d", retention_failed="1000d")
    app.task(name="later", queue="bulk")(lambda: None)
    app.task(name="other", queue="kept")(lambda: None)
    count = BULK_CHUNK * 2 + 7
    app.tasks["later"].enqueue_many([() for _ in range(count)])
    kept = app.tasks["other"].enqueue()
    reports: list[tuple[int, int]] = []

    cancelled = app.cancel_jobs(queue="bulk", progress=lambda *r: reports.append(r))
    assert cancelled == count
    assert reports == [(0, count), (BULK_CHUNK, count), (2 * BULK_CHUNK, count), (count, count)]
    assert app.queue_stats()["bulk"] == {JobState.CANCELLED: count}
    assert kept.refresh().state is JobState.QUEUED

    reports.clear()
    assert app.retry_jobs(state="cancelled", queue="bulk", progress=lambda *r: reports.append(r))
    assert reports[0] == (0, count) and reports[-1] == (count, count)
    assert app.queue_stats()["bulk"] == {JobState.QUEUED: count}

    app.cancel_jobs(queue="bulk")
    clock.advance(3600)
    young = app.tasks["later"].enqueue()
    app.cancel_job(young.id)
    reports.clear()
    purged = app.purge(older_than=60, progress=lambda *r: reports.append(r))
    assert purged == count  # the one cancelled a moment ago stays
    assert reports[-1] == (count, count)
    assert app.queue_stats()["bulk"] == {JobState.CANCELLED: 1}
    assert young.refresh().state is JobState.CANCELLED


def test_ids_are_never_reused_after_a_purge(app: conveyor.App, tasks: dict[str, AnyTask]) -> None:
    first = tasks["ok"].enqueue(1)
    app.run_worker(burst=True)
    app.purge(older_than=0)

    assert tasks["ok"].enqueue(2).id > first.id


async def test_the_leader_prunes_finished_jobs_after_their_retention(
    make_app: Callable[..., conveyor.App], clock: conveyor.FrozenClock
) -> None:
    from conveyor.services.pruner import Pruner

    app = make_app(clock=clock, retention_succeeded="7d", retention_failed="30d")

    @app.task(max_attempts=1)
    def run(fail: bool) -> None:
        if fail:
            raise RuntimeError("x")

    ok, dead = await run.enqueue_async(False), await run.enqueue_async(True)
    await app.run_worker_async(burst=True)
    clock.advance(8 * 86400)
    fresh = await run.enqueue_async(False)
    await app.run_worker_async(burst=True)
    pruner = Pruner(app, app.backend, interval=1)

    await pruner.run_once()
    remaining = {j.id for j in app.list_jobs()}
    assert remaining == {dead.id, fresh.id}
    assert app.job_history(ok.id) == []

    clock.advance(21 * 86400)  # the dead job is 29 days old, the fresh one 21
    await pruner.prune_finished_jobs(clock.now())
    assert {j.id for j in app.list_jobs()} == {dead.id}
    clock.advance(2 * 86400)
    await pruner.prune_finished_jobs(clock.now())
    assert app.list_jobs() == []


def test_a_revoked_session_is_refused_by_every_app_sharing_the_store(
    make_app: Callable[..., conveyor.App],
) -> None:
    signing_out, other_server = make_app(), make_app()
    now = signing_out.clock.now()
    assert not other_server.session_revoked("nonce-1")
    signing_out.revoke_session("nonce-1", until=now + 3600)
    signing_out.revoke_session("nonce-1", until=now + 3600)  # signing out twice is harmless
    assert other_server.session_revoked("nonce-1")
    assert not other_server.session_revoked("nonce-2")


def test_revoked_sessions_are_forgotten_once_they_would_have_expired(app: conveyor.App) -> None:
    now = app.clock.now()
    app.revoke_session("expired", until=now - 1)
    app.revoke_session("current", until=now + 3600)  # each revocation sweeps the expired ones
    assert not app.session_revoked("expired")
    assert app.session_revoked("current")
