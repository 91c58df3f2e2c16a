"""The PostgreSQL backend: the production engine, for many workers on many machines.

Each operation is written once, as a plan: a generator that yields statements and receives
their rows. A blocking driver runs plans on a `psycopg_pool.ConnectionPool` for the sync API,
an async driver on an `AsyncConnectionPool` for the worker, and transactional enqueue runs the
insert plan on the caller's own connection, inside the caller's transaction. How connections
are bounded and pooled, and which errors mean an outage, is `pools.py`'s.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from conveyor.backends.base import Backend, Beat, dependency_depths
from conveyor.backends.postgres.listener import Listener, SyncListener
from conveyor.backends.postgres.pools import (
    DEADLINE_MARGIN_S,
    WATCHDOG,
    AsyncPools,
    SyncPools,
    connect_kwargs,
    needs_new_connections,
    unavailable,
)
from conveyor.backends.sql import Migration, Queries, load_migrations
from conveyor.circuit import Action, CircuitEvent, CircuitInfo, CircuitRow, transition
from conveyor.clock import Clock, SystemClock
from conveyor.config import Settings
from conveyor.cron import TickRecord
from conveyor.errors import (
    BackendUnavailable,
    ConfigurationError,
    NotAConveyorDatabase,
    ValidationError,
)
from conveyor.events import Cursor, Event, merge
from conveyor.job import (
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    NewJob,
    Outcome,
    WorkerInfo,
)
from conveyor.limits import Candidate, pick
from conveyor.logging import get_logger

log = get_logger("conveyor.postgres")

QUERIES = Queries.load("conveyor.backends.postgres", "queries.sql")
MIGRATIONS = load_migrations("conveyor.backends.postgres.migrations")
#: conveyor's migrations table, recognised by its columns (other tools have a `migrations` too)
MIGRATIONS_COLUMNS = frozenset({"version", "name", "applied_at"})

T = TypeVar("T")

_NOT_FINISHED = (JobState.RETRYING, JobState.QUEUED)
#: While claims come back full, due jobs are promoted at most this often.
PROMOTE_EVERY_S = 0.25


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement of a plan; the plan receives its rows (or, without rows, its rowcount)."""

    sql: str
    params: dict[str, Any] | None = None


#: A plan yields one statement, or a list to send together (pipelined), and gets back its
#: rows, or a list of results, in the same shape.
Plan = Generator[Stmt | list[Stmt], Any, T]


def _reraise(exc: BaseException) -> NoReturn:
    """Raise `exc` as BackendUnavailable if it means an outage, else as it is."""
    error = unavailable(exc)
    if error is None:
        raise exc
    raise error from exc


def _in_claim_order(jobs: Iterable[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: (j.priority, j.run_at, j.id))


def _ids(values: Iterable[int]) -> list[int]:
    return [int(v) for v in values]


class PostgresBackend(Backend):
    """Plans for every operation, run by a sync and an async driver (the sync one is `.sync`)."""

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.settings = settings
        self.schema = settings.postgres_schema
        self.channel = f"{self.schema}_jobs"
        self.q = QUERIES.substitute(schema=self.schema, channel=f'"{self.channel}"')
        self._migrations = [
            Migration(
                m.version,
                m.name,
                m.up.replace("{schema}", self.schema),
                m.down.replace("{schema}", self.schema),
            )
            for m in MIGRATIONS
        ]
        # The database's clock unless a test gave the App a clock of its own.
        self.clock = clock
        self._db_time = isinstance(clock, SystemClock)
        self._checked = False
        self._deadline = settings.statement_timeout + DEADLINE_MARGIN_S
        self._pools = SyncPools(self._make_pool, settings.connect_timeout)
        self._apools = AsyncPools(self._make_apool, settings.connect_timeout)
        self._leader_conn: psycopg.AsyncConnection[Any] | None = None
        self._promoted_at = 0.0
        self._claims_short = True
        # Whether the last look found limits in play (a first claim looks). Without them a
        # claim is one plain statement, and looks again with each promotion: limited work
        # that appears meanwhile may see plain jobs of lower priority start first for up to
        # PROMOTE_EVERY_S, never more.
        self._limits_seen = True
        self._listener: Listener | None = None
        self.sync = PostgresStore(self)

    def use_clock(self, clock: Clock) -> None:
        self.clock = clock
        self._db_time = isinstance(clock, SystemClock)

    def now(self, value: float | None) -> float | None:
        """The time to send for "now": None (the database's clock) or the App's clock."""
        return None if self._db_time else value

    # -- connections ------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            **connect_kwargs(self.settings.connect_timeout, self.settings.statement_timeout),
            "row_factory": dict_row,
        }

    def _pool_options(self, name: str) -> dict[str, Any]:
        return {
            "kwargs": self._connect_kwargs(),
            "min_size": 1,
            "max_size": self.settings.postgres_pool_size,
            # how long a caller waits for a free connection (a busy pool, not an outage)
            "timeout": self.settings.connect_timeout,
            "open": False,
            "name": name,
        }

    def _make_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(
            self.url, configure=self._configure, **self._pool_options("conveyor-sync")
        )

    def _make_apool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        return psycopg_pool.AsyncConnectionPool(
            self.url, configure=self._configure_async, **self._pool_options("conveyor-async")
        )

    def _session_sql(self) -> str:
        return self.q.session_settings.replace(
            "{statement_timeout_ms}", str(round(self.settings.statement_timeout * 1000))
        )

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        _json_as_text(conn)
        conn.execute(self._session_sql())

    async def _configure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        _json_as_text(conn)
        await conn.execute(self._session_sql())

    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own (not pooled), set up as pooled ones are."""
        conn = await psycopg.AsyncConnection.connect(self.url, **self._connect_kwargs())
        try:
            await self._configure_async(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    # -- drivers ----------------------------------------------------------------------------

    def run_sync(
        self,
        plan: Plan[T],
        *,
        atomic: bool = False,
        connection: psycopg.Connection[Any] | None = None,
        check: bool = True,
        deadline: bool = True,
    ) -> T:
        """Run a plan on a pooled connection, or on the caller's (inside their transaction).
        Every error that means an outage is BackendUnavailable."""
        if check and not self._checked:
            self.check_schema()
        if connection is not None:
            try:
                return _drive_sync(connection, plan)
            except psycopg.Error as exc:
                _reraise(exc)
        for first_try in (True, False):
            pool = self._pools.get()
            # getconn/putconn rather than pool.connection(): the connections are in autocommit,
            # so the commit its context manager ends with is a wasted call on the hottest path
            try:
                conn = pool.getconn()
            except psycopg_pool.PoolClosed as exc:
                if first_try:
                    continue  # replaced while we waited: the new pool serves us
                raise BackendUnavailable(f"PostgreSQL: {exc}") from exc
            except psycopg_pool.PoolTimeout as exc:
                _reraise(exc)
            timer = WATCHDOG.arm(conn, self._deadline) if deadline else None
            try:
                if atomic:
                    with conn.transaction():
                        return _drive_sync(conn, plan)
                return _drive_sync(conn, plan)
            except psycopg.Error as exc:
                if timer is not None and WATCHDOG.disarm(timer):
                    raise timer.error() from exc
                if needs_new_connections(exc):
                    self._pools.recycle(pool)
                _reraise(exc)
            finally:
                if timer is not None and WATCHDOG.disarm(timer):
                    conn.close()  # cut by the watchdog: the pool must not hand it out again
                pool.putconn(conn)
        raise AssertionError("unreachable")

    async def run_async(
        self,
        plan: Plan[T],
        *,
        atomic: bool = False,
        connection: psycopg.AsyncConnection[Any] | None = None,
        deadline: float | None = None,
    ) -> T:
        """As `run_sync`, on the async pool; `deadline` shortens the client's wait (seconds)."""
        if not self._checked:
            await asyncio.to_thread(self.check_schema)
        if connection is not None:
            try:
                return await _drive_async(connection, plan)
            except psycopg.Error as exc:
                _reraise(exc)
        for first_try in (True, False):
            pool = await self._apools.get()
            try:
                conn = await pool.getconn()
            except psycopg_pool.PoolClosed as exc:
                if first_try:
                    continue
                raise BackendUnavailable(f"PostgreSQL: {exc}") from exc
            except psycopg_pool.PoolTimeout as exc:
                _reraise(exc)
            timer = WATCHDOG.arm(conn, min(self._deadline, deadline or math.inf))
            try:
                if atomic:
                    async with conn.transaction():
                        return await _drive_async(conn, plan)
                return await _drive_async(conn, plan)
            except psycopg.Error as exc:
                if WATCHDOG.disarm(timer):
                    raise timer.error() from exc
                if needs_new_connections(exc):
                    await self._apools.recycle(pool)
                _reraise(exc)
            finally:
                if WATCHDOG.disarm(timer):
                    await conn.close()
                await pool.putconn(conn)
        raise AssertionError("unreachable")

    async def _on_own_connection(self, conn: psycopg.AsyncConnection[Any], stmt: Stmt) -> Any:
        """One statement on a connection of its own, under the same deadline as pooled ones."""
        timer = WATCHDOG.arm(conn, self._deadline)
        try:
            cur = await conn.execute(stmt.sql, stmt.params)
            return await cur.fetchall() if cur.description is not None else cur.rowcount
        except psycopg.Error as exc:
            if WATCHDOG.disarm(timer):
                raise timer.error() from exc
            _reraise(exc)
        finally:
            WATCHDOG.disarm(timer)

    # -- schema -----------------------------------------------------------------------------

    def check_schema(self) -> None:
        """On first use: the schema must be conveyor's and current (or is migrated now)."""
        version = self.run_sync(self._schema_version_plan(), check=False)
        known = self._migrations[-1].version
        if version > known:
            raise ConfigurationError(
                f"schema {self.schema!r} has version {version}, newer than this conveyor "
                f"knows ({known}); upgrade conveyor"
            )
        if version < known:
            if not self.settings.auto_migrate:
                raise ConfigurationError(
                    f"schema {self.schema!r} needs migrations {version + 1}..{known}: run "
                    "`conveyor migrate` (or pass auto_migrate=True)"
                )
            self.migrate_sync()
        self._checked = True

    def _ours_plan(self) -> Plan[bool]:
        """Whether the schema is empty (False) or conveyor's (True); anything else is refused."""
        rows = yield Stmt(self.q.list_tables, {"schema": self.schema})
        tables = {r["table_name"] for r in rows}
        if not tables:
            return False
        columns = {
            r["column_name"]
            for r in (yield Stmt(self.q.migrations_columns, {"schema": self.schema}))
        }
        if not columns >= MIGRATIONS_COLUMNS:
            shown = ", ".join(sorted(tables)[:5])
            raise NotAConveyorDatabase(
                f"schema {self.schema!r} holds other tables ({shown}) and no conveyor schema; "
                "give conveyor a schema of its own (postgres_schema / CONVEYOR_POSTGRES_SCHEMA)"
            )
        return True

    def _schema_version_plan(self) -> Plan[int]:
        if not (yield from self._ours_plan()):
            return 0
        rows = yield Stmt(self.q.applied_migrations)
        return int(rows[-1]["version"]) if rows else 0

    def _migrate_plan(self, down_to: int | None = None) -> Plan[list[int]]:
        yield Stmt(self.q.no_statement_timeout)
        # One migrator at a time, across every process and machine.
        yield Stmt(self.q.lock_migrations, {"key": f"conveyor-migrate:{self.schema}"})
        yield from self._ours_plan()
        yield Stmt(self.q.create_schema)
        yield Stmt(self.q.create_migrations_table)
        done = {r["version"] for r in (yield Stmt(self.q.applied_migrations))}
        changed: list[int] = []
        if down_to is None:
            for migration in self._migrations:
                if migration.version not in done:
                    yield Stmt(migration.up)
                    yield Stmt(
                        self.q.record_migration,
                        {"version": migration.version, "name": migration.name},
                    )
                    changed.append(migration.version)
        else:
            for migration in reversed(self._migrations):
                if migration.version in done and migration.version > down_to:
                    yield Stmt(migration.down)
                    yield Stmt(self.q.forget_migration, {"version": migration.version})
                    changed.append(migration.version)
        return changed

    def migrate_sync(self, down_to: int | None = None) -> list[int]:
        # A migration may rewrite a big table: no statement timeout, on either side.
        changed = self.run_sync(
            self._migrate_plan(down_to), atomic=True, check=False, deadline=False
        )
        self._checked = down_to is None
        return changed

    async def migrate(self) -> list[int]:
        return await asyncio.to_thread(self.migrate_sync)

    async def release(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._close_leader_conn()
        await self._apools.close()

    async def close(self) -> None:
        await self.release()
        self.sync.close()

    # -- plans ------------------------------------------------------------------------------

    def enqueue_plan(self, jobs: Sequence[NewJob]) -> Plan[list[Job]]:
        waiting = [i for i, j in enumerate(jobs) if j.waits]
        depths = [0] * len(jobs)
        if waiting:
            # Locked until this transaction ends: none of them can finish (and look for
            # dependents) before the dependency rows written below are there to be seen.
            named = sorted({d for i in waiting for d in jobs[i].depends_on})
            rows = yield Stmt(self.q.lock_dependencies, {"ids": named})
            depths = dependency_depths(jobs, {r["id"]: r["dependency_depth"] for r in rows})
        if any(j.unique_key is not None for j in jobs):
            stored = yield from self._enqueue_unique_plan(jobs, depths)
        else:
            stored = yield from self._insert_plan(jobs, depths)
        if waiting:
            yield from self._add_dependencies_plan(jobs, stored, waiting)
        return stored

    def _insert_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        first = jobs[0]
        if (
            len(jobs) == 1
            and not first.waits
            and first.on_dependency_failure is None
            and not first.limited
            and first.circuit is None
        ):
            rows = yield Stmt(
                self.q.insert_job,
                {
                    "now": self.now(first.created_at), "queue": first.queue,
                    "task": first.task, "args": first.args, "kwargs": first.kwargs,
                    "meta": first.meta, "priority": first.priority,
                    "max_attempts": first.max_attempts,
                    "delay": max(0.0, first.run_at - first.created_at),
                    "state": first.state.value,
                },
            )  # fmt: skip
            return self._stored(jobs, rows)
        rows = yield Stmt(self.q.insert_jobs, self._batch_params(jobs, depths))
        return self._stored(jobs, sorted(rows, key=lambda r: r["id"]))  # ids in input order

    def _batch_params(self, jobs: Sequence[NewJob], depths: list[int]) -> dict[str, Any]:
        """A batch of jobs as one array per column."""
        return {
            "now": self.now(jobs[0].created_at),
            "queues": [j.queue for j in jobs],
            "tasks": [j.task for j in jobs],
            "args": [j.args for j in jobs],
            "kwargs": [j.kwargs for j in jobs],
            "metas": [j.meta for j in jobs],
            "priorities": [j.priority for j in jobs],
            "max_attempts": [j.max_attempts for j in jobs],
            "delays": [max(0.0, j.run_at - j.created_at) for j in jobs],
            "states": [j.state.value for j in jobs],  # decided once, by NewJob
            "on_failures": [j.on_dependency_failure for j in jobs],
            "depths": depths,
            "concurrency_keys": [j.concurrency_key for j in jobs],
            "concurrency_maxes": [j.concurrency_max for j in jobs],
            "rate_keys": [j.rate_key for j in jobs],
            "rate_maxes": [j.rate_max for j in jobs],
            "rate_periods": [j.rate_period for j in jobs],
            "circuits": [j.circuit for j in jobs],
        }

    def _add_dependencies_plan(
        self, jobs: Sequence[NewJob], stored: list[Job], waiting: list[int]
    ) -> Plan[None]:
        """Record what the waiting jobs wait for, look at them at once (some dependencies
        may have finished already), and read back where that left them."""
        new = [i for i in waiting if not stored[i].deduplicated]
        pairs = [
            (stored[i].id, d)
            for i in new
            for d in (*jobs[i].depends_on, *(stored[p].id for p in jobs[i].depends_on_batch))
        ]
        ids = [stored[i].id for i in new]
        _, _, rows = yield [
            Stmt(
                self.q.insert_dependencies,
                {"job_ids": [p[0] for p in pairs], "depends_on": [p[1] for p in pairs]},
            ),
            Stmt(self.q.release_waiting, {"ids": ids}),
            Stmt(self.q.get_jobs, {"ids": ids}),
        ]
        now = {r["id"]: Job.from_row(r) for r in rows}
        for i in new:
            stored[i] = now[stored[i].id]

    def _enqueue_unique_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        """Insert what no job holds the key of, then read the holders of the rest. Each key
        is in the batch at most once (the App sends the first call of each key)."""
        rows = yield Stmt(
            self.q.insert_unique_jobs,
            {
                **self._batch_params(jobs, depths),
                "unique_keys": [j.unique_key for j in jobs],
                "unique_fors": [j.unique_for for j in jobs],
            },
        )
        inserted = {row["unique_key"] for row in rows}
        # The inserted jobs got their ids in the order given, so they pair up in that order.
        rows_in_order = iter(sorted(rows, key=lambda r: r["id"]))
        stored: list[Job | None] = []
        for new in jobs:
            if new.unique_key is None or new.unique_key in inserted:
                stored.extend(self._stored([new], [next(rows_in_order)]))
            else:
                stored.append(None)
        held = [i for i, job in enumerate(stored) if job is None]
        if not held:
            return [job for job in stored if job is not None]
        found = yield [
            Stmt(
                self.q.find_unique,
                {
                    "key": jobs[i].unique_key,
                    "unique_for": jobs[i].unique_for,
                    "now": self.now(jobs[i].created_at),
                },
            )
            for i in held
        ]
        # A holder that finished and was purged in between leaves nothing to return: those
        # jobs go round again (and are inserted now that nothing holds their key).
        gone = [i for i, holder in zip(held, found, strict=True) if not holder]
        again = [jobs[i] for i in gone]
        retried = iter(
            (yield from self._enqueue_unique_plan(again, [depths[i] for i in gone]))
            if again
            else []
        )
        for i, holder in zip(held, found, strict=True):
            if holder:
                job = Job.from_row(holder[0])
                job.deduplicated = True
                stored[i] = job
            else:
                stored[i] = next(retried)
        return [job for job in stored if job is not None]

    def _stored(self, jobs: Sequence[NewJob], rows: list[Any]) -> list[Job]:
        stored = []
        for new, row in zip(jobs, rows, strict=True):
            job = new.stored_as(row["id"])
            job.state = JobState(row["state"])
            job.run_at, job.created_at = row["run_at"], row["created_at"]
            stored.append(job)
        return stored

    def claim_plan(
        self, worker_id: str, queues: Sequence[str] | None, limit: int, lease: float,
        now: float | None, promote: bool = True,
    ) -> Plan[tuple[list[Job], bool | None]]:  # fmt: skip
        """The plain claim (jobs without limits). With `promote`, due jobs are promoted first
        and the claim also tells whether limits are in play (else None)."""
        params: dict[str, Any] = {
            "worker_id": worker_id, "limit": limit, "lease": lease, "now": now,
        }  # fmt: skip
        if queues is None:
            claim = Stmt(self.q.claim, params)
        elif len(queues) == 1:
            claim = Stmt(self.q.claim_in_queue, {**params, "queue": queues[0]})
        else:
            claim = Stmt(self.q.claim_in_queues, {**params, "queues": list(queues)})
        present = None
        if promote:
            _, found, rows = yield [
                Stmt(self.q.promote_due, {"now": now}),
                Stmt(self.q.limits_present),
                claim,
            ]
            present = bool(found[0]["present"])
        else:
            rows = yield claim
        return _in_claim_order(Job.from_row(r) for r in rows), present

    def limited_claim_plan(
        self, worker_id: str, queues: Sequence[str] | None, limit: int, lease: float,
        now: float | None,
    ) -> Plan[tuple[list[Job], bool]]:  # fmt: skip
        """The claim when limits are in play, run atomically: one limited claim at a time,
        cluster-wide, counts what is running and started and picks the best jobs that fit
        (plain ones too, so priorities hold across both)."""
        wanted = {"queues": None if queues is None else list(queues), "limit": limit, "now": now}
        _, _, found, rows = yield [
            Stmt(self.q.lock_limits),
            Stmt(self.q.promote_due, {"now": now}),
            Stmt(self.q.limits_present),
            Stmt(self.q.limited_candidates, wanted),
        ]
        queue_free: dict[str, int] = {}
        running: dict[str, int] = {}
        started: dict[str, int] = {}
        circuit_free: dict[str, int] = {}
        for r in rows:
            if r["circuit_free"] is not None:
                circuit_free[r["circuit"]] = r["circuit_free"]
            if r["queue_free"] is not None:
                queue_free[r["queue"]] = r["queue_free"]
            if r["concurrency_used"] is not None:
                running[r["concurrency_key"]] = r["concurrency_used"]
            if r["rate_used"] is not None:
                started[r["rate_key"]] = r["rate_used"]
        ids = pick(
            (Candidate.from_row(r) for r in rows), limit, queue_free=queue_free,
            running=running, started=started, circuit_free=circuit_free,
        )  # fmt: skip
        claimed = []
        if ids:
            claimed = yield Stmt(
                self.q.claim_ids,
                {"worker_id": worker_id, "lease": lease, "now": now, "ids": ids},
            )
        return _in_claim_order(Job.from_row(r) for r in claimed), bool(found[0]["present"])

    def complete_plan(self, outcomes: Sequence[Outcome]) -> Plan[list[int]]:
        # In id order, as every statement that writes several running jobs: two such
        # statements then lock their rows in the same order and cannot deadlock.
        outcomes = sorted(outcomes, key=lambda o: o.job_id)
        rescues = [o.job_id for o in outcomes if o.lease_expired_before is not None]
        if rescues:  # run atomically (see `complete`): the rows stay locked for the update
            free = {r["id"] for r in (yield Stmt(self.q.lock_rescued, {"ids": rescues}))}
            outcomes = [o for o in outcomes if o.lease_expired_before is None or o.job_id in free]
            if not outcomes:
                return []
        update = Stmt(
            self.q.complete,
            {
                "ids": [o.job_id for o in outcomes],
                "worker_ids": [o.worker_id for o in outcomes],
                "attempts": [o.attempt for o in outcomes],
                "states": [o.state.value for o in outcomes],
                "results": [o.result for o in outcomes],
                "errors": [None if o.error is None else json.dumps(o.error) for o in outcomes],
                "ats": [self.now(o.at) for o in outcomes],
                "delays": [
                    None if o.run_at is None else max(0.0, o.run_at - o.at) for o in outcomes
                ],
                "refunds": [1 if o.refunds_attempt else 0 for o in outcomes],
                "notes": [o.note for o in outcomes],
                "rescues": [o.lease_expired_before is not None for o in outcomes],
                "expired": [o.lease_expired_before for o in outcomes],
                "leaders": [o.leader for o in outcomes],
            },
        )
        maybe_left = [o.job_id for o in outcomes if o.state in _NOT_FINISHED]
        if not maybe_left:
            rows = yield update  # the usual batch: one statement, one round trip
        else:
            # Retried or handed back, but asked to stop meanwhile: cancelled, in the same
            # transaction (the caller runs this plan atomically), sent together.
            rows, _ = yield [
                update,
                Stmt(
                    self.q.cancel_requested_leftovers,
                    {"ids": maybe_left, "now": self.now(max(o.at for o in outcomes))},
                ),
            ]
        return [int(r["id"]) for r in rows]

    def heartbeat_plan(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Plan[Beat]:
        now = self.now(worker.last_beat)
        running = sorted(running)
        ids = _ids(job_id for job_id, _ in running)
        register = {
            "id": worker.id, "host": worker.host, "pid": worker.pid,
            "queues": None if worker.queues is None else json.dumps(worker.queues),
            "concurrency": worker.concurrency, "started_at": worker.started_at, "now": now,
            "running": json.dumps(sorted(set(ids))),
        }  # fmt: skip
        extend = {
            "now": now, "lease": max(0.0, lease_until - worker.last_beat),
            "worker_id": worker.id, "ids": ids, "attempts": [a for _, a in running],
        }  # fmt: skip
        _, extended, mine = yield [
            Stmt(self.q.upsert_worker, register),
            Stmt(self.q.extend_leases, extend),
            Stmt(self.q.running_of_worker, {"worker_id": worker.id}),
        ]
        return Beat.read({(int(r["id"]), int(r["attempt"])) for r in extended}, running, mine)

    def get_job_plan(self, job_id: int) -> Plan[Job | None]:
        rows = yield Stmt(self.q.get_job, {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    def cancel_plan(self, job_id: int, now: float, note: str) -> Plan[Job | None]:
        params = {"id": job_id, "now": self.now(now), "note": note}
        if (yield Stmt(self.q.cancel_pending, params)) == 0:
            yield Stmt(self.q.request_cancel, params)
        rows = yield Stmt(self.q.get_job, {"id": job_id})
        return Job.from_row(rows[0]) if rows else None

    def find_expired_plan(self, now: float, limit: int) -> Plan[list[Job]]:
        rows = yield Stmt(self.q.find_expired, {"now": self.now(now), "limit": limit})
        return [Job.from_row(r) for r in rows]

    def fire_periodic_plan(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None
    ) -> Plan[Job | None]:
        tick_key = {"name": name, "tick": tick}
        recorded = yield Stmt(
            self.q.record_tick, {**tick_key, "now": self.now(now), "leader": leader}
        )
        if recorded == 0 or job is None:
            return None
        [stored] = yield from self.enqueue_plan([job])
        yield Stmt(self.q.set_tick_job, {**tick_key, "job_id": stored.id})
        return stored

    def periodic_ticks_plan(self) -> Plan[dict[str, TickRecord]]:
        rows = yield Stmt(self.q.periodic_ticks)
        return {r["name"]: TickRecord.from_row(r) for r in rows}

    def set_progress_plan(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> Plan[bool]:  # fmt: skip
        [row] = yield Stmt(
            self.q.set_progress,
            {
                "id": job_id, "worker_id": worker_id, "attempt": attempt, "progress": progress,
                "stage": stage, "message": message, "now": self.now(now),
            },
        )  # fmt: skip
        return bool(row["updated"] == 1)

    def read_events_plan(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int
    ) -> Plan[tuple[list[Event], Cursor]]:
        where = {"job_id": job_id, "queue": queue, "limit": limit}
        history, progress = yield [
            Stmt(self.q.history_events, {**where, "after": after.history}),
            Stmt(self.q.progress_events, {**where, "after": after.progress}),
        ]
        return merge(history, progress, after)

    def next_due_in_plan(self, queues: Sequence[str] | None, now: float) -> Plan[float | None]:
        if queues is None:
            rows = yield Stmt(self.q.next_due_in, {"now": self.now(now)})
        else:
            rows = yield Stmt(
                self.q.next_due_in_queues, {"queues": list(queues), "now": self.now(now)}
            )
        value = rows[0]["due_in"]
        return None if value is None else float(value)

    def purge_plan(
        self,
        states: Iterable[JobState],
        older_than: float,
        now: float,
        queue: str | None = None,
        task: str | None = None,
        job_ids: Sequence[int] | None = None,
    ) -> Plan[int]:
        params = {
            "states": [s.value for s in states], "age": older_than, "now": self.now(now),
            "queue": queue, "task": task, "ids": None if job_ids is None else list(job_ids),
        }  # fmt: skip
        rows = yield Stmt(self.q.purge, params)
        return int(rows[0]["n"])

    def change_circuit_plan(
        self, name: str, action: Action, now: float, threshold: int, reason: str | None,
        half_open_jobs: int,
    ) -> Plan[CircuitEvent | None]:  # fmt: skip
        """Run atomically: the circuit's row is locked while `transition` decides."""
        key = {"name": name}
        if action is Action.FAILURE:
            yield Stmt(self.q.ensure_circuit, key)
        [found] = yield Stmt(self.q.lock_circuit, {**key, "now": self.now(now)})
        if found["state"] is None:
            return None  # no row: closed, and nothing failed yet
        at = float(found["now"])
        before = CircuitRow.from_row(found)
        after, event = transition(
            before, action, at, threshold=threshold, reason=reason, half_open_jobs=half_open_jobs
        )
        if after == before:
            return None
        yield Stmt(self.q.put_circuit, after.params(name))
        if event is None:
            return None
        # opening: the jobs failing now are held too; else: the jobs still to run
        [count] = yield Stmt(self.q.held_by_circuit, {**key, "running": event == "opened"})
        change = CircuitEvent.after(name, before, after, event, at, int(count["held"]))
        yield Stmt(self.q.log_circuit, change.params())
        if event != "opened":
            yield Stmt(self.q.wake_held, key)
        return change

    def statement_plan(self, sql: str, params: dict[str, Any] | None = None) -> Plan[Any]:
        return (yield Stmt(sql, params))

    # -- the async seam ---------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[NewJob], connection: psycopg.AsyncConnection[Any] | None = None
    ) -> list[Job]:
        if not jobs:
            return []
        if connection is not None and not isinstance(connection, psycopg.AsyncConnection):
            raise ValidationError(
                "enqueue_async(connection=...) needs a psycopg.AsyncConnection; use enqueue() "
                "with a psycopg.Connection"
            )
        atomic = any(j.waits for j in jobs)  # more than one statement: one transaction
        return await self.run_async(self.enqueue_plan(jobs), atomic=atomic, connection=connection)

    async def get_job(self, job_id: int) -> Job | None:
        return await self.run_async(self.get_job_plan(job_id))

    async def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        return await self.run_async(self.cancel_plan(job_id, now, note), atomic=True)

    async def claim(
        self, worker_id: str, queues: Sequence[str] | None, limit: int, lease_until: float,
        now: float,
    ) -> list[Job]:  # fmt: skip
        # Due scheduled and retrying jobs are promoted with the claim, except while the queue
        # keeps this worker busy: then at most every PROMOTE_EVERY_S (a short claim, which
        # may mean the queue ran dry, always promotes). Whether limits are in play is looked
        # up with the promotion; while they are, every claim takes the limited path.
        lease, at = lease_until - now, self.now(now)
        promote = self._claims_short or time.monotonic() - self._promoted_at >= PROMOTE_EVERY_S
        present: bool | None
        if self._limits_seen:
            jobs, present = await self.run_async(
                self.limited_claim_plan(worker_id, queues, limit, lease, at), atomic=True
            )
        else:
            jobs, present = await self.run_async(
                self.claim_plan(worker_id, queues, limit, lease, at, promote=promote)
            )
            if present and len(jobs) < limit:
                more, present = await self.run_async(
                    self.limited_claim_plan(worker_id, queues, limit - len(jobs), lease, at),
                    atomic=True,
                )
                jobs = _in_claim_order([*jobs, *more])
        if promote or self._limits_seen:
            self._promoted_at = time.monotonic()
        if present is not None:
            self._limits_seen = present
        self._claims_short = len(jobs) < limit
        return jobs

    async def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None:  # fmt: skip
        plan = self.change_circuit_plan(name, action, now, threshold, reason, half_open_jobs)
        return await self.run_async(plan, atomic=True)

    async def record_probe(self, name: str, now: float) -> None:
        params = {"name": name, "now": self.now(now)}
        await self.run_async(self.statement_plan(self.q.record_probe, params))

    async def circuits(self) -> list[CircuitInfo]:
        rows = await self.run_async(self.statement_plan(self.q.list_circuits))
        return [CircuitInfo.from_row(r) for r in rows]

    async def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        params = {"queues": None if queues is None else list(queues), "now": self.now(now)}
        [row] = await self.run_async(self.statement_plan(self.q.held_back, params))
        if not row["held"]:
            return None
        return math.inf if row["opens_in"] is None else max(float(row["opens_in"]), 0.0)

    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        params = {"name": queue, "concurrency": concurrency}
        await self.run_async(self.statement_plan(self.q.set_queue_concurrency, params))

    async def complete(self, outcomes: Sequence[Outcome]) -> list[int]:
        if not outcomes:
            return []
        atomic = any(
            o.state in _NOT_FINISHED or o.lease_expired_before is not None for o in outcomes
        )
        return await self.run_async(self.complete_plan(outcomes), atomic=atomic)

    async def heartbeat(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Beat:
        # A beat that hangs is cut off at a quarter of the lease (if the statement timeout is
        # longer) and tried again on another connection before the leases run out.
        lease = max(0.0, lease_until - worker.last_beat)
        plan = self.heartbeat_plan(worker, running, lease_until)
        return await self.run_async(plan, deadline=max(lease / 4, 1.0))

    async def deregister_worker(self, worker_id: str) -> None:
        await self.run_async(self.statement_plan(self.q.delete_worker, {"id": worker_id}))

    async def find_expired(self, now: float, limit: int) -> list[Job]:
        return await self.run_async(self.find_expired_plan(now, limit))

    async def prune_workers(self, older_than: float, now: float) -> int:
        count = await self.run_async(
            self.statement_plan(self.q.prune_workers, {"age": older_than, "now": self.now(now)})
        )
        return int(count)

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        """Leadership is a lease row on the server's clock, taken and renewed on a connection of
        the leader's own (see `take_lead`): a leader that cannot renew it in time loses it, and
        one whose session is gone is replaced at once. Followers keep no connection open."""
        params = {"name": name, "holder": holder, "lease": max(0.0, until - now)}
        try:
            if self._leader_conn is None or self._leader_conn.closed:
                self._leader_conn = await self._connect_async()
            rows = await self._on_own_connection(
                self._leader_conn, Stmt(self.q.take_lead, params)
            )
        except psycopg.Error as exc:
            await self._close_leader_conn()
            _reraise(exc)
        except BaseException:
            await self._close_leader_conn()
            raise
        if rows:
            return True
        await self._close_leader_conn()
        return False

    async def resign(self, name: str, holder: str) -> None:
        try:
            if self._leader_conn is not None and not self._leader_conn.closed:
                await self._on_own_connection(
                    self._leader_conn, Stmt(self.q.resign, {"name": name, "holder": holder})
                )
        finally:
            await self._close_leader_conn()

    async def _close_leader_conn(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None:
            await conn.close()

    async def next_due_in(self, queues: Sequence[str] | None, now: float) -> float | None:
        return await self.run_async(self.next_due_in_plan(queues, now))

    async def wait_for_change(self, timeout: float) -> None:
        if self._listener is None:
            self._listener = Listener(
                self.url,
                self._connect_kwargs(),
                self.channel,
                self.q.listen,
                listen=self.settings.postgres_listen,
                poll_interval=self.settings.poll_interval,
            )
        await self._listener.wait(timeout)

    async def purge(self, *, states: Iterable[JobState], older_than: float, now: float) -> int:
        return await self.run_async(self.purge_plan(states, older_than, now))

    async def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool:  # fmt: skip
        return await self.run_async(
            self.set_progress_plan(job_id, worker_id, attempt, progress, stage, message, now)
        )

    async def event_cursor(self) -> Cursor:
        [row] = await self.run_async(self.statement_plan(self.q.event_cursor))
        return Cursor(int(row["history"]), int(row["progress"]))

    async def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        return await self.run_async(self.read_events_plan(after, job_id, queue, limit))

    async def prune_progress(self, older_than: float, now: float) -> int:
        params = {"age": older_than, "now": self.now(now)}
        pruned: int = await self.run_async(self.statement_plan(self.q.prune_progress, params))
        return pruned

    async def subscribe(self) -> Listener:
        """LISTEN of its own for one subscriber: on the events channel (state changes and
        progress) and the jobs channel (new runnable jobs)."""
        return Listener(
            self.url, self._connect_kwargs(), f"{self.schema}_events", self.q.listen_events,
            listen=self.settings.postgres_listen, poll_interval=self.settings.poll_interval,
        )  # fmt: skip

    async def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        plan = self.fire_periodic_plan(name, tick, job, now, leader)
        return await self.run_async(plan, atomic=True)

    async def periodic_ticks(self) -> dict[str, TickRecord]:
        return await self.run_async(self.periodic_ticks_plan())

    async def prune_ticks(self, older_than: float, now: float) -> int:
        params = {"age": older_than, "now": self.now(now)}
        pruned: int = await self.run_async(self.statement_plan(self.q.prune_ticks, params))
        return pruned


class PostgresStore:
    """The blocking operations of the sync API, on the sync pool."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.b = backend
        self.q = backend.q

    def migrate(self) -> list[int]:
        return self.b.migrate_sync()

    def migrate_down(self, to_version: int) -> list[int]:
        return self.b.migrate_sync(down_to=to_version)

    def latest_version(self) -> int:
        return MIGRATIONS[-1].version

    def schema_version(self) -> int:
        return self.b.run_sync(self.b._schema_version_plan(), check=False)

    def close(self) -> None:
        self.b._pools.close()

    def enqueue(
        self, jobs: Sequence[NewJob], connection: psycopg.Connection[Any] | None = None
    ) -> list[Job]:
        if not jobs:
            return []
        if connection is not None and not isinstance(connection, psycopg.Connection):
            raise ValidationError(
                "enqueue(connection=...) needs a psycopg.Connection; use enqueue_async() with "
                "a psycopg.AsyncConnection"
            )
        atomic = any(j.waits for j in jobs)  # more than one statement: one transaction
        return self.b.run_sync(self.b.enqueue_plan(jobs), atomic=atomic, connection=connection)

    def get_job(self, job_id: int) -> Job | None:
        return self.b.run_sync(self.b.get_job_plan(job_id))

    def list_jobs(
        self,
        *,
        states: Iterable[JobState] | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        error_type: str | None = None,
        after_id: int | None = None,
        contains: str | None = None,
    ) -> list[Job]:
        params: dict[str, Any] = {
            "queue": queue, "task": task, "limit": limit, "before_id": before_id,
            "error_type": error_type, "after_id": after_id,
            "contains": None if contains is None else contains.lower(),
        }  # fmt: skip
        if states is None:
            sql = self.q.list_jobs
        else:
            sql, params["states"] = self.q.list_jobs_in_states, [s.value for s in states]
        rows = self.b.run_sync(self.b.statement_plan(sql, params))
        return [Job.from_row(r) for r in rows]

    def job_history(self, job_id: int) -> list[HistoryEntry]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.job_history, {"id": job_id}))
        return [HistoryEntry.from_row(r) for r in rows]

    def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.dead_groups, {"queue": queue}))
        return [DeadGroup.from_row(r) for r in rows]

    def finished_counts(self, since: float, bucket: int) -> list[FinishedCount]:
        params = {"since": since, "bucket": bucket}
        rows = self.b.run_sync(self.b.statement_plan(self.q.finished_counts, params))
        return [FinishedCount.from_row(r) for r in rows]

    def queued_since(self) -> dict[str, float]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.queued_since, {}))
        return {r["queue"]: float(r["since"]) for r in rows}

    def periodic_ticks(self) -> dict[str, TickRecord]:
        return self.b.run_sync(self.b.periodic_ticks_plan())

    def find_unique(self, key: str) -> Job | None:
        params = {"key": key, "unique_for": None, "now": None}
        rows = self.b.run_sync(self.b.statement_plan(self.q.find_unique, params))
        return Job.from_row(rows[0]) if rows else None

    def queue_stats(
        self, states: Iterable[JobState] | None = None
    ) -> dict[str, dict[JobState, int]]:
        stats: dict[str, dict[JobState, int]] = {}
        if states is None:
            plan = self.b.statement_plan(self.q.queue_stats)
        else:
            params = {"states": [s.value for s in states]}
            plan = self.b.statement_plan(self.q.queue_stats_in_states, params)
        for row in self.b.run_sync(plan):
            stats.setdefault(row["queue"], {})[JobState(row["state"])] = int(row["n"])
        return stats

    def list_workers(self) -> list[WorkerInfo]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.list_workers))
        return [WorkerInfo.from_row(r, beat_age=r["beat_age"]) for r in rows]

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> bool:
        if paused:
            params = {"name": queue, "now": self.b.now(now)}
            changed: int = self.b.run_sync(self.b.statement_plan(self.q.pause_queue, params))
            return changed == 1
        rows = self.b.run_sync(self.b.statement_plan(self.q.resume_queue, {"name": queue}))
        return len(rows) == 1

    def paused_queues(self) -> list[str]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.paused_queues))
        return [r["name"] for r in rows]

    def revoke_session(self, nonce: str, until: float, now: float) -> None:
        params = {"nonce": nonce, "until": until}
        self.b.run_sync(self.b.statement_plan(self.q.revoke_session, params))

    def session_revoked(self, nonce: str) -> bool:
        plan = self.b.statement_plan(self.q.session_revoked, {"nonce": nonce})
        return bool(self.b.run_sync(plan))

    def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None:  # fmt: skip
        plan = self.b.change_circuit_plan(name, action, now, threshold, reason, half_open_jobs)
        return self.b.run_sync(plan, atomic=True)

    def backlog(self, queue: str, now: float) -> tuple[int, float | None]:
        params = {"queue": queue, "now": self.b.now(now)}
        [row] = self.b.run_sync(self.b.statement_plan(self.q.backlog, params))
        return int(row["depth"]), None if row["age"] is None else max(float(row["age"]), 0.0)

    def claim_alert(self, key: str, every: float, now: float) -> bool:
        params = {"key": key, "every": every, "now": self.b.now(now)}
        claimed: int = self.b.run_sync(self.b.statement_plan(self.q.claim_alert, params))
        return claimed == 1

    def record_probe(self, name: str, now: float) -> None:
        params = {"name": name, "now": self.b.now(now)}
        self.b.run_sync(self.b.statement_plan(self.q.record_probe, params))

    def circuits(self) -> list[CircuitInfo]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.list_circuits))
        return [CircuitInfo.from_row(r) for r in rows]

    def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        rows = self.b.run_sync(
            self.b.statement_plan(self.q.circuit_log, {"name": name, "limit": limit})
        )
        return [CircuitEvent.from_row(r) for r in rows]

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        params = {"name": queue, "concurrency": concurrency}
        self.b.run_sync(self.b.statement_plan(self.q.set_queue_concurrency, params))

    def queue_limits(self) -> dict[str, int]:
        rows = self.b.run_sync(self.b.statement_plan(self.q.queue_limits))
        return {r["name"]: r["concurrency"] for r in rows}

    def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        return self.b.run_sync(self.b.cancel_plan(job_id, now, note), atomic=True)

    def cancel_jobs(
        self,
        *,
        states: Iterable[JobState],
        queue: str | None,
        task: str | None,
        now: float,
        note: str,
    ) -> int:
        params = {
            "states": [s.value for s in states], "queue": queue, "task": task,
            "now": self.b.now(now), "note": note,
        }  # fmt: skip
        cancelled: int = self.b.run_sync(self.b.statement_plan(self.q.cancel_jobs, params))
        return cancelled

    def retry_jobs(
        self,
        *,
        job_ids: Sequence[int] | None,
        states: Iterable[JobState],
        queue: str | None,
        task: str | None,
        now: float,
        note: str,
    ) -> list[int]:
        params = {
            "ids": None if job_ids is None else _ids(job_ids),
            "states": [s.value for s in states], "queue": queue, "task": task,
            "now": self.b.now(now), "note": note,
        }  # fmt: skip
        rows = self.b.run_sync(self.b.statement_plan(self.q.retry_jobs, params))
        return [int(r["id"]) for r in rows]

    def purge(
        self,
        *,
        states: Iterable[JobState],
        older_than: float,
        now: float,
        queue: str | None = None,
        task: str | None = None,
        job_ids: Sequence[int] | None = None,
    ) -> int:
        return self.b.run_sync(self.b.purge_plan(states, older_than, now, queue, task, job_ids))

    def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool:  # fmt: skip
        return self.b.run_sync(
            self.b.set_progress_plan(job_id, worker_id, attempt, progress, stage, message, now)
        )

    def subscribe(self) -> SyncListener:
        b = self.b
        return SyncListener(
            b.url, b._connect_kwargs(), self.q.listen_events, listen=b.settings.postgres_listen
        )

    def event_cursor(self) -> Cursor:
        [row] = self.b.run_sync(self.b.statement_plan(self.q.event_cursor))
        return Cursor(int(row["history"]), int(row["progress"]))

    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        return self.b.run_sync(self.b.read_events_plan(after, job_id, queue, limit))


# -- drivers --------------------------------------------------------------------------------


def _json_as_text(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    # JSON columns come back as text, decoded in one place (Job.from_row) for every backend:
    # a JSON string and the text of a JSON document would otherwise look alike.
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)


def _result(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> Any:
    return cur.rowcount if cur.description is None else None


def _drive_sync(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    try:
        step = next(plan)
        while True:
            if isinstance(step, list):
                results = []
                with conn.pipeline():
                    cursors = [conn.cursor(row_factory=dict_row) for _ in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(step.sql, step.params)
                rowcount = _result(cur)
                step = plan.send(cur.fetchall() if rowcount is None else rowcount)
    except StopIteration as done:
        value: T = done.value
        return value


async def _drive_async(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    try:
        step = next(plan)
        while True:
            if isinstance(step, list):
                results = []
                async with conn.pipeline():
                    cursors = [conn.cursor(row_factory=dict_row) for _ in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        await cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(await cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(step.sql, step.params)
                rowcount = _result(cur)
                step = plan.send(await cur.fetchall() if rowcount is None else rowcount)
    except StopIteration as done:
        value: T = done.value
        return value
