"""The PostgreSQL backend: the production engine, for many workers on many machines.

`PostgresOperations` is the dialect (the shared plans are in `conveyor.backends.sqlops`);
`PostgresEngine` runs plans with a blocking driver on a `psycopg_pool.ConnectionPool` for the
sync API, an async driver on an `AsyncConnectionPool` for the worker, and transactional
enqueue on the caller's own connection, inside the caller's transaction. How connections are
bounded and pooled, and which errors mean an outage, is `pools.py`'s.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import psycopg
import psycopg_pool

from conveyor.backends.base import Beat, Engine
from conveyor.backends.plan import Atomic, Call, Plan, Stmt
from conveyor.backends.postgres.arrays import BigInts, Bools, Floats, Ints, Texts
from conveyor.backends.postgres.callers import async_connection, sync_connection
from conveyor.backends.postgres.drivers import JOB_COLUMN_LIST, drive_async, drive_sync
from conveyor.backends.postgres.leader import LeaderSession
from conveyor.backends.postgres.listener import Listener, SyncListener
from conveyor.backends.postgres.pools import (
    DEADLINE_MARGIN_S,
    WATCHDOG,
    AsyncPools,
    Connector,
    SyncPools,
    needs_new_connections,
    unavailable,
)
from conveyor.backends.sql import Migration, Queries, load_migrations
from conveyor.backends.sqlops import SqlOperations, due_in, in_claim_order
from conveyor.clock import Clock, SystemClock
from conveyor.config import Settings
from conveyor.errors import BackendUnavailable, NotAConveyorDatabase
from conveyor.job import Job, JobState, NewJob, Outcome, Start, WorkerInfo
from conveyor.limits import Candidate, pick
from conveyor.logging import get_logger

log = get_logger("conveyor.postgres")

QUERIES = Queries.load("conveyor.backends.postgres", "queries.sql").substitute(
    job_columns=JOB_COLUMN_LIST
)
MIGRATIONS = load_migrations("conveyor.backends.postgres.migrations")
#: conveyor's migrations table, recognised by its columns (other tools have a `migrations` too)
MIGRATIONS_COLUMNS = frozenset({"version", "name", "applied_at"})

T = TypeVar("T")

#: While claims come back full, due jobs are promoted at most this often.
PROMOTE_EVERY_S = 0.25


def _reraise(exc: BaseException) -> NoReturn:
    """Raise `exc` as BackendUnavailable if it means an outage, else as it is."""
    error = unavailable(exc)
    if error is None:
        raise exc
    raise error from exc


class PostgresOperations(SqlOperations):
    """The PostgreSQL dialect: arrays for lists, the server's clock for "now" (unless the App
    has a clock of its own), and the plans that differ — the claim, the batch insert and the
    batch complete."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        super().__init__()
        self.settings = settings
        self.schema = settings.postgres_schema
        self.where = f"schema {self.schema!r}"
        self.q = QUERIES.substitute(schema=self.schema, channel=f'"{self.schema}_jobs"')
        self.migrations = [
            Migration(
                m.version,
                m.name,
                m.up.replace("{schema}", self.schema),
                m.down.replace("{schema}", self.schema),
            )
            for m in MIGRATIONS
        ]
        self.use_clock(clock)
        self._promoted_at = 0.0
        self._claims_short = True
        # Whether the worker looked after its last claim (`after_short_claim`, asked after a short
        # claim: it promotes due jobs and looks for limits), and when (on the claimer's clock)
        # the next job it saw is due. Until then the next claim needs neither: the claim an
        # idle worker makes when a job arrives is the one plain statement.
        self._looked = False
        self._due_at = math.inf
        # Whether the last look found limits in play (a first claim looks). Without them a
        # claim is one plain statement, and looks again with each promotion: limited work
        # that appears meanwhile may see plain jobs of lower priority start first for up to
        # PROMOTE_EVERY_S, never more.
        self._limits_seen = True

    def use_clock(self, clock: Clock) -> None:
        # The database's clock unless a test gave the App a clock of its own.
        self._db_time = isinstance(clock, SystemClock)
        self._clock = clock

    def now(self, value: float | None) -> float | None:
        """The time to send for "now": None (the database's clock) or the App's clock."""
        return None if self._db_time else value

    def ids(self, values: Iterable[int]) -> list[int]:
        return BigInts(int(v) for v in values)

    def texts(self, values: Iterable[str]) -> list[str]:
        return Texts(str(v) for v in values)

    # -- schema -----------------------------------------------------------------------------

    def ours_plan(self) -> Plan[bool]:
        """Whether the schema is empty (False) or conveyor's (True); anything else is refused."""
        rows = yield Stmt(self.q.list_tables, {"schema": self.schema})
        tables = {r["name"] for r in rows}
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

    def migration_preamble(self) -> Plan[None]:
        yield Stmt(self.q.no_statement_timeout)
        # One migrator at a time, across every process and machine.
        yield Stmt(self.q.lock_migrations, {"key": f"conveyor-migrate:{self.schema}"})
        yield from self.ours_plan()
        yield Stmt(self.q.create_schema)
        yield Stmt(self.q.create_migrations_table)

    # -- enqueue ----------------------------------------------------------------------------

    def dependencies_stmt(self, pairs: list[tuple[int, int]]) -> Stmt:
        return Stmt(
            self.q.insert_dependencies,
            {"job_ids": [p[0] for p in pairs], "depends_on": [p[1] for p in pairs]},
        )

    def insert_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
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
                    "now": self.now(first.created_at),
                    "queue": first.queue,
                    "task": first.task,
                    "args": first.args,
                    "kwargs": first.kwargs,
                    "meta": first.meta,
                    "priority": first.priority,
                    "max_attempts": first.max_attempts,
                    "delay": max(0.0, first.run_at - first.created_at),
                    "state": first.state.value,
                },
            )
            return self._stored(jobs, rows)
        rows = yield Stmt(self.q.insert_jobs, self._batch_params(jobs, depths))
        return self._stored(jobs, sorted(rows, key=lambda r: r["id"]))  # ids in input order

    def _batch_params(self, jobs: Sequence[NewJob], depths: list[int]) -> dict[str, Any]:
        """A batch of jobs as one array per column."""
        return {
            "now": self.now(jobs[0].created_at),
            "queues": Texts([j.queue for j in jobs]),
            "tasks": Texts([j.task for j in jobs]),
            "args": Texts([j.args for j in jobs]),
            "kwargs": Texts([j.kwargs for j in jobs]),
            "metas": Texts([j.meta for j in jobs]),
            "priorities": Ints([j.priority for j in jobs]),
            "max_attempts": Ints([j.max_attempts for j in jobs]),
            "delays": Floats([max(0.0, j.run_at - j.created_at) for j in jobs]),
            "states": Texts([j.state.value for j in jobs]),  # decided once, by NewJob
            "on_failures": Texts([j.on_dependency_failure for j in jobs]),
            "depths": Ints(depths),
            "concurrency_keys": Texts([j.concurrency_key for j in jobs]),
            "concurrency_maxes": Ints([j.concurrency_max for j in jobs]),
            "rate_keys": Texts([j.rate_key for j in jobs]),
            "rate_maxes": Ints([j.rate_max for j in jobs]),
            "rate_periods": Floats([j.rate_period for j in jobs]),
            "circuits": Texts([j.circuit for j in jobs]),
        }

    def insert_unique_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        """Insert what no job holds the key of, then read the holders of the rest. Each key
        is in the batch at most once (the App sends the first call of each key)."""
        rows = yield Stmt(
            self.q.insert_unique_jobs,
            {
                **self._batch_params(jobs, depths),
                "unique_keys": Texts([j.unique_key for j in jobs]),
                "unique_fors": Floats([j.unique_for for j in jobs]),
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
                jobs=True,
            )
            for i in held
        ]
        # A holder that finished and was purged in between leaves nothing to return: those
        # jobs go round again (and are inserted now that nothing holds their key).
        gone = [i for i, holder in zip(held, found, strict=True) if not holder]
        again = [jobs[i] for i in gone]
        retried = iter(
            (yield from self.insert_unique_plan(again, [depths[i] for i in gone])) if again else []
        )
        for i, holder in zip(held, found, strict=True):
            if holder:
                job = holder[0]
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

    # -- the worker's hot path --------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int = 0,
    ) -> Call[list[Job]]:
        return Call(self._claim(worker_id, queues, limit, lease_until, now, ahead))

    def _claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int,
    ) -> Plan[list[Job]]:
        # Due scheduled and retrying jobs are promoted with the claim, except while the queue
        # keeps this worker busy: then at most every PROMOTE_EVERY_S (a short claim, which
        # may mean the queue ran dry, always promotes) — and except after the look that
        # follows a short claim (`after_short_claim`), which promoted already: then only once the
        # next job it saw is due. Whether limits are in play is looked up with the promotion;
        # while they are, every claim takes the limited path (and claims nothing ahead: only
        # plain jobs may be held ahead).
        lease, at = lease_until - now, self.now(now)
        since = time.monotonic() - self._promoted_at
        promote = now >= self._due_at or (
            not self._looked and (self._claims_short or since >= PROMOTE_EVERY_S)
        )
        present: bool | None
        jobs: list[Job]
        asked = limit
        if self._limits_seen:
            jobs, present = yield Atomic(
                self.limited_claim_plan(worker_id, queues, limit, lease, at)
            )
        else:
            asked = limit + ahead
            jobs, present = yield from self.claim_plan(
                worker_id, queues, asked, lease, at, promote=promote, begun=limit
            )
            if present and len(jobs) < limit:
                more, present = yield Atomic(
                    self.limited_claim_plan(worker_id, queues, limit - len(jobs), lease, at)
                )
                jobs = in_claim_order([*jobs, *more])
        if promote or self._limits_seen:
            self._promoted_at, self._due_at = time.monotonic(), math.inf
        self._looked = False
        if present is not None:
            self._limits_seen = present
        self._claims_short = len(jobs) < asked
        return jobs

    def after_short_claim(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        return Call(self._look_after_short_claim(queues, now))

    def _look_after_short_claim(
        self, queues: Sequence[str] | None, now: float
    ) -> Plan[float | None]:
        """What the claim after a short one would do first — promote due jobs, look whether
        limits are in play — done here, in the same round trip as the question, so the next
        claim (an idle worker's, when a job arrives) is one statement. Zero when it promoted
        jobs, or found limits not known before: the next claim should come at once."""
        known = self._limits_seen
        promoted, present, rows = yield from self.promoted_with(
            self.next_due_stmt(queues, now), self.now(now)
        )
        self._promoted_at, self._looked, self._limits_seen = time.monotonic(), True, present
        then = due_in(rows)
        self._due_at = math.inf if then is None else now + then
        if promoted or (present and not known):
            return 0.0
        return then

    def promoted_with(self, then: Stmt, now: float | None) -> Plan[tuple[int, bool, list[Any]]]:
        """Promote the due jobs, look whether limits are in play, and run `then`, in one round
        trip: how many were promoted, whether limits are in play, and `then`'s rows."""
        promoted, found, rows = yield [
            Stmt(self.q.promote_due, {"now": now}),
            Stmt(self.q.limits_present),
            then,
        ]
        return promoted, bool(found[0]["present"]), rows

    def claim_plan(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float | None,
        promote: bool = True,
        begun: int | None = None,
    ) -> Plan[tuple[list[Job], bool | None]]:
        """The plain claim (jobs without limits). With `promote`, due jobs are promoted first
        and the claim also tells whether limits are in play (else None). The first `begun`
        (default: all) begin now; the rest are claimed ahead."""
        params: dict[str, Any] = {
            "worker_id": worker_id,
            "limit": limit,
            "begun": limit if begun is None else begun,
            "lease": lease,
            "now": now,
        }
        if queues is None:
            claim = Stmt(self.q.claim, params, jobs=True)
        elif len(queues) == 1:
            claim = Stmt(self.q.claim_in_queue, {**params, "queue": queues[0]}, jobs=True)
        else:
            claim = Stmt(
                self.q.claim_in_queues, {**params, "queues": self.texts(queues)}, jobs=True
            )
        present = None
        if promote:
            _, present, jobs = yield from self.promoted_with(claim, now)
        else:
            jobs = yield claim
        return in_claim_order(jobs), present

    def limited_claim_plan(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float | None,
    ) -> Plan[tuple[list[Job], bool]]:
        """The claim when limits are in play, run atomically: one limited claim at a time,
        cluster-wide, counts what is running and started and picks the best jobs that fit
        (plain ones too, so priorities hold across both)."""
        wanted = {"queues": self._texts(queues), "limit": limit, "now": now}
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
            (Candidate.from_row(r) for r in rows),
            limit,
            queue_free=queue_free,
            running=running,
            started=started,
            circuit_free=circuit_free,
        )
        claimed: list[Job] = []
        if ids:
            claimed = yield Stmt(
                self.q.claim_ids,
                {"worker_id": worker_id, "lease": lease, "now": now, "ids": ids},
                jobs=True,
            )
        return in_claim_order(claimed), bool(found[0]["present"])

    def complete(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> Call[list[int]]:
        atomic = any(o.keeps_cancel_request or o.lease_expired_before is not None for o in outcomes)
        return Call(self._complete_plan(outcomes, starts), atomic=atomic)

    def _complete_plan(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> Plan[list[int]]:
        starts = sorted(starts, key=lambda s: s.job_id)
        # In id order, as every statement that writes several running jobs: two such
        # statements then lock their rows in the same order and cannot deadlock.
        outcomes = sorted(outcomes, key=lambda o: o.job_id)
        rescues = [o.job_id for o in outcomes if o.lease_expired_before is not None]
        if rescues:  # run atomically (see `complete`): the rows stay locked for the update
            free = {r["id"] for r in (yield Stmt(self.q.lock_rescued, {"ids": BigInts(rescues)}))}
            outcomes = [o for o in outcomes if o.lease_expired_before is None or o.job_id in free]
            if not outcomes:
                return []
        sent = self._clock.now()
        update = Stmt(
            self.q.complete,
            {
                "count": len(outcomes),
                "ids": BigInts([o.job_id for o in outcomes]),
                "worker_ids": Texts([o.worker_id for o in outcomes]),
                "attempts": Ints([o.attempt for o in outcomes]),
                "states": Texts([o.state.value for o in outcomes]),
                "results": Texts([o.result for o in outcomes]),
                "errors": Texts(
                    [None if o.error is None else json.dumps(o.error) for o in outcomes]
                ),
                "ats": Floats([self.now(o.at) for o in outcomes]),
                # on the database's clock, the outcome's time is this long before the write
                "agos": Floats([max(0.0, sent - o.at) for o in outcomes]),
                "delays": Floats([o.delay for o in outcomes]),
                "refunds": Ints([1 if o.refunds_attempt else 0 for o in outcomes]),
                "notes": Texts([o.note for o in outcomes]),
                "rescues": Bools([o.lease_expired_before is not None for o in outcomes]),
                "expired": Floats([o.lease_expired_before for o in outcomes]),
                "leaders": Texts([o.leader for o in outcomes]),
                "finishes": Bools([o.finished_at is not None for o in outcomes]),
                "progresses": Floats([o.progress for o in outcomes]),
                "keeps_cancel": Bools([o.keeps_cancel_request for o in outcomes]),
                "keeps_note": Bools([o.keeps_requester_note for o in outcomes]),
                "ran_fors": Floats([o.ran_for for o in outcomes]),
                "start_count": len(starts),
                "start_ids": BigInts([s.job_id for s in starts]),
                "start_worker_ids": Texts([s.worker_id for s in starts]),
                "start_attempts": Ints([s.attempt for s in starts]),
                # when each began: the worker's time, or on the database's clock as long
                # before the write as it began before this moment (as an outcome's time)
                "start_ats": Floats([self.now(s.at - s.ago) for s in starts]),
                "start_agos": Floats([max(0.0, sent - (s.at - s.ago)) for s in starts]),
            },
        )
        maybe_left = [o.job_id for o in outcomes if o.keeps_cancel_request]
        if not maybe_left:
            rows = yield update  # the usual batch: one statement, one round trip
        else:
            # Retried or handed back, but asked to stop meanwhile: cancelled, in the same
            # transaction (the caller runs this plan atomically), sent together.
            now = self.now(max(o.at for o in outcomes))
            rows, _ = yield [
                update,
                Stmt(self.q.cancel_requested_leftovers, {"ids": BigInts(maybe_left), "now": now}),
            ]
        return [int(r["id"]) for r in rows]

    def extend_leases_stmt(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Stmt:
        return Stmt(
            self.q.extend_leases,
            {
                "now": self.now(worker.last_beat),
                "lease": max(0.0, lease_until - worker.last_beat),
                "worker_id": worker.id,
                "count": len(running),
                "ids": BigInts([job_id for job_id, _ in running]),
                "attempts": Ints([a for _, a in running]),
            },
        )

    def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Call[Beat]:
        # A beat that hangs is cut off at a quarter of the lease (if the statement timeout is
        # longer) and tried again on another connection before the leases run out.
        lease = max(0.0, lease_until - worker.last_beat)
        call = super().heartbeat(worker, running, lease_until, look)
        return Call(call.plan, deadline=max(lease / 4, 1.0))

    def find_expired(self, now: float, limit: int) -> Call[list[Job]]:
        params = {"now": self.now(now), "limit": limit}
        return Call(self._jobs(self.q.find_expired, params))

    def prune_workers(self, older_than: float, now: float) -> Call[int]:
        return Call(self._count(self.q.prune_workers, {"age": older_than, "now": self.now(now)}))

    def try_lead(self, name: str, holder: str, until: float, now: float) -> Call[bool]:
        """On a pooled connection (the blocking face); workers lead on a connection of their
        own (`PostgresEngine.try_lead`)."""
        return Call(self._take_lead_plan(name, holder, until, now))

    def _take_lead_plan(self, name: str, holder: str, until: float, now: float) -> Plan[bool]:
        return bool((yield self.take_lead_stmt(name, holder, until, now)))

    def take_lead_stmt(self, name: str, holder: str, until: float, now: float) -> Stmt:
        params = {"name": name, "holder": holder, "lease": max(0.0, until - now)}
        return Stmt(self.q.take_lead, params)

    def purge_plan(self, params: dict[str, Any]) -> Plan[int]:
        rows = yield Stmt(self.q.purge, params)
        return int(rows[0]["n"])

    def progress_plan(self, params: dict[str, Any]) -> Plan[bool]:
        [row] = yield Stmt(self.q.set_progress, params)
        return bool(row["updated"] == 1)


class PostgresEngine(Engine):
    """Runs plans on the sync and async pools (or the caller's connection)."""

    ops: PostgresOperations

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.settings = settings
        self.ops = PostgresOperations(settings, clock)
        self.q = self.ops.q
        self.schema = settings.postgres_schema
        self.channel = f"{self.schema}_jobs"
        self._deadline = settings.statement_timeout + DEADLINE_MARGIN_S
        timeout_ms = str(round(settings.statement_timeout * 1000))
        session_sql = self.q.session_settings.replace("{statement_timeout_ms}", timeout_ms)
        self._connector = Connector(url, settings, session_sql)
        self._pools = SyncPools(self._connector.make_pool, settings.connect_timeout)
        self._apools = AsyncPools(self._connector.make_apool, settings.connect_timeout)
        self._leader = LeaderSession(self._connector.connect_async, self._deadline)
        self._listener: Listener | None = None

    def use_clock(self, clock: Clock) -> None:
        self.ops.use_clock(clock)

    # -- drivers ----------------------------------------------------------------------------

    def check_schema(self) -> None:
        """On first use: the schema must be conveyor's and current (or is migrated now)."""
        self.run(self.ops.check_schema())

    def run(self, call: Call[T]) -> T:
        """Run a call on a pooled connection, or on the caller's (inside their transaction).
        Every error that means an outage is BackendUnavailable."""
        if call.check and not self.ops.checked:
            self.check_schema()
        if call.connection is not None:
            conn = sync_connection(call.connection)
            try:
                return drive_sync(conn, call.plan)
            except psycopg.Error as exc:
                _reraise(exc)
        deadline = self._deadline if call.deadline is None else call.deadline
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
            timer = WATCHDOG.arm(conn, deadline) if deadline < math.inf else None
            try:
                if call.atomic:
                    with conn.transaction():
                        return drive_sync(conn, call.plan)
                return drive_sync(conn, call.plan)
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

    async def arun(self, call: Call[T]) -> T:
        """As `run`, on the async pool; a call's `deadline` shortens the client's wait."""
        if call.check and not self.ops.checked:
            await asyncio.to_thread(self.check_schema)
        if call.deadline == math.inf:  # a migration: no bound, and not on the event loop
            return await asyncio.to_thread(self.run, call)
        if call.connection is not None:
            aconn = await async_connection(call.connection)
            try:
                return await drive_async(aconn, call.plan)
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
            timer = WATCHDOG.arm(conn, min(self._deadline, call.deadline or math.inf))
            try:
                if call.atomic:
                    async with conn.transaction():
                        return await drive_async(conn, call.plan)
                return await drive_async(conn, call.plan)
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

    # -- leadership, wake-ups, lifetime -----------------------------------------------------

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        """Leadership is a lease row on the server's clock, taken and renewed on a session of
        the leader's own (see `take_lead`): a leader that cannot renew it in time loses it, and
        one whose session is gone is replaced at once. Followers keep no connection open."""
        if not self.ops.checked:
            await asyncio.to_thread(self.check_schema)
        rows = await self._leader.execute(self.ops.take_lead_stmt(name, holder, until, now))
        if not rows:
            await self._leader.close()
        return bool(rows)

    async def resign(self, name: str, holder: str) -> None:
        try:
            if self._leader.open:
                await self._leader.execute(Stmt(self.q.resign, {"name": name, "holder": holder}))
        finally:
            await self._leader.close()

    async def wait_for_change(self, timeout: float) -> None:
        if self._listener is None:
            self._listener = Listener(
                self.url,
                self._connector.kwargs(),
                self.channel,
                self.q.listen,
                listen=self.settings.postgres_listen,
                poll_interval=self.settings.poll_interval,
            )
        await self._listener.wait(timeout)

    async def subscribe(self) -> Listener:
        """LISTEN of its own for one subscriber: on the events channel (state changes and
        progress) and the jobs channel (new runnable jobs)."""
        return Listener(
            self.url,
            self._connector.kwargs(),
            f"{self.schema}_events",
            self.q.listen_events,
            listen=self.settings.postgres_listen,
            poll_interval=self.settings.poll_interval,
        )

    def subscribe_blocking(self) -> SyncListener:
        return SyncListener(
            self.url,
            self._connector.kwargs(),
            self.q.listen_events,
            listen=self.settings.postgres_listen,
        )

    async def release(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._leader.close()
        await self._apools.close()

    def close(self) -> None:
        self._pools.close()
