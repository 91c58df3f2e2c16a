"""huey on SQLite, through its own API: `SqliteHuey` at its defaults, tasks enqueued by
calling them (`noop(i)`; huey has no bulk enqueue, and `task.map()` enqueues one job per call),
and its worker command, `huey_consumer benchmarks.peers.huey_app.huey -w 1`.

Every run uses a fresh database file in a temporary folder.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huey import SqliteHuey

from benchmarks.common import Rate, scratch_db
from benchmarks.peers.harness import (
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
#: huey_consumer at its defaults (one worker thread, polling from 0.1 s), logging only warnings
CONSUMER = ["benchmarks.peers.huey_app.huey", "--workers", "1", "--quiet"]
#: huey stops gracefully on SIGINT (SIGTERM interrupts running tasks)
STOP = signal.SIGINT


def done() -> bool:
    """Queued after a drain's jobs: one worker thread runs tasks in order, so its stored
    result means every job before it has run (a no-op's None result is not stored)."""
    return True


@dataclass(frozen=True)
class Bench:
    """A SqliteHuey and the benchmark's tasks registered on it."""

    huey: SqliteHuey
    noop: Any
    stamp: Any
    done: Any


def make_huey(path: Path | str, **options: Any) -> Bench:
    """SqliteHuey at its defaults on `path` (`options` for the untimed drain fill only)."""
    huey = SqliteHuey(filename=str(path), **options)
    return Bench(huey, huey.task()(noop), huey.task()(stamp), huey.task()(done))


def _expect_pending(bench: Bench, jobs: int) -> None:
    found = bench.huey.pending_count()
    if found != jobs:
        raise RuntimeError(f"huey: expected {jobs} pending tasks, found {found}")


def enqueue_one(jobs: int) -> Rate:
    """`noop(i)` `jobs` times: one insert, one transaction each."""
    with scratch_db("huey-enqueue") as path:
        bench = make_huey(path)
        bench.noop(-1)  # opens the connection, unmeasured
        started = time.perf_counter()
        for i in range(jobs):
            bench.noop(i)
        seconds = time.perf_counter() - started
        _expect_pending(bench, jobs + 1)
        bench.huey.storage.close()
    return Rate(jobs, seconds)


def enqueue_bulk(jobs: int, batch: int) -> Rate:
    """`noop.map(range(...))` with `batch` jobs per call: huey's nearest thing to a bulk
    enqueue, which stores each job in a transaction of its own."""
    with scratch_db("huey-enqueue-map") as path:
        bench = make_huey(path)
        bench.noop(-1)
        started = time.perf_counter()
        for first in range(0, jobs, batch):
            bench.noop.map(range(first, min(first + batch, jobs)))
        seconds = time.perf_counter() - started
        _expect_pending(bench, jobs + 1)
        bench.huey.storage.close()
    return Rate(jobs, seconds)


def drain(jobs: int) -> Drain:
    """huey_consumer over `jobs` queued no-op tasks and a last `done` task, timed from its start
    until `done`'s result is stored."""
    with scratch_db("huey-drain") as path:
        # the fill is not measured: without an fsync per job it takes seconds, not a minute
        # (synchronous is a setting of each connection; the consumer's keeps the default)
        filler = make_huey(path, fsync=False)
        for first in range(0, jobs, 1_000):
            filler.noop.map(range(first, min(first + 1_000, jobs)))
        filler.huey.storage.close()
        bench = make_huey(path)
        last = bench.done()

        def remaining() -> int:
            if last.get() is True:
                return 0
            return max(1, int(bench.huey.pending_count()))

        result = timed_drain(
            jobs, [*command("huey_consumer"), *CONSUMER], {DB_ENV: str(path)}, remaining, STOP
        )
        bench.huey.storage.close()
    return result


def latency(rate: float, seconds: float) -> list[float]:
    """Enqueue-to-start latencies under a running huey_consumer, in seconds."""
    with scratch_db("huey-latency") as path, stamps_file() as stamps:
        bench = make_huey(path)
        env = {DB_ENV: str(path), STAMPS_ENV: str(stamps)}
        with worker([*command("huey_consumer"), *CONSUMER], env, STOP) as running:
            samples = paced_latency(rate, seconds, stamps, running, bench.stamp)
        bench.huey.storage.close()
    return samples
