"""SAQ on Redis, through its own API: a queue from `Queue.from_url(url)`, jobs enqueued with
`await queue.enqueue("noop", i=i)` (SAQ has no bulk enqueue: `queue.map()` enqueues one job per
call and waits for their results), and its worker command,
`saq benchmarks.peers.saq_side.settings --quiet`, at its defaults: concurrency 10, sync
functions on a thread pool.

Every run empties its Redis database before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from saq import Queue

from benchmarks.common import Rate, scratch_redis
from benchmarks.peers.harness import (
    REDIS_ENV,
    STAMPS_ENV,
    Drain,
    command,
    gather_in_batches,
    one_by_one,
    paced_latency_async,
    stamp,
    stamps_file,
    timed_drain,
    worker,
)
from benchmarks.tasks import noop

#: `saq` at its defaults (concurrency 10); `--quiet` leaves logging unconfigured, so only
#: warnings are written (at its default, INFO, it logs every job)
WORKER = ["benchmarks.peers.saq_side.settings", "--quiet"]
FILL_BATCH = 1_000

# SAQ calls a function with its context first and the job's keyword arguments


def noop_job(ctx: Any, *, i: int) -> None:
    noop(i)


async def anoop_job(ctx: Any, *, i: int) -> None:
    """Does nothing, on the worker's event loop."""


def stamp_job(ctx: Any, *, i: int) -> None:
    stamp(i)


async def astamp_job(ctx: Any, *, i: int) -> None:
    stamp(i)


FUNCTIONS = {"noop": noop_job, "anoop": anoop_job, "stamp": stamp_job, "astamp": astamp_job}


def settings() -> dict[str, Any]:
    """The worker settings `saq` loads (a callable, so the URL is read in the worker): the
    queue on the database `CONVEYOR_BENCH_REDIS_URL` names and the functions, nothing else."""
    return {
        "queue": Queue.from_url(os.environ[REDIS_ENV]),
        "functions": list(FUNCTIONS.items()),
    }


@contextlib.contextmanager
def _queue(url: str | None) -> Iterator[tuple[asyncio.Runner, Any, dict[str, str]]]:
    """A loop to run calls on, a connected queue on an empty database, and the environment its
    worker needs; the database is emptied afterwards."""
    with scratch_redis(url) as scratch, asyncio.Runner() as runner:
        queue = Queue.from_url(scratch)
        runner.run(queue.connect())
        try:
            yield runner, queue, {REDIS_ENV: scratch}
        finally:
            runner.run(queue.disconnect())


async def _expect_incomplete(queue: Any, jobs: int) -> None:
    found = await queue.count("incomplete")
    if found != jobs:
        raise RuntimeError(f"SAQ: expected {jobs} incomplete jobs, found {found}")


async def _enqueue_one_by_one(queue: Any, jobs: int) -> float:
    seconds = await one_by_one(lambda i: queue.enqueue("noop", i=i), jobs)
    await _expect_incomplete(queue, jobs + 1)
    return seconds


def enqueue_one(jobs: int, url: str | None) -> Rate:
    """`await queue.enqueue("noop", i=i)` `jobs` times, one after the other."""
    with _queue(url) as (runner, queue, _):
        return Rate(jobs, runner.run(_enqueue_one_by_one(queue, jobs)))


async def _fill(queue: Any, jobs: int, name: str) -> None:
    """Not measured: enqueue calls FILL_BATCH at a time, concurrently."""
    await gather_in_batches(lambda i: queue.enqueue(name, i=i), jobs, FILL_BATCH)
    await _expect_incomplete(queue, jobs)


def drain(jobs: int, asynchronous: bool, url: str | None) -> Drain:
    """`saq benchmarks.peers.saq_side.settings` over `jobs` queued no-op jobs, timed from its
    start until the queue counts none incomplete (queued or active)."""
    with _queue(url) as (runner, queue, env):
        runner.run(_fill(queue, jobs, "anoop" if asynchronous else "noop"))
        return timed_drain(
            jobs,
            [*command("saq"), *WORKER],
            env,
            lambda: int(runner.run(queue.count("incomplete"))),
        )


def latency(rate: float, seconds: float, asynchronous: bool, url: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `saq` worker, in seconds."""
    name = "astamp" if asynchronous else "stamp"
    with _queue(url) as (runner, queue, env), stamps_file() as stamps:
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("saq"), *WORKER], env) as running:
            return paced_latency_async(
                rate, seconds, stamps, running, runner, lambda i: queue.enqueue(name, i=i)
            )
