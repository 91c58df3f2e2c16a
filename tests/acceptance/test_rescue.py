"""A worker killed with SIGKILL mid-job: its lease runs out, the leader among the remaining
workers rescues the job (the lost attempt counts, error "worker lost"), and the job runs again,
or lands in the dead-letter queue when it has no attempts left."""

from __future__ import annotations

import signal
import time

import pytest

from conveyor import Job, JobState

from .conftest import Project, WorkerProcess, event_time, transitions, wait_for_state, wait_until

pytestmark = pytest.mark.slow

LEASE_S = 2.0
LEASE = {"CONVEYOR_LEASE_SECONDS": str(LEASE_S)}

TASKS = """
import os
import time

import conveyor

app = conveyor.App(DATABASE_URL)


@app.task(name="marked", pass_context=True, max_attempts=3, backoff=conveyor.fixed(0.1))
def marked(ctx, label):
    # The independent record of every run: one line per attempt, with the process running it.
    with open(WORKDIR / f"runs-{ctx.job_id}", "a") as record:
        record.write(f"{ctx.attempt} {os.getpid()}\\n")
    if ctx.attempt == 1:
        time.sleep(300)  # the first run never finishes on its own: its worker gets killed
    return f"done {label}"
"""


def runs(project: Project, job_id: int) -> list[str]:
    path = project.root / f"runs-{job_id}"
    return path.read_text().splitlines() if path.exists() else []


def kill_worker_mid_job(project: Project, job: Job) -> tuple[WorkerProcess, str, float]:
    """Start worker A, let it start `job`, SIGKILL it. Returns A, its worker id, and the lease
    the job was left with."""
    worker_a = project.start_worker(env=LEASE)
    wait_until(lambda: runs(project, job.id), f"job {job.id} to start", on_timeout=project.logs)
    worker_a.send(signal.SIGKILL)
    assert worker_a.wait_exit() == -signal.SIGKILL

    orphan = job.refresh()
    assert orphan.state is JobState.RUNNING
    assert orphan.attempt == 1
    assert orphan.lease_until is not None
    a_id = worker_a.events("worker.started")[0]["worker_id"]
    assert orphan.worker_id == a_id
    assert runs(project, job.id) == [f"1 {worker_a.pid}"]
    return worker_a, a_id, orphan.lease_until


def assert_worker_lost_error(job: Job, a_id: str) -> None:
    assert len(job.errors) == 1, job.errors
    error = job.errors[0]
    assert error["type"] == "WorkerLost"
    assert error["message"] == "worker lost"
    assert error["worker"] == a_id
    assert error["attempt"] == 1


def test_sigkilled_workers_job_is_rescued_and_run_again(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    job = tasks.marked.enqueue("a")
    worker_a, a_id, lease_until = kill_worker_mid_job(project, job)

    worker_b = project.start_worker(env=LEASE)
    done = wait_for_state(tasks.app, job.id, (JobState.SUCCEEDED, JobState.DEAD), project)

    assert done.state is JobState.SUCCEEDED, done
    assert done.result == "done a"
    assert done.attempt == 2, "the lost attempt counts"
    assert_worker_lost_error(done, a_id)
    assert runs(project, job.id) == [f"1 {worker_a.pid}", f"2 {worker_b.pid}"]

    assert transitions(tasks.app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "retrying"),
        ("retrying", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    rescue_entry = tasks.app.job_history(job.id)[2]
    assert rescue_entry.note and "worker lost" in rescue_entry.note

    rescued = worker_b.wait_for_event("lease.rescued", job_id=job.id)
    assert rescued["worker_id"] == a_id
    assert rescued["state"] == "retrying"
    assert event_time(rescued) >= lease_until, "rescued before the lease ran out"
    worker_b.wait_for_event("job.started", job_id=job.id, attempt=2)
    worker_b.wait_for_event("job.succeeded", job_id=job.id)

    # A never deregistered: it is listed, and shown as lost; B is alive.
    workers = {w.id: w for w in tasks.app.list_workers()}
    b_id = worker_b.events("worker.started")[0]["worker_id"]
    assert set(workers) == {a_id, b_id}
    assert workers[a_id].pid == worker_a.pid
    assert workers[a_id].is_lost(time.time(), LEASE_S)

    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit() == 0, worker_b.tail()
    assert [w.id for w in tasks.app.list_workers()] == [a_id]


def test_sigkilled_workers_job_without_attempts_left_is_dead(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    job = tasks.marked.configure(max_attempts=1).enqueue("b")
    worker_a, a_id, lease_until = kill_worker_mid_job(project, job)

    worker_b = project.start_worker(env=LEASE)
    done = wait_for_state(tasks.app, job.id, (JobState.SUCCEEDED, JobState.DEAD), project)

    assert done.state is JobState.DEAD, done
    assert done.attempt == 1
    assert done.finished_at is not None
    assert done.lease_until is None
    assert_worker_lost_error(done, a_id)
    assert transitions(tasks.app, job.id) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "dead"),
    ]
    assert [j.id for j in tasks.app.list_jobs(state="dead")] == [job.id]

    rescued = worker_b.wait_for_event("lease.rescued", job_id=job.id)
    assert rescued["worker_id"] == a_id
    assert rescued["state"] == "dead"
    assert event_time(rescued) >= lease_until

    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit() == 0, worker_b.tail()
    # Dead means dead: B never ran it again.
    assert runs(project, job.id) == [f"1 {worker_a.pid}"]
    assert worker_b.events("job.started", job_id=job.id) == []
