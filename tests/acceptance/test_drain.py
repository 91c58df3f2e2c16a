"""Two worker processes on one SQLite file drain 5,000 jobs: every job runs exactly once.

"Exactly once" is checked against a record the jobs themselves keep, independent of conveyor's
own tables: each run appends `job_id n pid` to one file opened with O_APPEND (a single small
write, so lines from the two processes never interleave).
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from conveyor import JobState

from .conftest import Project, wait_until

pytestmark = pytest.mark.slow

JOBS = 5000
BATCH = 500

TASKS = """
import os

import conveyor

app = conveyor.App(DATABASE_URL)
RECORD = WORKDIR / "runs.log"


def record(job_id, n):
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id} {n} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@app.task(name="record_sync", pass_context=True)
def record_sync(ctx, n):
    record(ctx.job_id, n)
    return n


@app.task(name="record_async", pass_context=True)
async def record_async(ctx, n):
    record(ctx.job_id, n)
    return n
"""


def test_two_workers_drain_5000_jobs_each_exactly_once(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    # Both start on a file that does not exist yet: they race to create the schema too.
    workers = [project.start_worker("-c", "20") for _ in range(2)]
    wait_until(
        lambda: len(tasks.app.list_workers()) == 2,
        "both workers to register",
        on_timeout=project.logs,
    )

    # Enqueued while both are already waiting, in batches, half sync and half async tasks.
    expected: dict[int, int] = {}
    for start in range(0, JOBS, BATCH):
        task = tasks.record_sync if (start // BATCH) % 2 == 0 else tasks.record_async
        jobs = task.enqueue_many([(n,) for n in range(start, start + BATCH)])
        expected.update(
            {job.id: n for job, n in zip(jobs, range(start, start + BATCH), strict=True)}
        )
    assert len(expected) == JOBS

    def drained() -> bool:
        stats: dict[JobState, int] = tasks.app.queue_stats()["default"]
        return stats.get(JobState.SUCCEEDED, 0) + stats.get(JobState.DEAD, 0) == JOBS

    wait_until(
        drained,
        f"all {JOBS} jobs to finish",
        on_timeout=lambda: f"{tasks.app.queue_stats()}\n{project.logs()}",
    )
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait_exit() == 0, worker.tail()

    # conveyor's view: every job succeeded on its first and only attempt.
    assert tasks.app.queue_stats() == {"default": {JobState.SUCCEEDED: JOBS}}
    stored = tasks.app.list_jobs(limit=JOBS + 1)
    assert len(stored) == JOBS
    assert {j.id: j.result for j in stored} == expected
    assert {j.attempt for j in stored} == {1}
    assert all(j.errors == [] for j in stored)

    # The jobs' own record: each ran exactly once, none lost, none twice.
    lines = (project.root / "runs.log").read_text().splitlines()
    runs = [tuple(int(x) for x in line.split()) for line in lines]
    counts = Counter(job_id for job_id, _, _ in runs)
    twice = sorted(job_id for job_id, c in counts.items() if c > 1)
    lost = sorted(set(expected) - set(counts))
    assert not twice, f"{len(twice)} jobs ran more than once, e.g. {twice[:10]}"
    assert not lost, f"{len(lost)} jobs never ran, e.g. {lost[:10]}"
    assert len(runs) == JOBS
    assert {job_id: n for job_id, n, _ in runs} == expected

    # Both workers did some of the work, and the logs agree with the record.
    by_pid = Counter(pid for _, _, pid in runs)
    assert set(by_pid) == {w.pid for w in workers}, by_pid
    for worker in workers:
        assert len(worker.events("job.succeeded")) == by_pid[worker.pid]
        assert worker.events("worker.stopped")[0]["processed"] == str(by_pid[worker.pid])
        assert worker.events("outcomes.stale") == []
        assert worker.events(level="error") == []

    assert tasks.app.list_workers() == []
