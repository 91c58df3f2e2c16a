"""Limits hold across worker processes: three `conveyor worker --burst` processes, twelve slots
between them, drain jobs under a task limit, a per-key limit, a queue limit and a rate limit, on
SQLite and on PostgreSQL.

What ran at once is read from a record the jobs keep themselves, independent of conveyor's
tables: each run appends a `start` line when it begins and an `end` line before it returns (one
O_APPEND write each, so lines from many processes never interleave). A job is running, in the
store's eyes, from before its `start` to after its `end`, so the overlap of the recorded runs
can only understate what ran at once, never overstate it. Rate-limited starts are read from the
store's own claim times (the history), on the clock the limit is counted by.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from conveyor import JobState

from .conftest import Project

pytestmark = pytest.mark.slow

WORKERS = 3
SLOTS = 4  # per worker

TASKS = """
import asyncio
import os
import time

import conveyor

app = conveyor.App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA)
app.queue("video", concurrency=3)


def record(*fields):
    line = " ".join(str(f) for f in (*fields, os.getpid(), repr(time.time())))
    fd = os.open(WORKDIR / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


async def run(bucket, i):
    record("start", bucket, i)
    await asyncio.sleep(0.03)
    record("end", bucket, i)


@app.task(name="crunch", concurrency=2)
async def crunch(i):
    await run("crunch", i)


@app.task(name="sync_tenant", concurrency=1, concurrency_key="tenant")
async def sync_tenant(tenant, i):
    await run(tenant, i)


@app.task(name="render", queue="video")
async def render(i):
    await run("video", i)


@app.task(name="paced", rate_limit="5/s")
def paced(i):
    return i
"""

#: the most that may run at once, per bucket
LIMITS = {"crunch": 2, "acme": 1, "globex": 1, "initech": 1, "video": 3}


def most_at_once(project: Project) -> tuple[dict[str, int], set[str]]:
    """Per bucket, the most recorded runs that overlapped; and the processes that ran them."""
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    pids = set()
    for line in (project.root / "runs.log").read_text().splitlines():
        kind, bucket, _, pid, at = line.split()
        pids.add(pid)
        # at one instant an end is counted before a start: the runs did not overlap
        events[bucket].append((float(at), 1 if kind == "start" else -1))
    most: dict[str, int] = {}
    for bucket, changes in events.items():
        now = top = 0
        for _, change in sorted(changes):
            now += change
            top = max(top, now)
        most[bucket] = top
    return most, pids


def drain_under_limits(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    tasks.app.migrate()
    jobs = [
        *tasks.crunch.enqueue_many([(i,) for i in range(24)]),
        *tasks.sync_tenant.enqueue_many(
            [(tenant, i) for tenant in ("acme", "globex", "initech") for i in range(8)]
        ),
        *tasks.render.enqueue_many([(i,) for i in range(24)]),
    ]
    paced = tasks.paced.enqueue_many([(i,) for i in range(12)])
    workers = [project.start_worker("-c", str(SLOTS), "--burst") for _ in range(WORKERS)]
    for worker in workers:  # a burst worker returns only once nothing runnable is left
        assert worker.wait_exit(timeout=120) == 0, worker.tail()

    done = [tasks.app.get_job(j.id) for j in [*jobs, *paced]]
    assert Counter((j.state, j.attempt) for j in done) == {(JobState.SUCCEEDED, 1): len(done)}
    most, pids = most_at_once(project)
    assert most == LIMITS, f"most at once {most}, limits {LIMITS}"
    assert len(pids) > 1  # the workers shared the work: the limits held between processes

    # the moments the jobs were claimed: what the rate window counts (each began a few
    # milliseconds later, on its worker)
    starts = sorted(
        next(h.at for h in tasks.app.job_history(j.id) if h.to_state is JobState.RUNNING)
        for j in paced
    )
    in_any_second = max(sum(1 for s in starts if first <= s < first + 1.0) for first in starts)
    assert in_any_second == 5
    assert starts[-1] - starts[0] >= 2.0  # 12 starts at 5 a second need three windows


def test_limits_hold_across_worker_processes_on_sqlite(project: Project) -> None:
    drain_under_limits(project)


def test_limits_hold_across_worker_processes_on_postgres(postgres_project: Project) -> None:
    drain_under_limits(postgres_project)
