"""The comparison itself: on each store, every workload for conveyor and its peer in turn,
`repeat` rounds, the order of the two swapped every round, and the raw loop in the same rounds."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import raw, raw_postgres
from benchmarks.peers import conveyor_side, huey_side, pgqueuer_side
from benchmarks.peers.harness import Drain
from benchmarks.peers.options import Options
from benchmarks.peers.report import CONVEYOR, PEER, RAW, StoreResults
from benchmarks.suite import environment


def version(package: str) -> str:
    return importlib.metadata.version(package)


@dataclass(frozen=True)
class Peer:
    """One store's peer: its workloads, with conveyor's arguments (`None` where it has none)."""

    name: str
    enqueue_one: Callable[[int], float]
    enqueue_bulk: Callable[[int, int], float]
    drain: Callable[[int, bool], Drain]  # (jobs, asynchronous)
    drain_async: bool
    latency: Callable[[float, float, bool], list[float]]
    latency_async: bool
    bulk_note: str
    settings: list[str]


def postgres_peer(url: str | None) -> Peer:
    return Peer(
        name=f"PgQueuer {version('pgqueuer')}",
        enqueue_one=lambda n: pgqueuer_side.enqueue_one(n, url).per_second,
        enqueue_bulk=lambda n, b: pgqueuer_side.enqueue_bulk(n, b, url).per_second,
        drain=lambda n, a: pgqueuer_side.drain(n, a, url),
        drain_async=True,
        latency=lambda r, s, a: pgqueuer_side.latency(r, s, a, url),
        latency_async=True,
        bulk_note="",
        settings=[
            f"PgQueuer {version('pgqueuer')} over asyncpg {version('asyncpg')} (one connection, "
            "as in its README): `pgq run benchmarks.peers.pgqueuer_side:create_pgqueuer "
            "--log-level WARNING` (`--mode drain` for the drain), otherwise at its defaults: "
            "batch size 10, no cap on concurrent tasks, LISTEN/NOTIFY with a 30 s poll, uvloop; "
            "enqueue is `await queries.enqueue(...)`, lists of 1,000 for bulk.",
            "PgQueuer 1.6 runs only `async def` entrypoints: its sync rows run the same `def` "
            "through `asyncio.to_thread`, as its error message for a plain `def` advises.",
        ],
    )


def sqlite_peer() -> Peer:
    return Peer(
        name=f"huey {version('huey')}",
        enqueue_one=lambda n: huey_side.enqueue_one(n).per_second,
        enqueue_bulk=lambda n, b: huey_side.enqueue_bulk(n, b).per_second,
        drain=lambda n, _: huey_side.drain(n),
        drain_async=False,
        latency=lambda r, s, _: huey_side.latency(r, s),
        latency_async=False,
        bulk_note="huey has no bulk enqueue: task.map(), one transaction per job",
        settings=[
            f"huey {version('huey')}: `SqliteHuey(filename=...)` at its defaults (WAL, "
            "synchronous left at SQLite's default, FULL: an fsync per commit; results stored); "
            "`huey_consumer benchmarks.peers.huey_app.huey --workers 1 --quiet`: one worker "
            "thread, polling the table from every 0.1 s (x1.15 when idle, up to 10 s); "
            "enqueue is calling the task, `noop(i)`.",
            "huey's drain ends when a last task, queued after the no-ops, has stored its result "
            "(one worker thread runs them in order); huey runs no `async def` tasks.",
        ],
    )


def conveyor_settings(store: str) -> str:
    sqlite = " (WAL, synchronous=NORMAL)" if store == "sqlite" else ""
    return (
        f"conveyor {version('conveyor')}{sqlite}: `conveyor worker "
        "benchmarks.peers.conveyor_app:app --log-level WARNING` (`--burst` for the drain), "
        "otherwise at its defaults: concurrency 10, one process, sync tasks on threads; "
        "enqueue is `task.enqueue(i)`, `task.enqueue_many(...)` for bulk."
    )


def header(store: str, env: dict[str, Any]) -> str:
    machine = f"{env['cpus']} CPUs · Python {env['python']} · {env['platform']}"
    if store == "postgres":
        return (
            f"[bold]PostgreSQL[/bold] {env['postgres']} (synchronous_commit="
            f"{env['postgres_synchronous_commit']}, fsync={env['postgres_fsync']}, "
            f"autovacuum={env['postgres_autovacuum']}, "
            f"{env['postgres_connection']}) · {machine}"
        )
    return f"[bold]SQLite[/bold] {sqlite3.sqlite_version} · {machine}"


def _latency_ms(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (interpolated between the nearest samples)."""
    if len(samples) < 2:
        return samples[0] * 1000, samples[0] * 1000
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def run_store(
    store: str, options: Options, progress: Callable[[str], None] = lambda _: None
) -> StoreResults:
    url = options.postgres_url
    peer = postgres_peer(url) if store == "postgres" else sqlite_peer()
    env = environment(store, url)
    results = StoreResults(
        store,
        peer.name,
        env=env,
        header=header(store, env),
        settings=[conveyor_settings(store), *peer.settings, _timing(options), _raw(store, options)],
    )
    n, batch = options.jobs, options.batch
    groups = options.groups

    if "enqueue" in groups:
        results.row("enqueue.one", f"enqueue one by one, {n:,} jobs", "jobs/s")
        results.row("enqueue.bulk", f"bulk enqueue, {batch:,} per call", "jobs/s", peer.bulk_note)
    if "drain" in groups:
        results.row("drain.sync", f"drain {n:,} sync no-op jobs", "jobs/s")
        no_async = "" if peer.drain_async else f"{peer.name.split()[0]} runs no async tasks"
        results.row("drain.async", f"drain {n:,} async no-op jobs", "jobs/s", no_async)
        results.row("startup.sync", "worker start to first job done (sync drain)", "ms")
    if "latency" in groups:
        for kind in ("sync", "async"):
            for p in ("p50", "p99"):
                label = f"enqueue-to-start {p}, {kind} task, {options.latency_rate:g} jobs/s"
                results.row(f"latency.{kind}.{p}", label, "ms")

    for round_no in range(1, options.repeat + 1):

        def step(what: str, round_no: int = round_no) -> None:
            progress(f"{store}, run {round_no}/{options.repeat}: {what}")

        # the two systems take turns going first, so neither always runs on a warmer machine
        order = (CONVEYOR, PEER) if round_no % 2 else (PEER, CONVEYOR)
        if "raw" in groups:
            _raw_round(results, store, options, step)
        if "enqueue" in groups:
            for system in order:
                step(f"{system}: enqueue one by one")
                rate = (
                    conveyor_side.enqueue_one(n, store, url).per_second
                    if system == CONVEYOR
                    else peer.enqueue_one(n)
                )
                results.record("enqueue.one", system, rate)
            for system in order:
                step(f"{system}: bulk enqueue, {batch:,} per call")
                rate = (
                    conveyor_side.enqueue_bulk(n, batch, store, url).per_second
                    if system == CONVEYOR
                    else peer.enqueue_bulk(n, batch)
                )
                results.record("enqueue.bulk", system, rate)
        if "drain" in groups:
            for asynchronous in (False, True):
                kind = "async" if asynchronous else "sync"
                for system in order:
                    if system == PEER and asynchronous and not peer.drain_async:
                        continue
                    step(f"{system}: drain of {n:,} {kind} no-op jobs")
                    drained = (
                        conveyor_side.drain(n, asynchronous, store, url)
                        if system == CONVEYOR
                        else peer.drain(n, asynchronous)
                    )
                    results.record(f"drain.{kind}", system, drained.per_second)
                    if not asynchronous:
                        results.record("startup.sync", system, drained.first_s * 1000)
        if "latency" in groups:
            rate, seconds = options.latency_rate, options.latency_seconds
            for asynchronous in (False, True):
                kind = "async" if asynchronous else "sync"
                for system in order:
                    if system == PEER and asynchronous and not peer.latency_async:
                        continue
                    step(f"{system}: latency, {kind} task, {rate:g} jobs/s for {seconds:g} s")
                    samples = (
                        conveyor_side.latency(rate, seconds, asynchronous, store, url)
                        if system == CONVEYOR
                        else peer.latency(rate, seconds, asynchronous)
                    )
                    p50, p99 = _latency_ms(samples)
                    results.record(f"latency.{kind}.p50", system, p50)
                    results.record(f"latency.{kind}.p99", system, p99)
    return results


def _timing(options: Options) -> str:
    return (
        "drains are timed from the worker command's start (interpreter, imports and "
        "connection included alike) until the store shows every job done, polled every 20 ms; "
        f"latency is the task's own start time minus the enqueue call's ({options.latency_rate:g} "
        f"jobs/s for {options.latency_seconds:g} s, after one warm-up job); every run on a fresh "
        "schema or database file; all three log at WARNING."
    )


def _raw(store: str, options: Options) -> str:
    loop = "one psycopg connection" if store == "postgres" else "sqlite3, WAL, synchronous=NORMAL"
    return (
        f"raw loop ({loop}, as in `python -m benchmarks`): insert 1 per transaction, "
        f"{options.batch:,} per transaction, and a drain of 100 per claim, beside the "
        "enqueue and drain rows."
    )


def _raw_round(
    results: StoreResults, store: str, options: Options, step: Callable[[str], None]
) -> None:
    """The raw loop beside the same rows: single and batched inserts, a drain of 100 per claim."""
    n, batch, url = options.jobs, options.batch, options.postgres_url
    step("raw loop")
    if store == "postgres":
        figures = {
            "enqueue.one": raw_postgres.insert(n, 1, url).per_second,
            "enqueue.bulk": raw_postgres.insert(n, batch, url).per_second,
            "drain": raw_postgres.drain(n, 100, url).per_second,
        }
    else:
        figures = {
            "enqueue.one": raw.insert(n, 1).per_second,
            "enqueue.bulk": raw.insert(n, batch).per_second,
            "drain": raw.drain(n, 100).per_second,
        }
    for key, value in figures.items():
        keys = ("drain.sync", "drain.async") if key == "drain" else (key,)
        for row in keys:
            if row in results.rows:
                results.record(row, RAW, value)
