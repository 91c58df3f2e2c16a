"""Celery on Redis, through its own API: `Celery(broker=url)` with no result backend (its
default: nothing waits on a result here), tasks sent with `noop.delay(i)` (Celery has no bulk
enqueue: `group(...).apply_async()` publishes each task on its own), and its worker command,
`celery -A benchmarks.peers.celery_app worker`, at its defaults: the prefork pool, one child
process per CPU, prefetching 4 messages per child, logging at WARNING.

With no results stored, a drain ends when the broker holds none of its messages, queued or
unacknowledged: Celery acknowledges a message just before its task runs, so at most one no-op
per child process may still be running then. Every run empties its Redis database before and
after.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celery import Celery, group
from redis import Redis

from benchmarks.common import Rate, scratch_redis
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

#: `celery worker` at its defaults
WORKER = ["-A", "benchmarks.peers.celery_app", "worker"]
#: The broker's list of the default queue, and the hash of the messages delivered to a worker
#: and not yet acknowledged (kombu's Redis transport, at its defaults)
QUEUE_KEY = "celery"
UNACKED_KEY = "unacked"
FILL_BATCH = 1_000


@dataclass(frozen=True)
class Bench:
    """A Celery app and the benchmark's tasks registered on it."""

    app: Celery
    noop: Any
    stamp: Any


def make_celery(url: str) -> Bench:
    """A Celery app at its defaults on the Redis database `url` names."""
    app = Celery("bench", broker=url)
    return Bench(app, app.task(name="noop")(noop), app.task(name="stamp")(stamp))


def app_from_environment() -> Celery:
    """The app of a worker started by a workload here (`celery -A` loads it)."""
    return make_celery(os.environ[REDIS_ENV]).app


@contextlib.contextmanager
def _celery(url: str | None) -> Iterator[tuple[Bench, Redis, dict[str, str]]]:
    """An app on an empty database, a plain client to count its messages with, and the
    environment its worker needs; the database is emptied afterwards."""
    with scratch_redis(url) as scratch, Redis.from_url(scratch) as client:
        bench = make_celery(scratch)
        try:
            yield bench, client, {REDIS_ENV: scratch}
        finally:
            bench.app.close()


def _unfinished(client: Redis) -> int:
    return int(client.llen(QUEUE_KEY)) + int(client.hlen(UNACKED_KEY))


def _expect_unfinished(client: Redis, jobs: int) -> None:
    found = _unfinished(client)
    if found != jobs:
        raise RuntimeError(f"Celery: expected {jobs} messages in the broker, found {found}")


def enqueue_one(jobs: int, url: str | None) -> Rate:
    """`noop.delay(i)` `jobs` times: one publish (LPUSH) each."""
    with _celery(url) as (bench, client, _):
        bench.noop.delay(-1)  # connects, unmeasured
        started = time.perf_counter()
        for i in range(jobs):
            bench.noop.delay(i)
        seconds = time.perf_counter() - started
        _expect_unfinished(client, jobs + 1)
    return Rate(jobs, seconds)


def enqueue_bulk(jobs: int, batch: int, url: str | None) -> Rate:
    """`group(noop.s(i) for i in ...).apply_async()` with `batch` tasks per call: Celery's
    nearest thing to a bulk enqueue, which publishes each task on its own."""
    with _celery(url) as (bench, client, _):
        bench.noop.delay(-1)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            group(bench.noop.s(i) for i in range(first, min(first + batch, jobs))).apply_async()
        seconds = time.perf_counter() - started
        _expect_unfinished(client, jobs + 1)
    return Rate(jobs, seconds)


def drain(jobs: int, url: str | None) -> Drain:
    """`celery -A benchmarks.peers.celery_app worker` over `jobs` queued no-op tasks, timed from
    its start until the broker holds none of their messages, queued or unacknowledged."""
    with _celery(url) as (bench, client, env):
        with bench.app.producer_or_acquire() as producer:
            for i in range(jobs):
                bench.noop.apply_async((i,), producer=producer)
        _expect_unfinished(client, jobs)
        return timed_drain(jobs, [*command("celery"), *WORKER], env, lambda: _unfinished(client))


def latency(rate: float, seconds: float, url: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `celery worker`, in seconds."""
    with _celery(url) as (bench, _, env), stamps_file() as stamps:
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("celery"), *WORKER], env) as running:
            return paced_latency(rate, seconds, stamps, running, bench.stamp.delay)
