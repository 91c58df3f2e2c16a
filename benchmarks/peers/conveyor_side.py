"""conveyor's side of the peer comparison, on SQLite, PostgreSQL or Redis: `task.enqueue` and
`task.enqueue_many` (the workloads `python -m benchmarks` runs), and `conveyor worker` as a
subprocess for the drain and the latency, timed the same way as the peers' workers.

`url` is the server's (PostgreSQL's or Redis's, database included) for the store named; None
for SQLite, or for the server's default (`benchmarks.common`)."""

from __future__ import annotations

from typing import Any

import conveyor
from benchmarks import workloads
from benchmarks.common import Database, Rate, scratch
from benchmarks.peers.harness import (
    STAMPS_ENV,
    Drain,
    astamp,
    command,
    paced_latency,
    stamp,
    stamps_file,
    timed_drain,
    worker,
)
from benchmarks.tasks import ASYNC_NOOP, SYNC_NOOP, make_app

STAMP = "bench.stamp"
ASTAMP = "bench.astamp"
APP = "benchmarks.peers.conveyor_app:app"
#: `conveyor worker` at its defaults (concurrency 10, one process), logging only warnings
WORKER = ["worker", APP, "--log-level", "WARNING"]
FILL_BATCH = 10_000


def make_peers_app(url: str | None = None, **options: Any) -> conveyor.App:
    """The benchmark's app (no-op tasks) with the latency workload's stamping tasks."""
    app = make_app(url, **options)
    app.task(name=STAMP)(stamp)
    app.task(name=ASTAMP)(astamp)
    return app


def _app(db: Database) -> conveyor.App:
    return make_peers_app(db.url, **db.app_options())


def _servers(store: str, url: str | None) -> dict[str, str | None]:
    """`url` as the keyword arguments `scratch` and the workloads take (`postgres=`, `redis=`)."""
    return {
        "postgres": url if store == "postgres" else None,
        "redis": url if store == "redis" else None,
    }


def enqueue_one(jobs: int, store: str, url: str | None) -> Rate:
    return workloads.enqueue_one_by_one(jobs, backend=store, **_servers(store, url))


def enqueue_bulk(jobs: int, batch: int, store: str, url: str | None) -> Rate:
    return workloads.enqueue_many(jobs, batch, backend=store, **_servers(store, url))


def _succeeded(app: conveyor.App) -> int:
    stats = app.queue_stats(conveyor.JobState.SUCCEEDED)
    return sum(per_queue.get(conveyor.JobState.SUCCEEDED, 0) for per_queue in stats.values())


def drain(jobs: int, asynchronous: bool, store: str, url: str | None) -> Drain:
    """`conveyor worker --burst` over `jobs` queued no-op jobs, timed from its start until the
    store counts them all succeeded."""
    with scratch(store, "peers-drain", **_servers(store, url)) as db:
        app = _app(db)
        try:
            app.migrate()
            task = app.tasks[ASYNC_NOOP if asynchronous else SYNC_NOOP]
            for first in range(0, jobs, FILL_BATCH):
                task.enqueue_many([(i,) for i in range(first, min(first + FILL_BATCH, jobs))])
            result = timed_drain(
                jobs,
                [*command("conveyor"), *WORKER, "--burst"],
                db.environ(),
                lambda: jobs - _succeeded(app),
            )
        finally:
            app.close()
    return result


def latency(
    rate: float, seconds: float, asynchronous: bool, store: str, url: str | None
) -> list[float]:
    """Enqueue-to-start latencies under a running `conveyor worker`, in seconds."""
    with scratch(store, "peers-latency", **_servers(store, url)) as db, stamps_file() as stamps:
        app = _app(db)
        try:
            app.migrate()
            task = app.tasks[ASTAMP if asynchronous else STAMP]
            env = {**db.environ(), STAMPS_ENV: str(stamps)}
            with worker([*command("conveyor"), *WORKER], env) as running:
                return paced_latency(rate, seconds, stamps, running, task.enqueue)
        finally:
            app.close()
