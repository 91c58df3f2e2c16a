"""`conveyor worker` subprocesses against a real PostgreSQL server: a race of eight workers for
100,000 jobs, and a worker (and leader) killed with SIGKILL mid-job. (Faults of the server itself
— restarts, outages, read-only — run on a cluster of their own in tests/faults/.)

"Exactly once" is checked against a record the jobs keep themselves, independent of conveyor's
tables and of the server: each run appends one short line to a file opened with O_APPEND (a
single small write, so lines from many processes never interleave), and a job that ran twice
shows up as two lines.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import conveyor
from conftest import POSTGRES_URL
from conveyor import JobState

from .conftest import Project, event_time, transitions, wait_for_state, wait_until

pytestmark = pytest.mark.slow

#: How long a test may wait for a drain before it fails.
LONG_DEADLINE_S = 120.0


# -- the independent record --------------------------------------------------------------------

RECORD_FUNCTION = """
import os
import time


def record(name, *fields):
    # One line per run, one write: lines from many processes never interleave.
    line = " ".join(str(f) for f in (*fields, os.getpid(), repr(time.time())))
    fd = os.open(WORKDIR / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
"""


@dataclass(frozen=True)
class Run:
    job_id: int
    n: int
    pid: int
    at: float


def read_runs(project: Project, name: str = "runs.log") -> list[Run]:
    """Every run recorded as `job_id n pid time` lines."""
    path = project.root / name
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        job_id, n, pid, at = line.split()
        runs.append(Run(int(job_id), int(n), int(pid), float(at)))
    return runs


def assert_each_ran_exactly_once(runs: list[Run], expected: dict[int, int]) -> Counter[int]:
    """The record holds one run per expected job, with its own argument; returns runs per pid."""
    counts = Counter(r.job_id for r in runs)
    twice = sorted(job_id for job_id, c in counts.items() if c > 1)
    lost = sorted(set(expected) - set(counts))
    strangers = sorted(set(counts) - set(expected))
    assert not twice, f"{len(twice)} jobs ran more than once, e.g. {twice[:10]}"
    assert not lost, f"{len(lost)} jobs never ran, e.g. {lost[:10]}"
    assert not strangers, f"{len(strangers)} runs of jobs never enqueued, e.g. {strangers[:10]}"
    assert len(runs) == len(expected)
    assert {r.job_id: r.n for r in runs} == expected
    return Counter(r.pid for r in runs)


# -- looking at the database directly ----------------------------------------------------------


def sql(query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one statement on a connection of the test's own, outside conveyor."""
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
        return conn.execute(query, params).fetchall()


def job_summary(schema: str) -> dict[tuple[str, int, bool], int]:
    """How many jobs are in each (state, attempt, has errors)."""
    rows = sql(
        f"SELECT state, attempt, errors <> '[]'::jsonb, count(*) FROM {schema}.jobs "
        "GROUP BY 1, 2, 3"
    )
    return {(state, attempt, errs): n for state, attempt, errs, n in rows}


def history_summary(schema: str) -> dict[tuple[str | None, str], int]:
    rows = sql(f"SELECT from_state, to_state, count(*) FROM {schema}.job_history GROUP BY 1, 2")
    return {(src, dst): n for src, dst, n in rows}


def leader_sessions(schema: str) -> list[int]:
    """Server pids of the live sessions holding the maintenance leadership of `schema`."""
    rows = sql(
        f"SELECT pid FROM {schema}.leaders WHERE name = 'maintenance'"
        " AND pid IN (SELECT pid FROM pg_stat_activity)"
    )
    return sorted(pid for (pid,) in rows)


def finished(app: conveyor.App) -> int:
    """Jobs succeeded or dead."""
    stats = app.queue_stats().get("default", {})
    return stats.get(JobState.SUCCEEDED, 0) + stats.get(JobState.DEAD, 0)


# -- 1. the race -------------------------------------------------------------------------------

RACE_JOBS = 100_000
RACE_WORKERS = 8

RACE_TASKS = (
    RECORD_FUNCTION
    + """
import conveyor

app = conveyor.App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA)


@app.task(name="race", pass_context=True)
async def race(ctx, n):
    record("runs.log", ctx.job_id, n)
"""
)


@pytest.mark.timeout(300)
def test_eight_workers_drain_100000_jobs_each_exactly_once(postgres_project: Project) -> None:
    schema = postgres_project.postgres_schema
    assert schema is not None
    race(
        postgres_project,
        RACE_TASKS,
        jobs=lambda ids: job_summary(schema),
        history=lambda ids: history_summary(schema),
    )


def race(
    project: Project,
    source: str,
    jobs: Callable[[list[int]], dict[tuple[str, int, bool], int]],
    history: Callable[[list[int]], dict[tuple[str | None, str], int]],
) -> None:
    """Eight worker processes race for 100,000 jobs enqueued in one call: each runs exactly
    once (the jobs' own record), every process does some, and the store's own view agrees —
    read by `jobs` ((state, attempt, cancel asked) -> count) and `history` ((from, to) ->
    count), each given the jobs' ids."""
    tasks = project.write_tasks(source)
    tasks.app.migrate()

    workers = [project.start_worker("-c", "50") for _ in range(RACE_WORKERS)]
    wait_until(
        lambda: len(tasks.app.list_workers()) == RACE_WORKERS,
        f"all {RACE_WORKERS} workers to register",
        on_timeout=project.logs,
    )
    assert {w.pid for w in tasks.app.list_workers()} == {w.pid for w in workers}

    # One call: eight idle workers wake at once and race for the same jobs.
    started = time.monotonic()
    enqueued = tasks.race.enqueue_many([(n,) for n in range(RACE_JOBS)])
    enqueued_s = time.monotonic() - started
    expected = {job.id: n for job, n in zip(enqueued, range(RACE_JOBS), strict=True)}
    assert len(expected) == RACE_JOBS

    wait_until(
        lambda: finished(tasks.app) == RACE_JOBS,
        f"all {RACE_JOBS} jobs to finish",
        LONG_DEADLINE_S,
        on_timeout=lambda: f"{tasks.app.queue_stats()}\n{project.logs()}",
    )
    drained_s = time.monotonic() - started - enqueued_s
    print(
        f"enqueue_many({RACE_JOBS}): {enqueued_s:.1f}s; drain by {RACE_WORKERS} workers: "
        f"{drained_s:.1f}s ({RACE_JOBS / drained_s:.0f} jobs/s)"
    )
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait_exit() == 0, worker.tail()

    # conveyor's view: every job succeeded on its first and only attempt, with one history
    # entry per transition.
    assert tasks.app.queue_stats() == {"default": {JobState.SUCCEEDED: RACE_JOBS}}
    assert jobs(sorted(expected)) == {("succeeded", 1, False): RACE_JOBS}
    assert history(sorted(expected)) == {
        (None, "queued"): RACE_JOBS,
        ("queued", "running"): RACE_JOBS,
        ("running", "succeeded"): RACE_JOBS,
    }

    # The jobs' own record: each ran exactly once, none lost, none twice.
    by_pid = assert_each_ran_exactly_once(read_runs(project), expected)

    # Every process did some of the work, and each one's log agrees with the record.
    assert set(by_pid) == {w.pid for w in workers}, by_pid
    for worker in workers:
        assert len(worker.events("job.succeeded")) == by_pid[worker.pid]
        assert worker.events("worker.stopped")[0]["processed"] == str(by_pid[worker.pid])
        assert worker.events("job.outcome_discarded") == []
        assert worker.events(level="error") == [], worker.tail()
    assert tasks.app.list_workers() == []


# -- 2. kill -9 of the leader mid-job ----------------------------------------------------------

LEASE_S = 2.0
LEASE = {"CONVEYOR_LEASE_SECONDS": str(LEASE_S)}

CRASH_TASKS = """
import os
import time

import conveyor

app = conveyor.App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA)


@app.task(name="marked", pass_context=True, max_attempts=3, backoff=conveyor.fixed(0.1))
def marked(ctx, label):
    # The independent record of every run: one line per attempt, with the process running it.
    with open(WORKDIR / f"runs-{ctx.job_id}", "a") as record:
        record.write(f"{ctx.attempt} {os.getpid()}\\n")
    if ctx.attempt == 1:
        time.sleep(300)  # the first run never finishes on its own: its worker gets killed
    return f"done {label}"
"""


def attempts_run(project: Project, job_id: int) -> list[str]:
    path = project.root / f"runs-{job_id}"
    return path.read_text().splitlines() if path.exists() else []


def test_sigkilled_leader_mid_job_is_replaced_and_its_job_rescued(
    postgres_project: Project,
) -> None:
    project = postgres_project
    schema = project.postgres_schema
    assert schema is not None
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
    old_leader = leader_sessions(schema)
    assert len(old_leader) == 1, old_leader
    assert worker_b.events("leader.elected") == []

    killed_at = time.time()
    worker_a.send(signal.SIGKILL)
    assert worker_a.wait_exit() == -signal.SIGKILL
    orphan = job.refresh()
    assert orphan.state is JobState.RUNNING
    assert orphan.worker_id == a_id
    assert orphan.attempt == 1
    assert orphan.lease_until is not None

    # A's session went with it: B takes over at once, within a lease period at most.
    elected = worker_b.wait_for_event("leader.elected")
    assert elected["worker_id"] == b_id
    took_over_s = event_time(elected) - killed_at
    assert 0 <= took_over_s <= LEASE_S, f"B became leader {took_over_s:.2f}s after A died"
    new_leader = leader_sessions(schema)
    assert len(new_leader) == 1 and new_leader != old_leader, (old_leader, new_leader)

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

    # A graceful stop gives the leadership up with the session.
    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit() == 0, worker_b.tail()
    assert leader_sessions(schema) == []
    assert [w.id for w in tasks.app.list_workers()] == [a_id]
