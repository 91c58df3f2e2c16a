"""Dramatiq on Redis, through its own API: a `RedisBroker` at its defaults, messages sent with
`actor.send(i)` (Dramatiq has no bulk enqueue: `group([...]).run()` sends each message on its
own), and its worker command, `dramatiq benchmarks.peers.dramatiq_app`, at its defaults: one
worker process per CPU, 8 threads each.

`async def` actors need the `AsyncIO` middleware, which is not among the defaults: the async
workloads add it (the broker of the sending side and of the worker alike), the sync ones do not.
Every run empties its Redis database before and after.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from benchmarks.common import Rate, scratch_redis
from benchmarks.peers.harness import (
    REDIS_ENV,
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
from benchmarks.tasks import anoop, noop

#: Set (to anything) for a worker that runs `async def` actors: the AsyncIO middleware is added.
ASYNCIO_ENV = "CONVEYOR_BENCH_DRAMATIQ_ASYNCIO"
QUEUE = "default"
#: `dramatiq` at its defaults (processes: one per CPU; threads: 8; logging at INFO, which
#: writes nothing per message)
WORKER = ["benchmarks.peers.dramatiq_app"]


@dataclass(frozen=True)
class Bench:
    """A RedisBroker (the global broker, as the worker command expects) and its actors."""

    broker: RedisBroker
    noop: Any
    anoop: Any
    stamp: Any
    astamp: Any

    def unfinished(self) -> int:
        """Messages of the queue not yet acknowledged (queued, delayed or running): what the
        broker's `join` waits on. A worker acknowledges a message once its actor returned."""
        return int(self.broker.do_qsize(QUEUE))


def make_dramatiq(url: str, asyncio: bool = False) -> Bench:
    """A RedisBroker at its defaults on `url` (with the AsyncIO middleware if `asyncio`)."""
    broker = RedisBroker(url=url)
    if asyncio:
        broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)

    def actor(fn: Any) -> Any:
        return dramatiq.actor(fn, actor_name=fn.__name__, broker=broker)

    return Bench(broker, actor(noop), actor(anoop), actor(stamp), actor(astamp))


@contextlib.contextmanager
def _broker(url: str | None, asyncio: bool = False) -> Iterator[tuple[Bench, dict[str, str]]]:
    with scratch_redis(url) as scratch:
        bench = make_dramatiq(scratch, asyncio)
        env = {REDIS_ENV: scratch, ASYNCIO_ENV: "1" if asyncio else ""}
        try:
            yield bench, env
        finally:
            bench.broker.close()


def _expect_unfinished(bench: Bench, jobs: int) -> None:
    found = bench.unfinished()
    if found != jobs:
        raise RuntimeError(f"Dramatiq: expected {jobs} messages in its queue, found {found}")


def enqueue_one(jobs: int, url: str | None) -> Rate:
    """`noop.send(i)` `jobs` times: one round trip (its enqueue script) each."""
    with _broker(url) as (bench, _):
        bench.noop.send(-1)  # connects, unmeasured
        started = time.perf_counter()
        for i in range(jobs):
            bench.noop.send(i)
        seconds = time.perf_counter() - started
        _expect_unfinished(bench, jobs + 1)
    return Rate(jobs, seconds)


def enqueue_bulk(jobs: int, batch: int, url: str | None) -> Rate:
    """`group([noop.message(i), ...]).run()` with `batch` messages per call: Dramatiq's nearest
    thing to a bulk enqueue, which sends each message on its own."""
    with _broker(url) as (bench, _):
        bench.noop.send(-1)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            last = min(first + batch, jobs)
            dramatiq.group(bench.noop.message(i) for i in range(first, last)).run()
        seconds = time.perf_counter() - started
        _expect_unfinished(bench, jobs + 1)
    return Rate(jobs, seconds)


def drain(jobs: int, asynchronous: bool, url: str | None) -> Drain:
    """`dramatiq benchmarks.peers.dramatiq_app` over `jobs` queued no-op messages, timed from its
    start until the broker holds none unacknowledged."""
    with _broker(url, asynchronous) as (bench, env):
        actor = bench.anoop if asynchronous else bench.noop
        for i in range(jobs):
            actor.send(i)
        _expect_unfinished(bench, jobs)
        return timed_drain(jobs, [*command("dramatiq"), *WORKER], env, bench.unfinished)


def latency(rate: float, seconds: float, asynchronous: bool, url: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `dramatiq` worker, in seconds."""
    with _broker(url, asynchronous) as (bench, env), stamps_file() as stamps:
        actor = bench.astamp if asynchronous else bench.stamp
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("dramatiq"), *WORKER], env) as running:
            return paced_latency(rate, seconds, stamps, running, actor.send)


def broker_from_environment() -> RedisBroker:
    """The broker of a worker started by a workload here (the module `dramatiq` loads)."""
    return make_dramatiq(os.environ[REDIS_ENV], bool(os.environ.get(ASYNCIO_ENV))).broker
