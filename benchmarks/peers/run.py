"""The comparison itself: on each store, every workload for conveyor and its peers in turn,
`repeat` rounds, the order of the systems reversed every round, and the raw loop in the same
rounds."""

from __future__ import annotations

import importlib.metadata
import sqlite3
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import raw, raw_postgres, raw_redis
from benchmarks.common import redis_url
from benchmarks.peers import (
    arq_side,
    celery_side,
    conveyor_side,
    dramatiq_side,
    huey_side,
    pgqueuer_side,
    rq_side,
    saq_side,
)
from benchmarks.peers.harness import Drain
from benchmarks.peers.options import Options
from benchmarks.peers.report import CONVEYOR, PEER, RAW, StoreResults
from benchmarks.suite import environment


def version(package: str) -> str:
    return importlib.metadata.version(package)


@dataclass(frozen=True)
class Peer:
    """One system on a store: its workloads, with conveyor's arguments (`None` where it has
    none), and its key in the rows (`PEER` for a store's only peer)."""

    name: str
    enqueue_one: Callable[[int], float]
    enqueue_bulk: Callable[[int, int], float] | None
    drain: Callable[[int, bool], Drain]  # (jobs, asynchronous)
    drain_async: bool
    latency: Callable[[float, float, bool], list[float]]
    latency_async: bool
    bulk_note: str
    settings: list[str]
    key: str = PEER

    @property
    def short(self) -> str:
        return self.name.split()[0]


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


def redis_peers(url: str) -> list[Peer]:
    """Dramatiq, huey, SAQ, RQ, arq and Celery on the Redis database `url` names."""
    return [
        Peer(
            name=f"Dramatiq {version('dramatiq')}",
            key="dramatiq",
            enqueue_one=lambda n: dramatiq_side.enqueue_one(n, url).per_second,
            enqueue_bulk=lambda n, b: dramatiq_side.enqueue_bulk(n, b, url).per_second,
            drain=lambda n, a: dramatiq_side.drain(n, a, url),
            drain_async=True,
            latency=lambda r, s, a: dramatiq_side.latency(r, s, a, url),
            latency_async=True,
            bulk_note="Dramatiq: none; group([...]).run() measured, a round trip per message",
            settings=[
                f"Dramatiq {version('dramatiq')}: `RedisBroker(url=...)` at its defaults; "
                "`dramatiq benchmarks.peers.dramatiq_app` at its defaults: one worker process "
                "per CPU, 8 threads each, logging at INFO (nothing per message); the drain ends "
                "when the broker holds no message unacknowledged (a message is acknowledged "
                "after its actor returns); enqueue is `noop.send(i)`. Its async rows add the "
                "AsyncIO middleware its `async def` actors need (not a default).",
            ],
        ),
        Peer(
            name=f"huey {version('huey')}",
            key="huey",
            enqueue_one=lambda n: huey_side.enqueue_one(n, url).per_second,
            enqueue_bulk=lambda n, b: huey_side.enqueue_bulk(n, b, url).per_second,
            drain=lambda n, _: huey_side.drain(n, url),
            drain_async=False,
            latency=lambda r, s, _: huey_side.latency(r, s, url),
            latency_async=False,
            bulk_note="huey: none; task.map() measured, an LPUSH per job",
            settings=[
                f"huey {version('huey')}: `RedisHuey(url=...)` at its defaults (blocking "
                "BRPOP, results stored); `huey_consumer benchmarks.peers.huey_app.huey "
                "--workers 1 --quiet`, as on SQLite; the drain ends when a last task has stored "
                "its result; enqueue is calling the task, `noop(i)`.",
            ],
        ),
        Peer(
            name=f"SAQ {version('saq')}",
            key="saq",
            enqueue_one=lambda n: saq_side.enqueue_one(n, url).per_second,
            enqueue_bulk=None,
            drain=lambda n, a: saq_side.drain(n, a, url),
            drain_async=True,
            latency=lambda r, s, a: saq_side.latency(r, s, a, url),
            latency_async=True,
            bulk_note="SAQ: none (map() enqueues one by one and waits for the results)",
            settings=[
                f"SAQ {version('saq')}: `Queue.from_url(url)`; `saq "
                "benchmarks.peers.saq_side.settings --quiet` at its defaults: concurrency 10, "
                "sync functions on a thread pool, one process; the drain ends when the queue "
                'counts no job "incomplete"; enqueue is `await queue.enqueue("noop", i=i)`.',
            ],
        ),
        Peer(
            name=f"RQ {version('rq')}",
            key="rq",
            enqueue_one=lambda n: rq_side.enqueue_one(n, url).per_second,
            enqueue_bulk=lambda n, b: rq_side.enqueue_bulk(n, b, url).per_second,
            drain=lambda n, _: rq_side.drain(n, url),
            drain_async=False,
            latency=lambda r, s, _: rq_side.latency(r, s, url),
            latency_async=False,
            bulk_note="RQ: queue.enqueue_many([...]), one pipeline per call",
            settings=[
                f"RQ {version('rq')}: `rq worker --quiet --url ...` with its default worker "
                "class, `Worker`, which forks a work horse for every job; the drain ends when "
                "the queue's finished-job registry holds every job; enqueue is "
                "`queue.enqueue(noop, i)`, bulk `queue.enqueue_many([Queue.prepare_data(...)])`.",
            ],
        ),
        Peer(
            name=f"arq {version('arq')}",
            key="arq",
            enqueue_one=lambda n: arq_side.enqueue_one(n, url).per_second,
            enqueue_bulk=None,
            drain=lambda n, a: arq_side.drain(n, a, url),
            drain_async=True,
            latency=lambda r, s, a: arq_side.latency(r, s, a, url),
            latency_async=True,
            bulk_note="arq: none",
            settings=[
                f"arq {version('arq')}: `arq benchmarks.peers.arq_app.WorkerSettings "
                "--custom-log-dict ...` (its logging at WARNING) at its defaults: max_jobs 10, "
                "its queue polled every 0.5 s, results kept; the drain ends when its queue is "
                "empty (a job leaves it when it finishes); enqueue is "
                '`await pool.enqueue_job("noop_job", i)`. arq runs only `async def` functions: '
                "its sync rows run the `def` through `asyncio.to_thread`.",
            ],
        ),
        Peer(
            name=f"Celery {version('celery')}",
            key="celery",
            enqueue_one=lambda n: celery_side.enqueue_one(n, url).per_second,
            enqueue_bulk=lambda n, b: celery_side.enqueue_bulk(n, b, url).per_second,
            drain=lambda n, _: celery_side.drain(n, url),
            drain_async=False,
            latency=lambda r, s, _: celery_side.latency(r, s, url),
            latency_async=False,
            bulk_note="Celery: none; group(...).apply_async() measured, a publish per task",
            settings=[
                f"Celery {version('celery')} (kombu {version('kombu')}): `Celery(broker=url)`, "
                "no result backend; `celery -A benchmarks.peers.celery_app worker` at its "
                "defaults: prefork, one child per CPU, prefetch 4 per child, logging at "
                "WARNING; the drain ends when the broker holds no message queued or "
                "unacknowledged (acknowledged just before the task runs: at most one no-op per "
                "child still running); enqueue is `noop.delay(i)`. Celery runs no `async def` "
                "tasks.",
            ],
        ),
    ]


def conveyor_system(store: str, url: str | None) -> Peer:
    """conveyor, run as its peers are."""
    return Peer(
        name=f"conveyor {version('conveyor')}",
        key=CONVEYOR,
        enqueue_one=lambda n: conveyor_side.enqueue_one(n, store, url).per_second,
        enqueue_bulk=lambda n, b: conveyor_side.enqueue_bulk(n, b, store, url).per_second,
        drain=lambda n, a: conveyor_side.drain(n, a, store, url),
        drain_async=True,
        latency=lambda r, s, a: conveyor_side.latency(r, s, a, store, url),
        latency_async=True,
        bulk_note="",
        settings=[conveyor_settings(store)],
    )


def peers_of(store: str, options: Options) -> list[Peer]:
    if store == "postgres":
        return [postgres_peer(options.postgres_url)]
    if store == "sqlite":
        return [sqlite_peer()]
    return redis_peers(options.redis_url or redis_url())


def conveyor_settings(store: str) -> str:
    where = {
        "sqlite": " (WAL, synchronous=NORMAL)",
        "redis": " (its keys under a fresh prefix per workload, deleted afterwards)",
    }.get(store, "")
    return (
        f"conveyor {version('conveyor')}{where}: `conveyor worker "
        "benchmarks.peers.conveyor_app:app --log-level WARNING` (`--burst` for the drain), "
        "otherwise at its defaults: concurrency 10, one process, sync tasks on threads; "
        "enqueue is `task.enqueue(i)`, `task.enqueue_many(...)` for bulk."
    )


def header(store: str, env: dict[str, Any]) -> str:
    machine = f"{env['cpus']} CPUs · Python {env['python']} · {env['platform']}"
    if store == "redis":
        hiredis = ", hiredis" if env["hiredis"] else ""
        return (
            f"[bold]Redis[/bold] {env['redis']} (appendonly={env['redis_appendonly']}, "
            f"save={env['redis_save']!r}, database {env['redis_db']}, "
            f"{env['redis_connection']}; redis-py {env['redis_py']}{hiredis}) · {machine}"
        )
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


def _joined(names: list[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


def run_store(
    store: str, options: Options, progress: Callable[[str], None] = lambda _: None
) -> StoreResults:
    peers = peers_of(store, options)
    url = (options.redis_url or redis_url()) if store == "redis" else options.postgres_url
    systems = [conveyor_system(store, url), *peers]
    env = environment(store, url)
    results = StoreResults(
        store,
        peers={p.key: p.name for p in peers},
        env=env,
        header=header(store, env),
        settings=[
            *(line for system in systems for line in system.settings),
            _timing(options, store),
            _raw(store, options),
        ],
    )
    n, batch = options.jobs, options.batch
    groups = options.groups

    if "enqueue" in groups:
        results.row("enqueue.one", f"enqueue one by one, {n:,} jobs", "jobs/s")
        bulk_notes = "; ".join(p.bulk_note for p in peers if p.bulk_note)
        results.row("enqueue.bulk", f"bulk enqueue, {batch:,} per call", "jobs/s", bulk_notes)
    if "drain" in groups:
        results.row("drain.sync", f"drain {n:,} sync no-op jobs", "jobs/s")
        sync_only = [p.short for p in peers if not p.drain_async]
        no_async = ""
        if sync_only:  # (PgQueuer runs both)
            no_async = f"{_joined(sync_only)} run{'s' * (len(sync_only) == 1)} no async tasks"
        results.row("drain.async", f"drain {n:,} async no-op jobs", "jobs/s", no_async)
        if store == "redis" and "raw" in groups:
            results.row("drain.raw1", "raw drain, one BRPOP per job", "jobs/s")
        results.row("startup.sync", "worker start to first job done (sync drain)", "ms")
    if "latency" in groups:
        for kind in ("sync", "async"):
            for p in ("p50", "p99"):
                label = f"enqueue-to-start {p}, {kind} task, {options.latency_rate:g} jobs/s"
                results.row(f"latency.{kind}.{p}", label, "ms")

    for round_no in range(1, options.repeat + 1):

        def step(what: str, round_no: int = round_no) -> None:
            progress(f"{store}, run {round_no}/{options.repeat}: {what}")

        # the systems take turns going first, so none always runs on a warmer machine
        order = systems if round_no % 2 else systems[::-1]
        if "raw" in groups:
            _raw_round(results, store, options, step)
        if "enqueue" in groups:
            for system in order:
                step(f"{system.short}: enqueue one by one")
                results.record("enqueue.one", system.key, system.enqueue_one(n))
            for system in order:
                if system.enqueue_bulk is None:
                    continue
                step(f"{system.short}: bulk enqueue, {batch:,} per call")
                results.record("enqueue.bulk", system.key, system.enqueue_bulk(n, batch))
        if "drain" in groups:
            for asynchronous in (False, True):
                kind = "async" if asynchronous else "sync"
                for system in order:
                    if asynchronous and not system.drain_async:
                        continue
                    step(f"{system.short}: drain of {n:,} {kind} no-op jobs")
                    drained = system.drain(n, asynchronous)
                    results.record(f"drain.{kind}", system.key, drained.per_second)
                    if not asynchronous:
                        results.record("startup.sync", system.key, drained.first_s * 1000)
        if "latency" in groups:
            rate, seconds = options.latency_rate, options.latency_seconds
            for asynchronous in (False, True):
                kind = "async" if asynchronous else "sync"
                for system in order:
                    if asynchronous and not system.latency_async:
                        continue
                    step(f"{system.short}: latency, {kind} task, {rate:g} jobs/s for {seconds:g} s")
                    p50, p99 = _latency_ms(system.latency(rate, seconds, asynchronous))
                    results.record(f"latency.{kind}.p50", system.key, p50)
                    results.record(f"latency.{kind}.p99", system.key, p99)
    return results


def _timing(options: Options, store: str) -> str:
    fresh = (
        "an emptied Redis database (conveyor: a fresh key prefix, its keys deleted afterwards)"
        if store == "redis"
        else "a fresh schema or database file"
    )
    logs = (
        "every system logs at WARNING where it logs each job at its default level"
        if store == "redis"
        else "all three log at WARNING"
    )
    return (
        "drains are timed from the worker command's start (interpreter, imports and "
        "connection included alike) until the store shows every job done, polled every 20 ms; "
        f"latency is the task's own start time minus the enqueue call's ({options.latency_rate:g} "
        f"jobs/s for {options.latency_seconds:g} s, after one warm-up job); every run on {fresh}; "
        f"{logs}."
    )


def _raw(store: str, options: Options) -> str:
    if store == "redis":
        return (
            "raw loop (one redis-py client, one list of JSON jobs): LPUSH one per round trip, "
            f"{options.batch:,} LPUSH per pipeline, and drains of one BRPOP per job and of "
            "RPOP with a count of 100, each job decoded, beside the enqueue and drain rows."
        )
    loop = "one psycopg connection" if store == "postgres" else "sqlite3, WAL, synchronous=NORMAL"
    return (
        f"raw loop ({loop}, as in `python -m benchmarks`): insert 1 per transaction, "
        f"{options.batch:,} per transaction, and a drain of 100 per claim, beside the "
        "enqueue and drain rows."
    )


def _raw_round(
    results: StoreResults, store: str, options: Options, step: Callable[[str], None]
) -> None:
    """The raw loop beside the same rows: single and batched inserts, a drain of 100 per claim
    (on Redis also the drain of one job per round trip, in a row of its own)."""
    n, batch, url = options.jobs, options.batch, options.postgres_url
    step("raw loop")
    if store == "postgres":
        figures = {
            "enqueue.one": raw_postgres.insert(n, 1, url).per_second,
            "enqueue.bulk": raw_postgres.insert(n, batch, url).per_second,
            "drain": raw_postgres.drain(n, 100, url).per_second,
        }
    elif store == "redis":
        redis = options.redis_url
        figures = {
            "enqueue.one": raw_redis.insert(n, 1, redis).per_second,
            "enqueue.bulk": raw_redis.insert(n, batch, redis).per_second,
            "drain": raw_redis.drain(n, 100, redis).per_second,
            "drain.raw1": raw_redis.drain(n, 1, redis).per_second,
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
