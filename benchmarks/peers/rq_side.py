"""RQ on Redis, through its own API: a `Queue` on a redis-py connection, jobs enqueued with
`queue.enqueue(noop, i)` and in bulk with `queue.enqueue_many([...])` (one pipeline per call),
and its worker command, `rq worker --url ... --quiet`, with its default worker class, `Worker`,
which forks a work horse for every job.

The job functions live in `benchmarks.peers.stamps`, which imports nothing heavy: the work horse
imports a job's module at every job. Every run empties its Redis database before and after.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from redis import Redis
from rq import Queue

from benchmarks.common import Rate, scratch_redis
from benchmarks.peers.harness import (
    STAMPS_ENV,
    Drain,
    command,
    paced_latency,
    stamps_file,
    timed_drain,
    worker,
)
from benchmarks.peers.stamps import noop, stamp

#: `rq worker` at its defaults (worker class `rq.Worker`: a fork per job), logging warnings only
#: (`--quiet`; at its default, INFO, it logs every job)
WORKER = ["worker", "--quiet"]
FILL_BATCH = 1_000


@contextlib.contextmanager
def _queue(url: str | None) -> Iterator[tuple[Queue, list[str]]]:
    """The default queue on an empty database, and the worker command for it; the database is
    emptied afterwards."""
    with scratch_redis(url) as scratch, Redis.from_url(scratch) as connection:
        yield Queue(connection=connection), [*command("rq"), *WORKER, "--url", scratch]


def _expect_queued(queue: Queue, jobs: int) -> None:
    found = queue.count
    if found != jobs:
        raise RuntimeError(f"RQ: expected {jobs} queued jobs, found {found}")


def enqueue_one(jobs: int, url: str | None) -> Rate:
    """`queue.enqueue(noop, i)` `jobs` times: one pipeline (MULTI/EXEC) each."""
    with _queue(url) as (queue, _):
        queue.enqueue(noop, -1)  # connects, unmeasured
        started = time.perf_counter()
        for i in range(jobs):
            queue.enqueue(noop, i)
        seconds = time.perf_counter() - started
        _expect_queued(queue, jobs + 1)
    return Rate(jobs, seconds)


def _enqueue_many(queue: Queue, first: int, last: int, func: Callable[[int], None]) -> None:
    queue.enqueue_many([Queue.prepare_data(func, (i,)) for i in range(first, last)])


def enqueue_bulk(jobs: int, batch: int, url: str | None) -> Rate:
    """`queue.enqueue_many([Queue.prepare_data(noop, (i,)), ...])`, `batch` jobs per call."""
    with _queue(url) as (queue, _):
        queue.enqueue(noop, -1)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            _enqueue_many(queue, first, min(first + batch, jobs), noop)
        seconds = time.perf_counter() - started
        _expect_queued(queue, jobs + 1)
    return Rate(jobs, seconds)


def drain(jobs: int, url: str | None) -> Drain:
    """`rq worker` over `jobs` queued no-op jobs, timed from its start until the queue's
    finished-job registry holds them all."""
    with _queue(url) as (queue, argv):
        for first in range(0, jobs, FILL_BATCH):
            _enqueue_many(queue, first, min(first + FILL_BATCH, jobs), noop)
        _expect_queued(queue, jobs)
        finished = queue.finished_job_registry
        # a fork per job: allowed to be slower than the other systems' drains
        result = timed_drain(jobs, argv, {}, lambda: jobs - finished.count, slowest=20.0)
        failed = queue.failed_job_registry.count
        if failed:
            raise RuntimeError(f"RQ drain: {failed} of {jobs} jobs failed")
    return result


def latency(rate: float, seconds: float, url: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `rq worker`, in seconds."""
    with (
        _queue(url) as (queue, argv),
        stamps_file() as stamps,
        worker(argv, {STAMPS_ENV: str(stamps)}) as running,
    ):
        return paced_latency(rate, seconds, stamps, running, lambda i: queue.enqueue(stamp, i))
