"""`conveyor worker` subprocesses against a real Redis server, as test_postgres.py does against
PostgreSQL: a race of eight workers for 100,000 jobs, a worker (and leader) killed with SIGKILL
mid-job, and a graceful shutdown that hands a running job back. (Faults of the server itself —
restarts, a full memory, killed connections — run on a server of their own in tests/faults/.)

Each test has a key prefix of its own in the tests' database (`redis_project`); its keys are
deleted afterwards. "Exactly once" is checked against a record the jobs keep themselves, as in
test_postgres.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
import redis

import conveyor
from conftest import REDIS_URL
from conveyor import JobState

from .conftest import Project, event_time, transitions, wait_for_state, wait_until
from .test_postgres import (
    RECORD_FUNCTION,
    attempts_run,
    race,
)

pytestmark = pytest.mark.slow

APP = "app = conveyor.App(DATABASE_URL, redis_prefix=REDIS_PREFIX)\n"


# -- looking at the keys directly --------------------------------------------------------------


def client() -> redis.Redis:
    """A connection of the test's own, outside conveyor."""
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=30)


def key(project: Project, *parts: object) -> str:
    return ":".join(("{" + str(project.redis_prefix) + "}", *(str(p) for p in parts)))


def job_summary(app: conveyor.App) -> dict[tuple[str, int, bool], int]:
    """How many jobs are in each (state, attempt, has errors)."""
    jobs: Counter[tuple[str, int, bool]] = Counter()
    before: int | None = None
    while True:
        page = app.list_jobs(limit=1000, before_id=before)
        jobs.update((j.state.value, j.attempt, bool(j.errors)) for j in page)
        if len(page) < 1000:
            return dict(jobs)
        before = page[-1].id


def history_summary(project: Project, ids: list[int]) -> dict[tuple[str | None, str], int]:
    """How many history entries of each (from, to) the jobs hold: the state each was stored
    in (its hash's `entered`), then its history list."""
    pairs: Counter[tuple[str | None, str]] = Counter()
    with client() as r:
        for start in range(0, len(ids), 5000):
            pipe = r.pipeline(transaction=False)
            for job_id in ids[start : start + 5000]:
                pipe.hget(key(project, "job", job_id), "entered")
                pipe.lrange(key(project, "hist", job_id), 0, -1)
            replies = pipe.execute()
            for entered, entries in zip(replies[::2], replies[1::2], strict=True):
                if entered is not None:
                    pairs[None, entered] += 1
                for entry in entries:
                    _, from_state, to_state, _, _ = json.loads(entry)
                    pairs[from_state, to_state] += 1
    return dict(pairs)


def leader(project: Project) -> tuple[str | None, int]:
    """Who holds the maintenance leadership, and for how many more milliseconds."""
    with client() as r:
        name = key(project, "leader", "maintenance")
        holder, ttl = r.get(name), r.pttl(name)
    return holder, int(ttl)


# -- 1. the race -------------------------------------------------------------------------------


RACE_TASKS = (
    RECORD_FUNCTION
    + "\nimport conveyor\n\n"
    + APP
    + """

@app.task(name="race", pass_context=True)
async def race(ctx, n):
    record("runs.log", ctx.job_id, n)
"""
)


@pytest.mark.timeout(300)
def test_eight_workers_drain_100000_jobs_each_exactly_once(redis_project: Project) -> None:
    race(
        redis_project,
        RACE_TASKS,
        jobs=lambda ids: job_summary(redis_project.apps[-1]),
        history=lambda ids: history_summary(redis_project, ids),
    )


# -- 2. kill -9 of the leader mid-job ----------------------------------------------------------

LEASE_S = 2.0
LEASE = {"CONVEYOR_LEASE_SECONDS": str(LEASE_S)}
#: The leader renews its leadership every round (a third of the lease): when it dies, its
#: leadership lasts until the lease from its last renewal runs out, and another worker takes it
#: at its next round after that.
ROUND_S = LEASE_S * 0.33
#: A loaded machine's scheduling, on top.
TAKEOVER_SLACK_S = 1.0

CRASH_TASKS = (
    """
import os
import time

import conveyor

"""
    + APP
    + """

@app.task(name="marked", pass_context=True, max_attempts=3, backoff=conveyor.fixed(0.1))
def marked(ctx, label):
    # The independent record of every run: one line per attempt, with the process running it.
    with open(WORKDIR / f"runs-{ctx.job_id}", "a") as record:
        record.write(f"{ctx.attempt} {os.getpid()}\\n")
    if ctx.attempt == 1:
        time.sleep(300)  # the first run never finishes on its own: its worker gets killed
    return f"done {label}"
"""
)


def test_sigkilled_leader_mid_job_is_replaced_and_its_job_rescued(
    redis_project: Project,
) -> None:
    project = redis_project
    tasks = project.write_tasks(CRASH_TASKS)
    tasks.app.migrate()

    # A starts alone: it becomes the leader, and it runs the job.
    worker_a = project.start_worker(env=LEASE)
    worker_a.wait_for_event("leader.elected")
    a_id = worker_a.events("worker.started")[0]["worker_id"]
    job = tasks.marked.enqueue("x")
    wait_until(
        lambda: attempts_run(project, job.id), f"job {job.id} to start", on_timeout=project.logs
    )
    assert attempts_run(project, job.id) == [f"1 {worker_a.pid}"]

    # B joins; it cannot lead while A holds the lease.
    worker_b = project.start_worker(env=LEASE)
    worker_b.wait_for_event("worker.started")
    b_id = worker_b.events("worker.started")[0]["worker_id"]
    wait_until(lambda: len(tasks.app.list_workers()) == 2, "B to register", on_timeout=project.logs)
    assert leader(project)[0] == a_id
    assert worker_b.events("leader.elected") == []

    killed_at = time.time()
    worker_a.send(signal.SIGKILL)
    assert worker_a.wait_exit() == -signal.SIGKILL
    orphan = job.refresh()
    assert orphan.state is JobState.RUNNING
    assert orphan.worker_id == a_id
    assert orphan.attempt == 1
    assert orphan.lease_until is not None
    # A's leadership outlives it: a lease in the store, not a session.
    holder, left_ms = leader(project)
    assert holder == a_id and 0 < left_ms <= LEASE_S * 1000, (holder, left_ms)

    # B takes over once A's lease has run out, at its next round.
    elected = worker_b.wait_for_event("leader.elected")
    assert elected["worker_id"] == b_id
    took_over_s = event_time(elected) - killed_at
    assert 0 <= took_over_s <= LEASE_S + ROUND_S + TAKEOVER_SLACK_S, (
        f"B became leader {took_over_s:.2f}s after A died"
    )
    assert leader(project)[0] == b_id

    # B, now leading, rescues the job once its lease has run out, and runs it again.
    done = wait_for_state(tasks.app, job.id, (JobState.SUCCEEDED, JobState.DEAD), project)
    assert done.state is JobState.SUCCEEDED, done
    assert done.result == "done x"
    assert done.attempt == 2, "the lost attempt counts"
    assert len(done.errors) == 1, done.errors
    error = done.errors[0]
    assert (error["type"], error["message"], error["worker"], error["attempt"]) == (
        "WorkerLost",
        "worker lost",
        a_id,
        1,
    )
    assert attempts_run(project, job.id) == [f"1 {worker_a.pid}", f"2 {worker_b.pid}"]
    assert transitions(tasks.app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    rescued = worker_b.wait_for_event("lease.rescued", job_id=job.id)
    assert rescued["worker_id"] == a_id
    assert rescued["state"] == "retrying"
    assert event_time(rescued) >= orphan.lease_until, "rescued before the lease ran out"
    worker_b.wait_for_event("job.started", job_id=job.id, attempt=2)
    worker_b.wait_for_event("job.succeeded", job_id=job.id)

    # A graceful stop gives the leadership up at once.
    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit() == 0, worker_b.tail()
    assert leader(project) == (None, -2)
    assert [w.id for w in tasks.app.list_workers()] == [a_id]


# -- 3. graceful shutdown ----------------------------------------------------------------------

SHUTDOWN_TASKS = (
    """
import time

import conveyor

"""
    + APP
    + """

@app.task(name="until_released", pass_context=True)
def until_released(ctx):
    (WORKDIR / f"started-{ctx.job_id}-{ctx.attempt}").write_text("")
    while not (WORKDIR / "release").exists():
        time.sleep(0.01)
    return "released"
"""
)


def test_sigterm_hands_the_running_job_back_and_another_worker_runs_it(
    redis_project: Project,
) -> None:
    project = redis_project
    tasks = project.write_tasks(SHUTDOWN_TASKS)
    job = tasks.until_released.enqueue()

    first = project.start_worker("--grace", "1")
    wait_until(
        (project.root / f"started-{job.id}-1").exists, "the job to start", on_timeout=project.logs
    )
    first_id = first.wait_for_event("worker.started")["worker_id"]
    first.send(signal.SIGTERM)
    first.wait_for_event("worker.stopping")
    late = tasks.until_released.enqueue()  # once it is stopping, it claims nothing more
    assert first.wait_exit() == 0, first.tail()

    handed = job.refresh()
    assert handed.state is JobState.QUEUED
    assert handed.attempt == 0, "a handed-back attempt must not count"
    assert handed.lease_until is None
    assert handed.errors == []
    last = tasks.app.job_history(job.id)[-1]
    assert last.note and "shutdown" in last.note, last
    assert last.worker_id == first_id
    assert tasks.app.get_job(late.id).state is JobState.QUEUED
    assert first.events("job.started", job_id=late.id) == []
    assert tasks.app.list_workers() == []

    (project.root / "release").write_text("")
    second = project.start_worker()
    for each in (job, late):
        done = wait_for_state(tasks.app, each.id, JobState.SUCCEEDED, project)
        assert done.result == "released"
        assert done.attempt == 1
    assert transitions(tasks.app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0, second.tail()
