"""conveyor's workloads, on SQLite, PostgreSQL or Redis: enqueue one by one, `enqueue_many`,
drain by one worker process (and by `conveyor worker --processes N --burst`), and
enqueue-to-start latency against a real `conveyor worker` subprocess.

Every workload gets a store of its own (`benchmarks.common.scratch`): a SQLite file in a
temporary folder, a fresh PostgreSQL schema created by `app.migrate()` and dropped afterwards,
or a fresh Redis key prefix whose keys are deleted afterwards. `backend` is "sqlite" (the
default), "postgres" or "redis"; `postgres` is the PostgreSQL server's URL (default:
`CONVEYOR_TEST_POSTGRES_URL`, else the local test server), `redis` the Redis server's and
database's (default: `CONVEYOR_TEST_REDIS_URL`, else database 9 of the local server).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import conveyor
from benchmarks.common import Database, Latencies, Rate, quiet_logging, scratch
from benchmarks.tasks import ASYNC_NOOP, KEYED_NOOP, KEYED_TENANTS, SYNC_NOOP, make_app

#: The folder that holds the `benchmarks` package: a worker subprocess imports it from there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: How many jobs `enqueue_many` stores per call when a workload pre-fills a queue.
FILL_BATCH = 10_000
WORKER_START_TIMEOUT_S = 30.0
#: How often the scale workload samples the worker's memory.
SAMPLE_EVERY_S = 0.2


def _app(db: Database) -> conveyor.App:
    return make_app(db.url, **db.app_options())


def _states(app: conveyor.App) -> dict[str, int]:
    stats = app.queue_stats()
    return {str(state): n for per_queue in stats.values() for state, n in per_queue.items() if n}


def _count(app: conveyor.App, state: conveyor.JobState) -> int:
    return sum(per_queue.get(state, 0) for per_queue in app.queue_stats().values())


def _expect_all_succeeded(app: conveyor.App, jobs: int, what: str) -> None:
    states = _states(app)
    if states != {"succeeded": jobs}:
        raise RuntimeError(f"{what}: expected {jobs} succeeded jobs, found {states}")


def _expect_queued(app: conveyor.App, jobs: int, what: str) -> None:
    states = _states(app)
    if states != {"queued": jobs}:
        raise RuntimeError(f"{what}: expected {jobs} queued jobs, found {states}")


# -- enqueue ----------------------------------------------------------------------------------


def enqueue_one_by_one(
    jobs: int, *, backend: str = "sqlite", postgres: str | None = None, redis: str | None = None
) -> Rate:
    """`task.enqueue(i)` `jobs` times: one validated job, one transaction (on Redis, one Lua
    script) each."""
    with scratch(backend, "enqueue-one", postgres, redis) as db:
        app = _app(db)
        try:
            app.migrate()  # the schema is created before the clock starts
            task = app.tasks[SYNC_NOOP]
            task.enqueue(-1)  # opens the store's connections, also before the clock starts
            started = time.perf_counter()
            for i in range(jobs):
                task.enqueue(i)
            seconds = time.perf_counter() - started
            _expect_queued(app, jobs + 1, "enqueue one by one")
        finally:
            app.close()
    return Rate(jobs, seconds)


def enqueue_many(
    jobs: int,
    batch: int,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    """`task.enqueue_many(...)` with `batch` jobs per call until `jobs` are stored."""
    with scratch(backend, "enqueue-many", postgres, redis) as db:
        app = _app(db)
        try:
            app.migrate()
            task = app.tasks[SYNC_NOOP]
            task.enqueue(-1)
            started = time.perf_counter()
            for first in range(0, jobs, batch):
                task.enqueue_many([(i,) for i in range(first, min(first + batch, jobs))])
            seconds = time.perf_counter() - started
            _expect_queued(app, jobs + 1, f"enqueue_many (batch {batch})")
        finally:
            app.close()
    return Rate(jobs, seconds)


# -- drain ------------------------------------------------------------------------------------


def _fill(db: Database, jobs: int, task_name: str) -> None:
    app = _app(db)
    try:
        app.migrate()  # PostgreSQL does not migrate on first use
        task = app.tasks[task_name]
        keyed = task_name == KEYED_NOOP
        for first in range(0, jobs, FILL_BATCH):
            batch = range(first, min(first + FILL_BATCH, jobs))
            task.enqueue_many([(i, i % KEYED_TENANTS) if keyed else (i,) for i in batch])
    finally:
        app.close()


def _check_drained(db: Database, jobs: int, what: str) -> list[conveyor.Job]:
    app = _app(db)
    try:
        _expect_all_succeeded(app, jobs, what)
        return app.list_jobs(state="succeeded", limit=jobs)
    finally:
        app.close()


def _drain_in_child(db: Database, concurrency: int, results: Connection) -> None:
    """The worker process: time one burst run of the worker over the pre-filled queue."""
    quiet_logging(cache=True)
    app = _app(db)
    try:
        started = time.perf_counter()
        app.run_worker(burst=True, concurrency=concurrency)
        results.send(time.perf_counter() - started)
    finally:
        app.close()
        results.close()


def drain(
    jobs: int,
    task_name: str = SYNC_NOOP,
    concurrency: int = 10,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    """Pre-enqueue `jobs` no-op jobs, then time `app.run_worker(burst=True)` in a worker
    process of its own until every job has succeeded."""
    with scratch(backend, "drain", postgres, redis) as db:
        _fill(db, jobs, task_name)
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(
            target=_drain_in_child, args=(db, concurrency, sender), name="conveyor-bench-drain"
        )
        worker.start()
        sender.close()
        try:
            seconds = float(receiver.recv())
        except EOFError:
            worker.join(timeout=60)  # for its exit code
            raise RuntimeError(f"the drain worker died (exit code {worker.exitcode})") from None
        finally:
            worker.join(timeout=60)
            receiver.close()
        _check_drained(db, jobs, f"drain of {task_name}")
    return Rate(jobs, seconds)


def drain_sync(
    jobs: int,
    concurrency: int = 10,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    return drain(jobs, SYNC_NOOP, concurrency, backend=backend, postgres=postgres, redis=redis)


def drain_async(
    jobs: int,
    concurrency: int = 10,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    return drain(jobs, ASYNC_NOOP, concurrency, backend=backend, postgres=postgres, redis=redis)


def drain_keyed(
    jobs: int,
    concurrency: int = 10,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    return drain(jobs, KEYED_NOOP, concurrency, backend=backend, postgres=postgres, redis=redis)


def drain_cli(
    jobs: int,
    processes: int,
    concurrency: int = 10,
    task_name: str = ASYNC_NOOP,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Rate:
    """Pre-enqueue `jobs` no-op jobs, then run `conveyor worker ... --processes N --burst`
    until it exits. The time is the store's own: from the first job's `started_at` to the
    last job's `finished_at`, so interpreter start-up and imports, which differ with the
    number of processes, stay out of it."""
    with scratch(backend, f"drain-p{processes}", postgres, redis) as db:
        _fill(db, jobs, task_name)
        worker = _start_worker(db, concurrency, processes=processes, burst=True)
        try:
            code = worker.wait(timeout=WORKER_START_TIMEOUT_S + jobs / 200)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"conveyor worker -p {processes} --burst did not finish") from None
        finally:
            _stop_worker(worker)
        if code != 0:
            raise RuntimeError(f"conveyor worker -p {processes} --burst exited with code {code}")
        finished = _check_drained(db, jobs, f"drain by {processes} worker processes")
    starts = [j.started_at for j in finished if j.started_at is not None]
    ends = [j.finished_at for j in finished if j.finished_at is not None]
    if len(starts) != jobs or len(ends) != jobs:
        raise RuntimeError(f"drain by {processes} processes: {len(ends)} of {jobs} have times")
    return Rate(jobs, max(ends) - min(starts))


# -- scale ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The drain rate of one `conveyor worker --burst` on a fresh store, with a backlog queued
    and with it finished, and the worker's memory over the long drain."""

    fresh: Rate
    #: the first `jobs` of the backlog, drained while the rest waits queued
    backlog_first: Rate
    #: the last `jobs` of the backlog: by then the tables hold the rest, finished
    backlog_last: Rate
    backlog: Rate
    #: `jobs` enqueued and drained after the backlog, with all of it finished in the tables
    after: Rate
    #: PostgreSQL: the same again after `VACUUM (ANALYZE)` of the tables, as autovacuum does
    #: (the report says whether the server's autovacuum is on)
    after_vacuum: Rate | None
    #: the worker's resident memory once the drain is under way (a tenth of it), and at its end
    rss_early_mib: float
    rss_end_mib: float


def _enqueue_ids(app: conveyor.App, jobs: int) -> tuple[int, int]:
    """`jobs` sync no-ops by `enqueue_many`; the first and last job's id."""
    task = app.tasks[SYNC_NOOP]
    first = last = 0
    for start in range(0, jobs, FILL_BATCH):
        batch = task.enqueue_many([(i,) for i in range(start, min(start + FILL_BATCH, jobs))])
        first = first or batch[0].id
        last = batch[-1].id
    return first, last


def _rss_mib(pid: int) -> float | None:
    """A process's resident memory (Linux's /proc), in MiB; None once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None  # exited, not yet reaped


def _burst(db: Database, jobs: int, on_progress: Callable[[int], None] | None = None) -> None:
    """One `conveyor worker --burst` (concurrency 10) until the queue is empty; every
    `SAMPLE_EVERY_S`, `on_progress(the worker's pid)`."""
    worker = _start_worker(db, 10, burst=True)
    started = time.monotonic()
    try:
        while True:
            try:
                code = worker.wait(timeout=SAMPLE_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() - started > WORKER_START_TIMEOUT_S + jobs / 200:
                    raise RuntimeError("conveyor worker --burst did not finish") from None
                if on_progress is not None:
                    on_progress(worker.pid)
    finally:
        _stop_worker(worker)
    if code != 0:
        raise RuntimeError(f"conveyor worker --burst exited with code {code}")


def _span(app: conveyor.App, first: int, last: int) -> Rate:
    """The jobs `first`..`last` (ids, in claim order) by the store's own times: from the
    first one's start to the last one's finish."""
    begun, ended = app.get_job(first).started_at, app.get_job(last).finished_at
    if begun is None or ended is None:
        raise RuntimeError(f"jobs {first} and {last} are not both finished")
    return Rate(last - first + 1, ended - begun)


def scale(
    jobs: int,
    queued: int,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Scale:
    """On one store: drain `jobs` on a fresh store; then `queued` more, sampling the worker's
    memory; then `jobs` again, with the `queued` finished ones (and their history) in the
    tables (on Redis, in its keys and indexes). Times are the store's (`started_at`,
    `finished_at`), as in `drain_cli`."""
    if queued < 2 * jobs:
        raise ValueError(f"the backlog ({queued:,}) must hold at least twice {jobs:,} jobs")
    with scratch(backend, "scale", postgres, redis) as db:
        app = _app(db)
        try:
            app.migrate()
            first, last = _enqueue_ids(app, jobs)
            _burst(db, jobs)
            fresh = _span(app, first, last)

            first, last = _enqueue_ids(app, queued)
            rss: list[float] = []

            def sample(pid: int) -> None:
                if (mib := _rss_mib(pid)) is not None:
                    rss.append(mib)

            _burst(db, queued, sample)
            if not rss:
                raise RuntimeError("the backlog drained before the worker's memory was sampled")
            backlog = _span(app, first, last)
            backlog_first = _span(app, first, first + jobs - 1)
            backlog_last = _span(app, last - jobs + 1, last)

            def again() -> Rate:
                first, last = _enqueue_ids(app, jobs)
                _burst(db, jobs)
                return _span(app, first, last)

            after = again()
            after_vacuum = None
            if db.schema is not None:
                _vacuum(db.url, db.schema)
                after_vacuum = again()
            drained = (3 if after_vacuum else 2) * jobs + queued
            _expect_all_succeeded(app, drained, "scale")
        finally:
            app.close()
    early, end = rss[len(rss) // 10], rss[-1]
    return Scale(fresh, backlog_first, backlog_last, backlog, after, after_vacuum, early, end)


def _vacuum(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("jobs", "job_history"):
            conn.execute(
                sql.SQL("VACUUM (ANALYZE) {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )


# -- latency ----------------------------------------------------------------------------------


def _start_worker(
    db: Database, concurrency: int, processes: int = 1, burst: bool = False
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **db.environ())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable,
        "-m",
        "conveyor",
        "worker",
        "benchmarks.worker_app:app",
        "--concurrency",
        str(concurrency),
        "--processes",
        str(processes),
        "--log-level",
        "WARNING",
    ]
    if burst:
        command.append("--burst")
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL)


def _wait_for_worker(app: conveyor.App, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while not app.list_workers():
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} before starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not register within {WORKER_START_TIMEOUT_S}s")
        time.sleep(0.05)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def latency(
    rate: float = 30.0,
    seconds: float = 10.0,
    concurrency: int = 10,
    *,
    backend: str = "sqlite",
    postgres: str | None = None,
    redis: str | None = None,
) -> Latencies:
    """Enqueue one job at a time at `rate` jobs/s for `seconds` while a `conveyor worker`
    subprocess runs them; each job's latency is `started_at - created_at`. On SQLite both are
    stamped from this machine's clock (the enqueuing process and the worker process); on
    PostgreSQL both are the server's `now()` (the insert's and the claim's transactions), on
    Redis the server's `TIME` (the enqueue's and the claim's scripts)."""
    jobs = max(1, round(rate * seconds))
    with scratch(backend, "latency", postgres, redis) as db:
        app = _app(db)
        try:
            app.migrate()  # before the worker starts, so it finds the schema in place
            worker = _start_worker(db, concurrency)
            try:
                _wait_for_worker(app, worker)
                task = app.tasks[SYNC_NOOP]
                interval = 1.0 / rate
                started = time.perf_counter()
                for i in range(jobs):
                    pause = started + i * interval - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    task.enqueue(i)
                offered = jobs / max(time.perf_counter() - started, interval)
                deadline = time.monotonic() + 60
                while _count(app, conveyor.JobState.SUCCEEDED) < jobs:
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited with code {worker.returncode}")
                    if time.monotonic() > deadline:
                        raise RuntimeError("the worker did not finish the latency jobs in 60s")
                    time.sleep(0.05)
            finally:
                _stop_worker(worker)
            _expect_all_succeeded(app, jobs, "latency")
            finished = app.list_jobs(state="succeeded", limit=jobs)
            samples = [j.started_at - j.created_at for j in finished if j.started_at is not None]
        finally:
            app.close()
    if len(samples) != jobs:
        raise RuntimeError(f"latency: {len(samples)} of {jobs} jobs have a start time")
    return Latencies(samples, offered, concurrency)
