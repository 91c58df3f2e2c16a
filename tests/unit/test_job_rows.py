"""How a store's row becomes a Job: by column name, whatever order the statement gave."""

from __future__ import annotations

import pytest

from conveyor.job import JOB_COLUMNS, Job, JobState

ROW = {
    "id": 7,
    "queue": "emails",
    "task": "send",
    "args": "[1]",
    "kwargs": '{"to": "a@b.c"}',
    "priority": 3,
    "state": "running",
    "attempt": 1,
    "max_attempts": 5,
    "run_at": 100.0,
    "created_at": 99.5,
    "started_at": 100.25,
    "finished_at": None,
    "lease_until": 130.0,
    "worker_id": "w1",
    "progress": None,
    "stage": None,
    "result": None,
    "errors": "[]",
    "meta": "{}",
    "cancel_requested": 0,
    "unique_key": None,
    "circuit": None,
}


def test_a_row_in_any_column_order_reads_as_the_same_job() -> None:
    assert tuple(ROW) == JOB_COLUMNS
    names = ["extra", *reversed(JOB_COLUMNS)]
    job = Job.reader(names)(["ignored", *(ROW[n] for n in reversed(JOB_COLUMNS))])
    assert job == Job.reader(JOB_COLUMNS)([ROW[n] for n in JOB_COLUMNS])
    assert (job.id, job.state, job.args, job.kwargs) == (7, JobState.RUNNING, [1], {"to": "a@b.c"})
    assert (job.started_at, job.lease_until, job.cancel_requested) == (100.25, 130.0, False)


def test_a_row_without_a_jobs_columns_is_refused_naming_them() -> None:
    names = [n for n in JOB_COLUMNS if n not in ("lease_until", "circuit")]
    with pytest.raises(ValueError, match="lease_until, circuit"):
        Job.reader(names)
