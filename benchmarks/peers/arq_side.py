"""arq on Redis, through its own API: a pool from `create_pool(RedisSettings.from_dsn(url))`,
jobs enqueued with `await pool.enqueue_job("noop_job", i)` (arq has no bulk enqueue), and its
worker command, `arq benchmarks.peers.arq_app.WorkerSettings`, at its defaults: max_jobs 10,
polling its queue every 0.5 s, results kept an hour.

arq runs only `async def` functions; its documentation sends blocking code to an executor, and
the sync no-op and stamp go through `asyncio.to_thread` (the default executor). Every run
empties its Redis database before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

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

#: `arq` at its defaults, its log configuration at WARNING (at its default, INFO, it logs
#: every job; `--custom-log-dict` is its way to set it)
WORKER = [
    "benchmarks.peers.arq_app.WorkerSettings",
    "--custom-log-dict",
    "benchmarks.peers.arq_side.LOG_CONFIG",
]
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
FILL_BATCH = 1_000


async def noop_job(ctx: Any, i: int) -> None:
    await asyncio.to_thread(noop, i)


async def anoop_job(ctx: Any, i: int) -> None:
    """Does nothing, on the worker's event loop."""


async def stamp_job(ctx: Any, i: int) -> None:
    await asyncio.to_thread(stamp, i)


async def astamp_job(ctx: Any, i: int) -> None:
    stamp(i)


FUNCTIONS = [noop_job, anoop_job, stamp_job, astamp_job]


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


@contextlib.contextmanager
def _pool(url: str | None) -> Iterator[tuple[asyncio.Runner, ArqRedis, dict[str, str]]]:
    """A loop to run calls on, a pool on an empty database, and the environment its worker
    needs; the database is emptied afterwards."""
    with scratch_redis(url) as scratch, asyncio.Runner() as runner:
        pool = runner.run(create_pool(redis_settings(scratch)))
        try:
            yield runner, pool, {REDIS_ENV: scratch}
        finally:
            runner.run(pool.aclose())


async def _unfinished(pool: ArqRedis) -> int:
    """Jobs in arq's queue: a job leaves it when it finishes."""
    return int(await pool.zcard(pool.default_queue_name))


async def _expect_unfinished(pool: ArqRedis, jobs: int) -> None:
    found = await _unfinished(pool)
    if found != jobs:
        raise RuntimeError(f"arq: expected {jobs} queued jobs, found {found}")


async def _enqueue_one_by_one(pool: ArqRedis, jobs: int) -> float:
    seconds = await one_by_one(lambda i: pool.enqueue_job("noop_job", i), jobs)
    await _expect_unfinished(pool, jobs + 1)
    return seconds


def enqueue_one(jobs: int, url: str | None) -> Rate:
    """`await pool.enqueue_job("noop_job", i)` `jobs` times, one after the other."""
    with _pool(url) as (runner, pool, _):
        return Rate(jobs, runner.run(_enqueue_one_by_one(pool, jobs)))


async def _fill(pool: ArqRedis, jobs: int, name: str) -> None:
    """Not measured: enqueue calls FILL_BATCH at a time, concurrently."""
    await gather_in_batches(lambda i: pool.enqueue_job(name, i), jobs, FILL_BATCH)
    await _expect_unfinished(pool, jobs)


async def _succeeded(pool: ArqRedis) -> int:
    return sum(1 for result in await pool.all_job_results() if result.success)


def drain(jobs: int, asynchronous: bool, url: str | None) -> Drain:
    """`arq benchmarks.peers.arq_app.WorkerSettings` over `jobs` queued no-op jobs, timed from
    its start until its queue is empty (a job leaves it when it finishes)."""
    with _pool(url) as (runner, pool, env):
        runner.run(_fill(pool, jobs, "anoop_job" if asynchronous else "noop_job"))
        # arq reads at most 100 jobs a poll, polling every 0.5 s: allowed to be slower
        result = timed_drain(
            jobs,
            [*command("arq"), *WORKER],
            env,
            lambda: runner.run(_unfinished(pool)),
            slowest=50.0,
        )
        succeeded = runner.run(_succeeded(pool))
        if succeeded != jobs:
            raise RuntimeError(f"arq drain: {succeeded} of {jobs} jobs succeeded")
    return result


def latency(rate: float, seconds: float, asynchronous: bool, url: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `arq` worker, in seconds."""
    name = "astamp_job" if asynchronous else "stamp_job"
    with _pool(url) as (runner, pool, env), stamps_file() as stamps:
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("arq"), *WORKER], env) as running:
            return paced_latency_async(
                rate, seconds, stamps, running, runner, lambda i: pool.enqueue_job(name, i)
            )
