"""huey on SQLite and on Redis, through its own API: `SqliteHuey` and `RedisHuey` at their
defaults, tasks enqueued by calling them (`noop(i)`; huey has no bulk enqueue, and `task.map()`
enqueues one job per call), and its worker command,
`huey_consumer benchmarks.peers.huey_app.huey -w 1`.

On SQLite every run uses a fresh database file in a temporary folder; on Redis (`redis` the
URL) every run empties its database before and after.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huey import RedisHuey, SqliteHuey

from benchmarks.common import Rate, scratch_db, scratch_redis
from benchmarks.peers.harness import (
    REDIS_ENV,
    STAMPS_ENV,
    Drain,
    command,
    paced_latency,
    stamp,
    stamps_file,
    timed_drain,
    worker,
)
from benchmarks.tasks import noop

DB_ENV = "CONVEYOR_BENCH_HUEY_DB"
#: huey_consumer at its defaults (one worker thread; on SQLite polling from 0.1 s, on Redis
#: waiting in BRPOP), logging only warnings
CONSUMER = ["benchmarks.peers.huey_app.huey", "--workers", "1", "--quiet"]
#: huey stops gracefully on SIGINT (SIGTERM interrupts running tasks)
STOP = signal.SIGINT


def done() -> bool:
    """Queued after a drain's jobs: one worker thread runs tasks in order, so its stored
    result means every job before it has run (a no-op's None result is not stored)."""
    return True


@dataclass(frozen=True)
class Bench:
    """A huey and the benchmark's tasks registered on it."""

    huey: SqliteHuey | RedisHuey
    noop: Any
    stamp: Any
    done: Any


def _tasks(huey: SqliteHuey | RedisHuey) -> Bench:
    return Bench(huey, huey.task()(noop), huey.task()(stamp), huey.task()(done))


def make_huey(path: Path | str, **options: Any) -> Bench:
    """SqliteHuey at its defaults on `path` (`options` for the untimed drain fill only)."""
    return _tasks(SqliteHuey(filename=str(path), **options))


def make_redis_huey(url: str) -> Bench:
    """RedisHuey at its defaults on the Redis database `url` names."""
    return _tasks(RedisHuey(url=url))


@contextlib.contextmanager
def _store(workload: str, redis: str | None) -> Iterator[tuple[Bench, dict[str, str]]]:
    """A huey on a fresh store, and the environment its consumer needs to find the store."""
    if redis is None:
        with scratch_db(f"huey-{workload}") as path:
            bench = make_huey(path)
            yield bench, {DB_ENV: str(path)}
            bench.huey.storage.close()
    else:
        with scratch_redis(redis) as url:
            yield make_redis_huey(url), {REDIS_ENV: url}


def _expect_pending(bench: Bench, jobs: int) -> None:
    found = bench.huey.pending_count()
    if found != jobs:
        raise RuntimeError(f"huey: expected {jobs} pending tasks, found {found}")


def enqueue_one(jobs: int, redis: str | None = None) -> Rate:
    """`noop(i)` `jobs` times: one insert and transaction (SQLite) or one LPUSH (Redis) each."""
    with _store("enqueue", redis) as (bench, _):
        bench.noop(-1)  # opens the connection, unmeasured
        started = time.perf_counter()
        for i in range(jobs):
            bench.noop(i)
        seconds = time.perf_counter() - started
        _expect_pending(bench, jobs + 1)
    return Rate(jobs, seconds)


def enqueue_bulk(jobs: int, batch: int, redis: str | None = None) -> Rate:
    """`noop.map(range(...))` with `batch` jobs per call: huey's nearest thing to a bulk
    enqueue, which stores each job on its own (a transaction, or an LPUSH, per job)."""
    with _store("enqueue-map", redis) as (bench, _):
        bench.noop(-1)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            bench.noop.map(range(first, min(first + batch, jobs)))
        seconds = time.perf_counter() - started
        _expect_pending(bench, jobs + 1)
    return Rate(jobs, seconds)


def _fill(bench: Bench, path: str | None, jobs: int) -> None:
    # on SQLite the fill is not measured: without an fsync per job it takes seconds, not a
    # minute (synchronous is a setting of each connection; the consumer's keeps the default)
    filler = make_huey(path, fsync=False) if path else bench
    for first in range(0, jobs, 1_000):
        filler.noop.map(range(first, min(first + 1_000, jobs)))
    if filler is not bench:
        filler.huey.storage.close()


def drain(jobs: int, redis: str | None = None) -> Drain:
    """huey_consumer over `jobs` queued no-op tasks and a last `done` task, timed from its start
    until `done`'s result is stored."""
    with _store("drain", redis) as (bench, env):
        _fill(bench, env.get(DB_ENV), jobs)
        last = bench.done()

        def remaining() -> int:
            if last.get() is True:
                return 0
            return max(1, int(bench.huey.pending_count()))

        return timed_drain(jobs, [*command("huey_consumer"), *CONSUMER], env, remaining, STOP)


def latency(rate: float, seconds: float, redis: str | None = None) -> list[float]:
    """Enqueue-to-start latencies under a running huey_consumer, in seconds."""
    with _store("latency", redis) as (bench, env), stamps_file() as stamps:
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("huey_consumer"), *CONSUMER], env, STOP) as running:
            return paced_latency(rate, seconds, stamps, running, bench.stamp)
