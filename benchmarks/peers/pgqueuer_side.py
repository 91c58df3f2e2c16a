"""PgQueuer on PostgreSQL, through its own API: `Queries.enqueue` over an asyncpg connection
(one job per call, or lists of jobs in one statement), and its worker command,
`pgq run benchmarks.peers.pgqueuer_side:create_pgqueuer`, at its defaults.

Every run installs PgQueuer (`Queries.install`) into a fresh schema, found through the
connection's `search_path` (PgQueuer's objects follow it when no schema is configured), and
drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from benchmarks.common import Rate, drop_schema, postgres_url, schema_name
from benchmarks.peers.harness import (
    STAMPS_ENV,
    Drain,
    astamp,
    command,
    one_by_one,
    paced_latency_async,
    stamp,
    stamps_file,
    timed_drain,
    worker,
)
from benchmarks.tasks import noop

URL_ENV = "CONVEYOR_BENCH_PGQUEUER_URL"
SCHEMA_ENV = "CONVEYOR_BENCH_PGQUEUER_SCHEMA"
FACTORY = "benchmarks.peers.pgqueuer_side:create_pgqueuer"
#: `pgq run` at its defaults (batch size 10, no cap on concurrent tasks), logging only warnings
RUN = ["run", FACTORY, "--log-level", "WARNING"]
FILL_BATCH = 10_000


def _number(job: Job) -> int:
    return int(job.payload or b"0")


# PgQueuer 1.6 takes only `async def` entrypoints; its error message for a plain `def` says to
# wrap blocking code in asyncio.to_thread(), which is what the sync no-op and stamp do.


async def noop_entrypoint(job: Job) -> None:
    await asyncio.to_thread(noop, _number(job))


async def anoop_entrypoint(job: Job) -> None:
    """Does nothing, on the event loop."""


async def stamp_entrypoint(job: Job) -> None:
    await asyncio.to_thread(stamp, _number(job))


async def astamp_entrypoint(job: Job) -> None:
    await astamp(_number(job))


ENTRYPOINTS = {
    "noop": noop_entrypoint,
    "anoop": anoop_entrypoint,
    "stamp": stamp_entrypoint,
    "astamp": astamp_entrypoint,
}


async def connect(url: str, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn=url, server_settings={"search_path": schema})


@contextlib.asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` calls: a PgQueuer on one asyncpg connection, as in its README."""
    connection = await connect(os.environ[URL_ENV], os.environ[SCHEMA_ENV])
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))
        for name, entrypoint in ENTRYPOINTS.items():
            pgq.entrypoint(name)(entrypoint)
        yield pgq
    finally:
        await connection.close()


@contextlib.contextmanager
def installed(postgres: str | None) -> Iterator[tuple[asyncio.Runner, Queries, dict[str, str]]]:
    """PgQueuer installed in a fresh schema: a loop to run calls on, `Queries` on one asyncpg
    connection, and the environment a `pgq run` worker needs; the schema is dropped afterwards."""
    url = postgres or postgres_url()
    schema = schema_name("pgqueuer")
    with asyncio.Runner() as runner:
        connection = runner.run(connect(url, schema))
        try:
            runner.run(connection.execute(f'CREATE SCHEMA "{schema}"'))
            queries = Queries(AsyncpgDriver(connection))
            runner.run(queries.install())
            yield runner, queries, {URL_ENV: url, SCHEMA_ENV: schema}
        finally:
            runner.run(connection.close())
            drop_schema(url, schema)


async def _count(queries: Queries, status: str | None = None) -> int:
    """Jobs in PgQueuer's queue table (finished jobs leave it for the log table)."""
    return sum(s.count for s in await queries.queue_size() if status in (None, s.status))


async def _expect_queued(queries: Queries, jobs: int) -> None:
    found = await _count(queries, "queued")
    if found != jobs:
        raise RuntimeError(f"PgQueuer: expected {jobs} queued jobs, found {found}")


async def _enqueue_one_by_one(queries: Queries, jobs: int) -> float:
    seconds = await one_by_one(lambda i: queries.enqueue("noop", str(i).encode()), jobs)
    await _expect_queued(queries, jobs + 1)
    return seconds


def enqueue_one(jobs: int, postgres: str | None) -> Rate:
    """`await queries.enqueue("noop", payload)` `jobs` times: one statement each."""
    with installed(postgres) as (runner, queries, _):
        return Rate(jobs, runner.run(_enqueue_one_by_one(queries, jobs)))


async def _enqueue_lists(queries: Queries, first: int, last: int, name: str = "noop") -> None:
    size = last - first
    await queries.enqueue([name] * size, [str(i).encode() for i in range(first, last)], [0] * size)


async def _enqueue_in_bulk(queries: Queries, jobs: int, batch: int) -> float:
    await queries.enqueue("noop", b"-1")
    started = time.perf_counter()
    for first in range(0, jobs, batch):
        await _enqueue_lists(queries, first, min(first + batch, jobs))
    seconds = time.perf_counter() - started
    await _expect_queued(queries, jobs + 1)
    return seconds


def enqueue_bulk(jobs: int, batch: int, postgres: str | None) -> Rate:
    """`await queries.enqueue([...], [...], [...])` with `batch` jobs per call."""
    with installed(postgres) as (runner, queries, _):
        return Rate(jobs, runner.run(_enqueue_in_bulk(queries, jobs, batch)))


async def _fill(queries: Queries, jobs: int, name: str) -> None:
    for first in range(0, jobs, FILL_BATCH):
        await _enqueue_lists(queries, first, min(first + FILL_BATCH, jobs), name)


def drain(jobs: int, asynchronous: bool, postgres: str | None) -> Drain:
    """`pgq run ... --mode drain` over `jobs` queued no-op jobs, timed from its start until
    PgQueuer's queue table is empty (a finished job is deleted from it and logged)."""
    with installed(postgres) as (runner, queries, env):
        runner.run(_fill(queries, jobs, "anoop" if asynchronous else "noop"))
        result = timed_drain(
            jobs,
            [*command("pgq"), *RUN, "--mode", "drain"],
            env,
            lambda: runner.run(_count(queries)),
        )
        stats = runner.run(queries.log_statistics(limit=None))
        succeeded = sum(s.count for s in stats if s.status == "successful")
        if succeeded != jobs:
            raise RuntimeError(f"PgQueuer drain: {succeeded} of {jobs} jobs logged successful")
    return result


def latency(rate: float, seconds: float, asynchronous: bool, postgres: str | None) -> list[float]:
    """Enqueue-to-start latencies under a running `pgq run`, in seconds."""
    name = "astamp" if asynchronous else "stamp"
    with installed(postgres) as (runner, queries, env), stamps_file() as stamps:
        env = {**env, STAMPS_ENV: str(stamps)}
        with worker([*command("pgq"), *RUN], env, signal.SIGTERM) as running:
            return paced_latency_async(
                rate,
                seconds,
                stamps,
                running,
                runner,
                lambda i: queries.enqueue(name, str(i).encode()),
            )
