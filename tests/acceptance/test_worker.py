"""`conveyor worker` as a process: it registers and deregisters, reports the jobs it runs,
works only its queues, logs retries and dead letters, ends by itself in burst mode, and refuses
a database file that is not conveyor's."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time

import pytest

from conveyor import JobState

from .conftest import Project, transitions, wait_for_state, wait_until

pytestmark = pytest.mark.slow

TASKS = """
import time

import conveyor

app = conveyor.App(DATABASE_URL)


@app.task(name="gated", pass_context=True)
def gated(ctx):
    (WORKDIR / f"started-{ctx.job_id}").write_text("")
    while not (WORKDIR / f"release-{ctx.job_id}").exists():
        time.sleep(0.01)
    return "released"


@app.task(name="add")
def add(x, y):
    return x + y


@app.task(name="flaky", pass_context=True, max_attempts=3, backoff=conveyor.fixed(0.05))
def flaky(ctx, fail_times):
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"flaky failure {ctx.attempt}")
    return ctx.attempt
"""


def test_worker_registers_heartbeats_reports_running_jobs_and_deregisters(
    project: Project,
) -> None:
    tasks = project.write_tasks(TASKS)
    other_queue = tasks.add.configure(queue="gamma").enqueue(1, 1)

    worker = project.start_worker(
        "-q", "alpha,beta", "-c", "3", env={"CONVEYOR_LEASE_SECONDS": "1"}
    )
    listed = wait_until(tasks.app.list_workers, "the worker to register", on_timeout=worker.tail)
    assert len(listed) == 1
    info = listed[0]
    assert info.id == worker.wait_for_event("worker.started")["worker_id"]
    assert info.pid == worker.pid
    assert info.host == socket.gethostname()
    assert info.queues == ["alpha", "beta"]
    assert info.concurrency == 3
    assert info.started_at <= info.last_beat <= time.time() + 1
    assert not info.is_lost(time.time(), 1.0)

    # It keeps beating.
    wait_until(
        lambda: tasks.app.list_workers()[0].last_beat > info.last_beat,
        "a later heartbeat",
        on_timeout=worker.tail,
    )

    # The jobs it runs are listed while they run.
    job = tasks.gated.configure(queue="alpha").enqueue()
    wait_until(
        lambda: tasks.app.list_workers()[0].running == [job.id],
        f"job {job.id} to be listed as running",
        on_timeout=lambda: f"{tasks.app.list_workers()}\n{worker.tail()}",
    )
    (project.root / f"release-{job.id}").write_text("")
    wait_for_state(tasks.app, job.id, JobState.SUCCEEDED, project)
    wait_until(
        lambda: tasks.app.list_workers()[0].running == [],
        "the finished job to leave the running list",
        on_timeout=worker.tail,
    )
    # A job of a queue the worker does not work was older, yet never claimed.
    assert tasks.app.get_job(other_queue.id).state is JobState.QUEUED

    worker.send(signal.SIGTERM)
    assert worker.wait_exit() == 0, worker.tail()
    assert tasks.app.list_workers() == []
    names = worker.event_names()
    assert names[0] == "worker.started" and names[-1] == "worker.stopped"


def test_burst_worker_drains_and_exits(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    jobs = tasks.add.enqueue_many([(i, i) for i in range(20)])

    worker = project.start_worker("--burst")
    assert worker.wait_exit() == 0, worker.tail()

    for job in jobs:
        job.refresh()
        assert job.state is JobState.SUCCEEDED
        assert job.result == 2 * job.args[0]
    assert len(worker.events("job.succeeded")) == 20
    assert worker.events("worker.stopped")[0]["processed"] == "20"
    assert tasks.app.list_workers() == []


def test_retries_and_dead_letters_are_logged(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    recovers = tasks.flaky.enqueue(2)  # fails twice, then succeeds on attempt 3
    gives_up = tasks.flaky.enqueue(5)  # fails all three attempts: dead

    worker = project.start_worker()
    done = wait_for_state(tasks.app, recovers.id, (JobState.SUCCEEDED, JobState.DEAD), project)
    dead = wait_for_state(tasks.app, gives_up.id, (JobState.SUCCEEDED, JobState.DEAD), project)
    worker.send(signal.SIGTERM)
    assert worker.wait_exit() == 0, worker.tail()

    assert done.state is JobState.SUCCEEDED and done.result == 3 and done.attempt == 3
    assert [e["message"] for e in done.errors] == ["flaky failure 1", "flaky failure 2"]
    assert dead.state is JobState.DEAD and dead.attempt == 3
    assert [e["type"] for e in dead.errors] == ["ConnectionError"] * 3
    assert all("raise ConnectionError" in e["traceback"] for e in dead.errors)
    assert transitions(tasks.app, gives_up.id)[-1] == ("running", "dead")

    retries = worker.events("job.retry_scheduled", job_id=recovers.id)
    assert [e["attempt"] for e in retries] == ["1", "2"]
    assert all(e["error_type"] == "ConnectionError" for e in retries)
    assert worker.events("job.succeeded", job_id=recovers.id)[0]["attempt"] == "3"
    assert len(worker.events("job.retry_scheduled", job_id=gives_up.id)) == 2
    dead_events = worker.events("job.dead", job_id=gives_up.id)
    assert len(dead_events) == 1
    assert dead_events[0]["level"] == "error"
    assert dead_events[0]["error"] == "flaky failure 3"


def run_refused(project: Project) -> str:
    """Start a worker that must refuse the database; return what it printed."""
    project.write_tasks(TASKS)
    worker = project.start_worker()
    code = worker.wait_exit()
    output = worker.log_text()
    assert code != 0, output
    assert "Traceback" not in output, output
    assert "worker.started" not in output
    return output


def test_worker_refuses_a_file_that_is_not_a_database(project: Project) -> None:
    garbage = b"these are somebody's notes, not a database\n" * 200
    project.db_path.write_bytes(garbage)

    output = run_refused(project)

    assert str(project.db_path) in output
    assert "not a SQLite database" in output
    assert project.db_path.read_bytes() == garbage


def test_worker_refuses_a_sqlite_database_of_another_program(project: Project) -> None:
    with sqlite3.connect(project.db_path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.close()

    output = run_refused(project)

    assert str(project.db_path) in output
    assert "customers" in output and "no conveyor schema" in output
    with sqlite3.connect(project.db_path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = conn.execute("SELECT id, name FROM customers").fetchall()
    conn.close()
    assert tables == ["customers"], "nothing of conveyor's may be stored in a foreign database"
    assert rows == [(1, "Ada")]


def test_refusing_a_foreign_database_leaves_its_journal_mode_alone(project: Project) -> None:
    with sqlite3.connect(project.db_path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        mode_before = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    header_before = project.db_path.read_bytes()[:100]
    assert mode_before == "delete"

    run_refused(project)

    with sqlite3.connect(project.db_path) as conn:
        mode_after = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert mode_after == mode_before, "the other program's database was switched to WAL"
    assert project.db_path.read_bytes()[:100] == header_before
