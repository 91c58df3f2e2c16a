"""The SQLite backend: the embedded default. One file, many processes, WAL.

`SqliteOperations` is the dialect (the shared plans are in `conveyor.backends.sqlops`);
`SqliteEngine` runs plans on `sqlite3`, blocking on the caller's thread or, for the async
worker, on one dedicated thread. Each thread has its own connection.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from conveyor.backends.base import Engine, outcome_array
from conveyor.backends.plan import Atomic, Call, Plan, Stmt, rows_or_count
from conveyor.backends.sql import Queries, load_migrations
from conveyor.backends.sqlite.connections import (
    begin_immediate,
    open_connection,
    path_from_url,
    rollback,
    statements,
    unavailable,
    unavailable_error,
)
from conveyor.backends.sqlite.liveness import Sightings
from conveyor.backends.sqlite.watch import SyncWatch, Watch
from conveyor.backends.sqlops import SqlOperations, in_claim_order
from conveyor.clock import Clock, monotonic
from conveyor.config import Settings
from conveyor.errors import (
    ValidationError,
)
from conveyor.job import Job, NewJob, Outcome, Start, WorkerInfo
from conveyor.limits import Candidate, best_buckets, pick

Q = Queries.load("conveyor.backends.sqlite", "queries.sql")
MIGRATIONS = load_migrations("conveyor.backends.sqlite.migrations")

T = TypeVar("T")


class SqliteOperations(SqlOperations):
    """The SQLite dialect: JSON text for lists, the caller's clock for "now", and the plans
    that differ — the claim, the batch insert and complete, and liveness by observation."""

    write_atomic = True
    commits_wake = True  # the file's watchers see every commit (`watch.py`)
    migrates_by_default = True  # the embedded default: zero set-up

    def __init__(self, path: str, settings: Settings, clock: Clock) -> None:
        super().__init__()
        self.q = Q
        self.settings = settings
        self.clock = clock
        self.migrations = MIGRATIONS
        self.where = repr(path)
        self.sightings = Sightings(lambda: monotonic(self.clock))

    def now(self, value: float | None) -> float:
        return self.clock.now() if value is None else value

    def ids(self, values: Iterable[int]) -> str:
        return json.dumps([int(v) for v in values])

    def texts(self, values: Iterable[str]) -> str:
        return json.dumps([str(v) for v in values])

    def ours_plan(self) -> Plan[bool]:
        # a file holding other tables is refused before any pragma (see `SqliteEngine.connect`)
        return bool((yield Stmt(self.q.list_tables)))

    def split(self, script: str) -> list[str]:
        return statements(script)

    # -- enqueue ----------------------------------------------------------------------------

    def insert_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        plain = all(j.plain for j in jobs)
        rows = [_insert_row(j, d, full=not plain) for j, d in zip(jobs, depths, strict=True)]
        insert = Q.insert_job if plain else Q.insert_job_full
        yield Stmt(insert, rows[0]) if len(rows) == 1 else Stmt(insert, rows, many=True)
        [(last,)] = yield Stmt(Q.last_insert_id)
        # AUTOINCREMENT under BEGIN IMMEDIATE (one writer) hands out consecutive ids.
        first = last - len(rows) + 1
        yield Stmt(Q.record_enqueued, {"first": first, "last": last})
        return [j.stored_as(first + i) for i, j in enumerate(jobs)]

    def insert_unique_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        """Jobs one by one, each with a key looked up first (this transaction is the only
        writer, so nothing can take the key between the look-up and the insert)."""
        stored: list[Job] = []
        inserted: list[int] = []
        for new, depth in zip(jobs, depths, strict=True):
            if new.unique_key is not None:
                key = {"key": new.unique_key, "since": new.finished_since}
                found = yield Stmt(Q.find_unique, key, jobs=True)
                if found:
                    holder = found[0]
                    holder.deduplicated = True
                    stored.append(holder)
                    continue
            yield Stmt(Q.insert_job_full, _insert_row(new, depth, full=True))
            [(job_id,)] = yield Stmt(Q.last_insert_id)
            inserted.append(job_id)
            stored.append(new.stored_as(job_id))
        if inserted:
            yield Stmt(Q.record_enqueued, {"first": inserted[0], "last": inserted[-1]})
        return stored

    def dependencies_stmt(self, pairs: list[tuple[int, int]]) -> Stmt:
        return Stmt(Q.insert_dependencies, pairs, many=True)

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
        plan = self._claim_plan(worker_id, queues, limit, lease_until, now, ahead)
        return Call(plan, atomic=True)

    def _claim_plan(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int,
    ) -> Plan[list[Job]]:
        # Stamped when the claim holds the write lock, not when it was asked for (it may have
        # waited for other writers): rate windows count the moments the jobs were taken.
        waited = max(0.0, self.clock.now() - now)
        now, lease_until = now + waited, lease_until + waited
        params: dict[str, Any] = {
            "worker_id": worker_id,
            "now": now,
            "lease_until": lease_until,
            "limit": limit,
        }
        _, [(limited,)] = yield [Stmt(Q.promote_due, {"now": now}), Stmt(Q.limits_present)]
        if limited:  # nothing claimed ahead: only plain jobs may be held ahead
            jobs = yield from self._claim_limited(queues, params)
            return (yield from self._begin(in_claim_order(jobs), limit, now))
        params["limit"] = limit + ahead
        if queues is None:
            jobs = yield Stmt(Q.claim, params, jobs=True)
        elif len(queues) == 1:
            jobs = yield Stmt(Q.claim_in_queue, {**params, "queue": queues[0]}, jobs=True)
        else:
            # Each queue's best candidates come from its own index; the best of those win.
            wanted = params["limit"]
            found = yield [Stmt(Q.claim_candidates, {"queue": q, "limit": wanted}) for q in queues]
            candidates = sorted((r["priority"], r["run_at"], r["id"]) for f in found for r in f)
            params["ids"] = self.ids(c[2] for c in candidates[:wanted])
            jobs = yield Stmt(Q.claim_ids, params, jobs=True)
        return (yield from self._begin(in_claim_order(jobs), limit, now))

    def _begin(self, jobs: list[Job], begun: int, now: float) -> Plan[list[Job]]:
        """The first `begun` claimed jobs (the worker's free slots) begin now, in the claim's
        transaction; the rest are claimed ahead, with no start time yet."""
        if jobs[:begun]:
            yield Stmt(Q.begin_now, {"ids": self.ids(j.id for j in jobs[:begun]), "now": now})
        for job in jobs[:begun]:
            job.started_at = max(now, job.created_at)
        return jobs

    def _claim_limited(
        self, queues: Sequence[str] | None, params: dict[str, Any]
    ) -> Plan[list[Job]]:
        """The claim when limits are in play: the best plain jobs, and per queue or bucket
        with room the best of its jobs, merged by `pick` (this transaction is the only writer,
        so the counts cannot change under it)."""
        limit, now = params["limit"], params["now"]
        mine = self._texts(queues)
        if queues is None:
            found = list((yield Stmt(Q.plain_candidates, {"limit": limit})))
        else:
            per_queue = yield [
                Stmt(Q.claim_candidates, {"queue": q, "limit": limit}) for q in queues
            ]
            found = [row for rows in per_queue for row in rows]
        queue_free = {
            r["name"]: r["free"]
            for r in (yield Stmt(Q.limited_queues))
            if queues is None or r["name"] in queues
        }
        for queue, free in queue_free.items():
            if free > 0:
                wanted = {"queue": queue, "limit": min(free, limit)}
                found += yield Stmt(Q.limited_queue_candidates, wanted)
        circuit_free = {r["name"]: r["free"] for r in (yield Stmt(Q.half_open_circuits))}
        for circuit, free in circuit_free.items():
            if free > 0:
                wanted = {"circuit": circuit, "queues": mine, "limit": min(free, limit)}
                found += yield Stmt(Q.circuit_candidates, wanted)
        used: dict[str, dict[str, int]] = {}
        for kind, buckets, candidates in (
            ("concurrency", Q.concurrency_buckets, Q.concurrency_candidates),
            ("rate", Q.rate_buckets, Q.rate_candidates),
        ):
            rows = yield Stmt(buckets, {"now": now})
            used[kind] = {b["key"]: b["used"] for b in rows}
            # The best `limit` jobs that fit lie in at most `limit` buckets: those with room
            # whose heads come first. Only theirs are fetched.
            for b in best_buckets(rows, limit):
                room = min(b["max"] - b["used"], limit)
                wanted = {"key": b["key"], "queues": mine, "limit": room}
                found += yield Stmt(candidates, wanted)
        ids = pick(
            (Candidate.from_row(r) for r in found),
            limit,
            queue_free=queue_free,
            running=used["concurrency"],
            started=used["rate"],
            circuit_free=circuit_free,
        )
        if not ids:
            return []
        jobs: list[Job] = yield Stmt(Q.claim_ids, {**params, "ids": self.ids(ids)}, jobs=True)
        yield Stmt(Q.prune_rate_starts, {"now": now})
        yield Stmt(Q.record_rate_starts, {"now": now, "ids": self.ids(ids)})
        return jobs

    def complete(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> Call[list[int]]:
        return Call(self._complete_plan(outcomes, starts), atomic=True)

    def _complete_plan(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start]
    ) -> Plan[list[int]]:
        if starts:
            rows = [[s.job_id, s.worker_id, s.attempt, s.at, s.ago] for s in starts]
            yield Stmt(Q.record_starts, {"starts": json.dumps(rows)})
        if not outcomes:
            return []
        written = yield Stmt(
            Q.complete, {"outcomes": json.dumps([outcome_array(o) for o in outcomes])}
        )
        ids = {row[0] for row in written}
        applied = [o.job_id for o in outcomes if o.job_id in ids]
        leftovers = [o.job_id for o in outcomes if o.job_id in ids and o.keeps_cancel_request]
        if leftovers:
            now = max(o.at for o in outcomes)
            yield Stmt(Q.cancel_requested_leftovers, {"ids": self.ids(leftovers), "now": now})
        return applied

    def extend_leases_stmt(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Stmt:
        return Stmt(
            Q.extend_leases,
            {
                "lease_until": lease_until,
                "worker_id": worker.id,
                "ids": self.ids(sorted({job_id for job_id, _ in running})),
                "attempts": json.dumps([f"{i}:{a}" for i, a in running]),
            },
        )

    def after_beat(self) -> Plan[None]:
        # Every beat also looks at everyone else's: the liveness the leader judges by.
        self.sightings.workers((yield Stmt(Q.worker_beats)))

    def prune_workers(self, older_than: float, now: float) -> Call[int]:
        return Call(self._prune_workers_plan(older_than), atomic=True)

    def _prune_workers_plan(self, older_than: float) -> Plan[int]:
        """Forget workers whose beat has not changed for `older_than` seconds, as this process
        has seen it (not by their wall clocks: a clock ahead would forget live workers)."""
        quiet = self.sightings.workers((yield Stmt(Q.worker_beats)))
        gone = [wid for wid, (_, silent) in quiet.items() if silent >= older_than]
        if not gone:
            return 0
        return rows_or_count((yield Stmt(Q.prune_workers, {"ids": json.dumps(gone)})))

    def find_expired(self, now: float, limit: int) -> Call[list[Job]]:
        return Call(self._find_expired_plan(now, limit))

    def _find_expired_plan(self, now: float, limit: int) -> Plan[list[Job]]:
        """Running jobs whose worker is lost: not seen to beat for a whole lease (of the job:
        the worker's own lease setting, and never less than this App's). A job whose lease ran
        out by this process's clock is one only if its worker is not seen beating either (a
        clock ahead would otherwise take every job); a job of a worker seen to stop beating is
        one whatever its lease says (that worker's clock may have been behind). Jobs of
        workers without a row (gone without a word) go by their lease alone."""
        beats = self.sightings.workers((yield Stmt(Q.worker_beats)))
        own_lease = self.settings.lease_seconds

        def lost(job: Job) -> bool:
            if job.worker_id not in beats:
                return True
            last_beat, silent = beats[job.worker_id]
            lease = max(own_lease, (job.lease_until or 0.0) - last_beat)
            return silent >= lease

        found = yield Stmt(Q.find_expired, {"now": now, "limit": limit}, jobs=True)
        expired = {job.id: job for job in found if lost(job)}
        quiet = [wid for wid, (_, silent) in beats.items() if silent >= own_lease]
        if quiet:
            params = {"workers": json.dumps(quiet), "limit": limit}
            for job in (yield Stmt(Q.find_running_of, params, jobs=True)):
                if lost(job):
                    expired.setdefault(job.id, job)
        return sorted(expired.values(), key=lambda j: j.lease_until or 0.0)[:limit]

    def try_lead(self, name: str, holder: str, until: float, now: float) -> Call[bool]:
        return Call(self._try_lead_plan(name, holder, until, now), atomic=True)

    def _try_lead_plan(self, name: str, holder: str, until: float, now: float) -> Plan[bool]:
        """The leadership is a row its holder renews; another takes it over once it has watched
        the row go unrenewed for a whole lease (`until - now`), on its own monotonic clock —
        not by comparing the row's time with its own wall clock, which may be off."""
        found = yield Stmt(Q.get_leader, {"name": name})
        if found and found[0]["holder"] != holder:
            renewed = (found[0]["holder"], found[0]["until"])
            if self.sightings.unchanged_for(f"leader:{name}", renewed) < until - now:
                return False
        yield Stmt(Q.put_leader, {"name": name, "holder": holder, "until": until})
        return True

    def purge_plan(self, params: dict[str, Any]) -> Plan[int]:
        yield Stmt(Q.purge_history, params)
        return rows_or_count((yield Stmt(Q.purge, params)))

    def progress_plan(self, params: dict[str, Any]) -> Plan[bool]:
        if (yield Stmt(Q.set_progress, params)) == 0:
            return False
        yield Stmt(Q.record_progress, params)
        return True


def _insert_row(job: NewJob, depth: int, full: bool) -> tuple[Any, ...]:
    """A job's row for `insert_job` (a plain job: the columns that stay NULL are not bound,
    which costs a fifth of the insert) or `insert_job_full`."""
    row = (
        job.queue,
        job.task,
        job.args,
        job.kwargs,
        job.meta,
        job.priority,
        job.state.value,
        job.max_attempts,
        job.run_at,
        job.created_at,
        job.created_at,
    )
    if not full:
        return row
    return (
        *row,
        job.unique_key,
        job.on_dependency_failure,
        depth,
        job.concurrency_key,
        job.concurrency_max,
        job.rate_key,
        job.rate_max,
        job.rate_period,
        job.circuit,
    )


class SqliteEngine(Engine):
    """Runs plans on this thread's connection (the sync API) or on one dedicated database
    thread (the async worker), every write in `BEGIN IMMEDIATE`: the one writer."""

    ops: SqliteOperations

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._settings = settings
        self.ops = SqliteOperations(self.path, settings, clock)
        self._local = threading.local()
        # Weak, so a connection of a thread that has ended goes with the thread.
        self._all: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._watch: Watch | None = None

    def use_clock(self, clock: Clock) -> None:
        self.ops.clock = clock

    # -- connections ------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection with conveyor's pragmas (callers own it)."""
        synchronous = self._settings.sqlite_synchronous
        conn = open_connection(self.path, self.url, synchronous, Q.list_tables)
        with self._lock:
            self._all.add(conn)
        return conn

    def _conn(self, check: bool = True) -> sqlite3.Connection:
        """This thread's connection; the first use checks (and maybe migrates) the schema."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        if check and not self.ops.checked:
            _drive(conn, self.ops.check_schema().plan)
        return conn

    def data_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(Q.data_version).fetchone()[0])

    # -- drivers ----------------------------------------------------------------------------

    def run(self, call: Call[T]) -> T:
        if call.connection is not None:
            raise ValidationError(
                "enqueue inside your own transaction (connection=...) needs PostgreSQL"
            )
        try:
            conn = self._conn(check=call.check)
            if call.atomic:
                return _transaction(conn, call.plan, call.gives_way)
            return _drive(conn, call.plan)
        except sqlite3.Error as exc:
            if (error := unavailable(exc)) is not None:
                raise error from exc
            raise

    async def arun(self, call: Call[T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run, call)

    # -- wake-ups and lifetime --------------------------------------------------------------

    def subscribe_blocking(self) -> SyncWatch:
        return SyncWatch(self)

    async def subscribe(self) -> Watch:
        watch = Watch(self)
        await watch.start(self._in_thread)
        return watch

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def wait_for_change(self, timeout: float) -> None:
        if self._watch is None:
            self._watch = await self.subscribe()
        await self._watch.wait(timeout)

    async def release(self) -> None:
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._executor is not None:
            # Its thread exits once idle; a call still in it is not waited for (the next call
            # makes a new one).
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            conn.close()
        self._local = threading.local()
        self._watch = None


def _execute(conn: sqlite3.Connection, stmt: Stmt) -> Any:
    if stmt.many:
        return conn.executemany(stmt.sql, stmt.params).rowcount
    cur = conn.execute(stmt.sql, () if stmt.params is None else stmt.params)
    if cur.description is None:
        return cur.rowcount
    if not stmt.jobs:
        return cur.fetchall()
    read = Job.reader([column[0] for column in cur.description])
    return [read(row) for row in cur.fetchall()]


def _drive(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    try:
        step = next(plan)
        while True:
            if isinstance(step, list):
                result: Any = [_execute(conn, s) for s in step]
            elif isinstance(step, Atomic):
                inside = conn.in_transaction
                result = _drive(conn, step.plan) if inside else _transaction(conn, step.plan)
            else:
                result = _execute(conn, step)
            step = plan.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


def _transaction(conn: sqlite3.Connection, plan: Plan[T], gives_way: bool = False) -> T:
    """One write transaction (`BEGIN IMMEDIATE`: the only writer). Errors that mean the file
    cannot serve now (busy, disk full, I/O) are BackendUnavailable; nothing of the transaction
    stays."""
    try:
        begin_immediate(conn, gives_way)
    except sqlite3.Error as exc:
        raise unavailable_error(exc) from exc
    try:
        value = _drive(conn, plan)
        conn.execute("COMMIT")
    except BaseException as exc:
        rollback(conn)
        if (error := unavailable(exc)) is not None:
            raise error from exc
        raise
    return value
