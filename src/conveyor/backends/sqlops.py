"""The operations both SQL backends run the same way, written once as plans over a dialect.

A dialect (`SqliteOperations`, `PostgresOperations`) brings its named queries (`q`, one `.sql`
file, parameters named alike in both), its parameter adapters (`now`, `ids`, `texts`) and the
few plans whose statements truly differ: the claim, the batch insert, the batch complete, and
on SQLite, whose processes share no clock, liveness by observation.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.backends.base import (
    Beat,
    JobFilter,
    Operations,
    dependency_depths,
)
from conveyor.backends.plan import Atomic, Call, Plan, Stmt, rows_or_count, statement
from conveyor.backends.sql import Migration, Queries
from conveyor.circuit import Action, CircuitEvent, CircuitInfo, CircuitRow, transition
from conveyor.config import Settings
from conveyor.cron import TickRecord
from conveyor.errors import ConfigurationError, ValidationError
from conveyor.events import Cursor, Event, merge
from conveyor.job import (
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    NewJob,
    WorkerInfo,
)


def _cursor(history: int, progress: int) -> Cursor:
    return Cursor(f"{history}.{progress}")


def _positions(cursor: Cursor) -> tuple[int, int] | None:
    history, sep, progress = str(cursor).partition(".")
    if not (sep and history.isdigit() and progress.isdigit()):
        return None
    return int(history), int(progress)


def due_in(rows: Sequence[Any]) -> float | None:
    value = rows[0]["due_in"]
    return None if value is None else float(value)


def in_claim_order(jobs: Iterable[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: (j.priority, j.run_at, j.id))


class SqlOperations(Operations):
    """Every operation of `Operations` whose statement sequence is the same on every SQL
    store; a dialect subclass supplies the rest and the adapters."""

    q: Queries
    settings: Settings
    migrations: list[Migration]
    #: where the schema lives, for messages ("schema 'conveyor'", "'jobs.db'")
    where: str
    #: every write in a transaction of its own (SQLite: `BEGIN IMMEDIATE`, the one writer)
    write_atomic: bool = False
    #: whether every commit wakes idle workers by itself (SQLite's watch), so no statement
    #: needs to
    commits_wake: bool = False
    #: whether a store behind this conveyor is migrated on first use unless told otherwise
    migrates_by_default: bool = False

    def __init__(self) -> None:
        #: whether this process has checked the schema (the first call does)
        self.checked = False

    @property
    def latest_version(self) -> int:  # type: ignore[override]
        return self.migrations[-1].version

    # -- adapters ---------------------------------------------------------------------------

    @abc.abstractmethod
    def now(self, value: float | None) -> Any:
        """The time to send for "now"."""

    @abc.abstractmethod
    def ids(self, values: Iterable[int]) -> Any:
        """A list of ids as the dialect's queries take it."""

    @abc.abstractmethod
    def texts(self, values: Iterable[str]) -> Any:
        """A list of names (states, queues) as the dialect's queries take it."""

    def _texts(self, values: Iterable[str] | None) -> Any:
        return None if values is None else self.texts(values)

    def _read(self, plan: Plan[Any]) -> Call[Any]:
        return Call(plan)

    def _write(self, plan: Plan[Any], atomic: bool = False) -> Call[Any]:
        return Call(plan, atomic=atomic or self.write_atomic)

    def _statement(self, sql: str, params: Any = None) -> Plan[Any]:
        return statement(sql, params)

    # -- schema -----------------------------------------------------------------------------

    @abc.abstractmethod
    def ours_plan(self) -> Plan[bool]:
        """Whether the store holds conveyor's schema (False: empty); anything else is refused
        (`NotAConveyorDatabase`)."""

    def migration_preamble(self) -> Plan[None]:
        """What a migration does first, inside its transaction (a lock, the schema itself)."""
        yield Stmt(self.q.create_migrations_table)

    def split(self, script: str) -> list[str]:
        """A migration's script as the statements to send."""
        return [script]

    def schema_version_plan(self) -> Plan[int]:
        if not (yield from self.ours_plan()):
            return 0
        rows = yield Stmt(self.q.applied_migrations)
        return int(rows[-1]["version"]) if rows else 0

    def schema_version(self) -> Call[int]:
        return Call(self.schema_version_plan(), check=False)

    def needs_migration(self, version: int) -> bool:
        """Whether the store at `version` must be migrated before use; a clear error if it is
        newer than this conveyor, or may not be migrated by it."""
        known = self.latest_version
        if version > known:
            raise ConfigurationError(
                f"{self.where} has schema version {version}, newer than this conveyor "
                f"knows ({known}); upgrade conveyor"
            )
        auto = self.settings.auto_migrate
        if version < known and not (self.migrates_by_default if auto is None else auto):
            raise ConfigurationError(
                f"{self.where} needs migrations {version + 1}..{known}: run "
                "`conveyor migrate` (or pass auto_migrate=True)"
            )
        return version < known

    def check_schema(self) -> Call[None]:
        """On a process's first call: the schema must be conveyor's and current (or is
        migrated now, in a transaction of its own)."""
        return Call(self._check_schema_plan(), check=False, deadline=float("inf"))

    def _check_schema_plan(self) -> Plan[None]:
        if self.needs_migration((yield from self.schema_version_plan())):
            yield Atomic(self._migrate_plan(None))
        self.checked = True

    def migrate(self, down_to: int | None = None) -> Call[list[int]]:
        # A migration may rewrite a big table: no deadline.
        return Call(self._migrate_plan(down_to), atomic=True, check=False, deadline=float("inf"))

    def _migrate_plan(self, down_to: int | None) -> Plan[list[int]]:
        yield from self.migration_preamble()
        done = {int(r["version"]) for r in (yield Stmt(self.q.applied_migrations))}
        changed: list[int] = []
        if down_to is None:
            for migration in self.migrations:
                if migration.version not in done:
                    for sql in self.split(migration.up):
                        yield Stmt(sql)
                    params = {"version": migration.version, "name": migration.name}
                    yield Stmt(self.q.record_migration, {**params, "now": self.now(None)})
                    changed.append(migration.version)
        else:
            for migration in reversed(self.migrations):
                if migration.version in done and migration.version > down_to:
                    for sql in self.split(migration.down):
                        yield Stmt(sql)
                    yield Stmt(self.q.forget_migration, {"version": migration.version})
                    changed.append(migration.version)
        self.checked = down_to is None
        return changed

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> Call[list[Job]]:
        atomic = self.write_atomic or any(j.waits for j in jobs)
        plan = self.enqueue_plan(jobs)
        return Call(plan, atomic=atomic, connection=connection, gives_way=True)

    def enqueue_plan(self, jobs: Sequence[NewJob]) -> Plan[list[Job]]:
        waiting = [i for i, j in enumerate(jobs) if j.waits]
        depths = [0] * len(jobs)
        if waiting:
            # Locked until this transaction ends: none of them can finish (and look for
            # dependents) before the dependency rows written below are there to be seen.
            named = sorted({d for i in waiting for d in jobs[i].depends_on})
            rows = yield Stmt(self.q.lock_dependencies, {"ids": self.ids(named)})
            depths = dependency_depths(jobs, {r["id"]: r["dependency_depth"] for r in rows})
        if any(j.unique_key is not None for j in jobs):
            stored = yield from self.insert_unique_plan(jobs, depths)
        else:
            stored = yield from self.insert_plan(jobs, depths)
        if waiting:
            yield from self._add_dependencies_plan(jobs, stored, waiting)
        return stored

    @abc.abstractmethod
    def insert_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        """Insert jobs without unique keys, with their history; the jobs as stored."""

    @abc.abstractmethod
    def insert_unique_plan(self, jobs: Sequence[NewJob], depths: list[int]) -> Plan[list[Job]]:
        """Insert what no job holds the key of; for the rest, their holders (deduplicated)."""

    @abc.abstractmethod
    def dependencies_stmt(self, pairs: list[tuple[int, int]]) -> Stmt:
        """The statement that records `(job id, depends on)` pairs."""

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
        ids = self.ids(stored[i].id for i in new)
        _, _, found = yield [
            self.dependencies_stmt(pairs),
            Stmt(self.q.release_waiting, {"ids": ids}),
            Stmt(self.q.get_jobs, {"ids": ids}, jobs=True),
        ]
        now = {job.id: job for job in found}
        for i in new:
            stored[i] = now[stored[i].id]

    # -- reading ----------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Call[Job | None]:
        return self._read(self._get_job_plan(job_id))

    def _get_job_plan(self, job_id: int) -> Plan[Job | None]:
        found = yield Stmt(self.q.get_job, {"id": job_id}, jobs=True)
        return found[0] if found else None

    def list_jobs(self, where: JobFilter, limit: int) -> Call[list[Job]]:
        params: dict[str, Any] = {
            "queue": where.queue,
            "task": where.task,
            "limit": limit,
            "before_id": where.before_id,
            "error_type": where.error_type,
            "after_id": where.after_id,
            "contains": None if where.contains is None else where.contains.lower(),
            "ids": None if where.ids is None else self.ids(where.ids),
        }
        if where.states is None:
            sql = self.q.list_jobs
        else:
            sql, params["states"] = self.q.list_jobs_in_states, self.texts(where.state_names or [])
        return self._read(self._jobs(sql, params))

    def _mapped(self, sql: str, params: Any, convert: Any) -> Plan[list[Any]]:
        rows = yield Stmt(sql, params)
        return [convert(r) for r in rows]

    def _jobs(self, sql: str, params: Any) -> Plan[list[Job]]:
        jobs: list[Job] = yield Stmt(sql, params, jobs=True)
        return jobs

    def job_history(self, job_id: int) -> Call[list[HistoryEntry]]:
        return self._read(self._mapped(self.q.job_history, {"id": job_id}, HistoryEntry.from_row))

    def noted(self, ids: Sequence[int], prefix: str) -> Call[set[int]]:
        return self._read(self._noted_plan(ids, prefix))

    def _noted_plan(self, ids: Sequence[int], prefix: str) -> Plan[set[int]]:
        rows = yield Stmt(self.q.noted, {"ids": self.ids(ids), "prefix": prefix})
        return {int(r["job_id"]) for r in rows}

    def find_unique(self, key: str) -> Call[Job | None]:
        return self._read(self._find_unique_plan(key))

    def _find_unique_plan(self, key: str) -> Plan[Job | None]:
        params = {"key": key, "since": None, "unique_for": None, "now": None}
        found = yield Stmt(self.q.find_unique, params, jobs=True)
        return found[0] if found else None

    def queue_stats(
        self, states: Iterable[JobState] | None
    ) -> Call[dict[str, dict[JobState, int]]]:
        if states is None:
            stmt = Stmt(self.q.queue_stats)
        else:
            names = {"states": self.texts(s.value for s in states)}
            stmt = Stmt(self.q.queue_stats_in_states, names)
        return self._read(self._queue_stats_plan(stmt))

    def _queue_stats_plan(self, stmt: Stmt) -> Plan[dict[str, dict[JobState, int]]]:
        stats: dict[str, dict[JobState, int]] = {}
        for row in (yield stmt):
            stats.setdefault(row["queue"], {})[JobState(row["state"])] = int(row["n"])
        return stats

    def dead_groups(self, queue: str | None) -> Call[list[DeadGroup]]:
        return self._read(self._mapped(self.q.dead_groups, {"queue": queue}, DeadGroup.from_row))

    def finished_counts(self, since: float, bucket: int) -> Call[list[FinishedCount]]:
        params = {"since": since, "bucket": bucket}
        return self._read(self._mapped(self.q.finished_counts, params, FinishedCount.from_row))

    def queued_since(self) -> Call[dict[str, float]]:
        return self._read(self._queued_since_plan())

    def _queued_since_plan(self) -> Plan[dict[str, float]]:
        rows = yield Stmt(self.q.queued_since)
        return {r["queue"]: float(r["since"]) for r in rows}

    def list_workers(self) -> Call[list[WorkerInfo]]:
        convert = lambda r: WorkerInfo.from_row(r, beat_age=r["beat_age"])  # noqa: E731
        return self._read(self._mapped(self.q.list_workers, None, convert))

    def paused_queues(self) -> Call[list[str]]:
        return self._read(self._mapped(self.q.paused_queues, None, lambda r: r["name"]))

    def session_revoked(self, nonce: str) -> Call[bool]:
        return self._read(self._exists(self.q.session_revoked, {"nonce": nonce}))

    def _exists(self, sql: str, params: Any) -> Plan[bool]:
        return bool((yield Stmt(sql, params)))

    def queue_limits(self) -> Call[dict[str, int]]:
        return self._read(self._queue_limits_plan())

    def _queue_limits_plan(self) -> Plan[dict[str, int]]:
        return {r["name"]: int(r["concurrency"]) for r in (yield Stmt(self.q.queue_limits))}

    def circuits(self) -> Call[list[CircuitInfo]]:
        return self._read(self._mapped(self.q.list_circuits, None, CircuitInfo.from_row))

    def circuit_log(self, name: str | None, limit: int) -> Call[list[CircuitEvent]]:
        params = {"name": name, "limit": limit}
        return self._read(self._mapped(self.q.circuit_log, params, CircuitEvent.from_row))

    def backlog(self, queue: str, now: float) -> Call[tuple[int, float | None]]:
        return self._read(self._backlog_plan(queue, now))

    def _backlog_plan(self, queue: str, now: float) -> Plan[tuple[int, float | None]]:
        [row] = yield Stmt(self.q.backlog, {"queue": queue, "now": self.now(now)})
        return int(row["depth"]), None if row["age"] is None else max(float(row["age"]), 0.0)

    def periodic_ticks(self) -> Call[dict[str, TickRecord]]:
        return self._read(self._periodic_ticks_plan())

    def _periodic_ticks_plan(self) -> Plan[dict[str, TickRecord]]:
        rows = yield Stmt(self.q.periodic_ticks)
        return {r["name"]: TickRecord.from_row(r) for r in rows}

    def after_short_claim(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        return self._read(self._due_in_plan(queues, now))

    def _due_in_plan(self, queues: Sequence[str] | None, now: float) -> Plan[float | None]:
        return due_in((yield self.next_due_stmt(queues, now)))

    def next_due_stmt(self, queues: Sequence[str] | None, now: float) -> Stmt:
        """The question `after_short_claim` asks; `due_in` reads its answer."""
        if queues is None:
            return Stmt(self.q.next_due_in, {"now": self.now(now)})
        params = {"queues": self.texts(queues), "now": self.now(now)}
        return Stmt(self.q.next_due_in_queues, params)

    def held_back(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        return self._read(self._held_back_plan(queues, now))

    def _held_back_plan(self, queues: Sequence[str] | None, now: float) -> Plan[float | None]:
        params = {"queues": self._texts(queues), "now": self.now(now)}
        [row] = yield Stmt(self.q.held_back, params)
        if not row["held"]:
            return None
        return float("inf") if row["opens_in"] is None else max(float(row["opens_in"]), 0.0)

    # -- events -----------------------------------------------------------------------------

    # A position in the stream is the last history row and the last progress row seen,
    # `<history id>.<progress id>`.

    def event_cursor(self, start: Cursor | None) -> Call[Cursor]:
        return self._read(self._event_cursor_plan(start))

    def _event_cursor_plan(self, start: Cursor | None) -> Plan[Cursor]:
        [row] = yield Stmt(self.q.event_cursor)
        end = (int(row["history"]), int(row["progress"]))
        at = None if start is None else _positions(start)
        # a position past the end (made up, or of another store) would never see an event
        if at is None or at[0] > end[0] or at[1] > end[1]:
            return _cursor(*end)
        return _cursor(*at)

    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int, progress: bool
    ) -> Call[tuple[list[Event], Cursor]]:
        at = _positions(after)
        if at is None:
            raise ValidationError(f"{str(after)!r} is not a position in this event stream")
        return self._read(self._read_events_plan(at, job_id, queue, limit, progress))

    def _read_events_plan(
        self,
        at: tuple[int, int],
        job_id: int | None,
        queue: str | None,
        limit: int,
        progress: bool,
    ) -> Plan[tuple[list[Event], Cursor]]:
        where = {"job_id": job_id, "queue": queue, "limit": limit}
        history = Stmt(self.q.history_events, {**where, "after": at[0]})
        if progress:
            reported = Stmt(self.q.progress_events, {**where, "after": at[1]})
            states, reports = yield [history, reported]
        else:
            states, reports = (yield history), []
        after = _cursor(
            int(states[-1]["id"]) if states else at[0], int(reports[-1]["id"]) if reports else at[1]
        )
        return merge(states, reports), after

    def prune_progress(self, older_than: float, now: float) -> Call[int]:
        params = {"age": older_than, "now": self.now(now)}
        return self._write(self._count(self.q.prune_progress, params))

    def _count(self, sql: str, params: Any) -> Plan[int]:
        return rows_or_count((yield Stmt(sql, params)))

    # -- steering ---------------------------------------------------------------------------

    def cancel_job(self, job_id: int, now: float, note: str) -> Call[Job | None]:
        return self._write(self._cancel_plan(job_id, now, note), atomic=True)

    def _cancel_plan(self, job_id: int, now: float, note: str) -> Plan[Job | None]:
        params = {"id": job_id, "now": self.now(now), "note": note}
        if (yield Stmt(self.q.cancel_pending, params)) == 0:
            yield Stmt(self.q.request_cancel, params)
        return (yield from self._get_job_plan(job_id))

    def cancel_jobs(self, where: JobFilter, now: float, note: str) -> Call[int]:
        params = {
            "states": self.texts(where.state_names or []),
            "queue": where.queue,
            "task": where.task,
            "ids": None if where.ids is None else self.ids(where.ids),
            "now": self.now(now),
            "note": note,
        }
        return self._write(self._count(self.q.cancel_jobs, params))

    def retry_jobs(self, where: JobFilter, now: float, note: str) -> Call[list[int]]:
        params = {
            "ids": None if where.ids is None else self.ids(where.ids),
            "states": self.texts(where.state_names or []),
            "queue": where.queue,
            "task": where.task,
            "now": self.now(now),
            "note": note,
        }
        return self._write(self._mapped(self.q.retry_jobs, params, lambda r: int(r["id"])))

    def purge(self, where: JobFilter, older_than: float, now: float) -> Call[int]:
        params = {
            "states": self.texts(where.state_names or []),
            "age": older_than,
            "now": self.now(now),
            "queue": where.queue,
            "task": where.task,
            "ids": None if where.ids is None else self.ids(where.ids),
        }
        return self._write(self.purge_plan(params))

    @abc.abstractmethod
    def purge_plan(self, params: dict[str, Any]) -> Plan[int]:
        """Delete the jobs `params` name (with their history); the count."""

    def set_progress(
        self,
        job_id: int,
        worker_id: str,
        attempt: int,
        progress: float,
        stage: str | None,
        message: str | None,
        now: float,
    ) -> Call[bool]:
        params = {
            "id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "progress": progress,
            "stage": stage,
            "message": message,
            "now": self.now(now),
        }
        return self._write(self.progress_plan(params))

    @abc.abstractmethod
    def progress_plan(self, params: dict[str, Any]) -> Plan[bool]:
        """Record a progress report (and the job's latest) if the attempt still runs."""

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> Call[bool]:
        if paused:
            plan = self._count(self.q.pause_queue, {"name": queue, "now": self.now(now)})
        else:
            plan = self._count(self.q.resume_queue, {"name": queue})
        return self._write(self._is_one(plan))

    def _is_one(self, plan: Plan[int]) -> Plan[bool]:
        return (yield from plan) == 1

    def revoke_session(self, nonce: str, until: float, now: float) -> Call[None]:
        return self._write(self._revoke_plan(nonce, until, now), atomic=True)

    def _revoke_plan(self, nonce: str, until: float, now: float) -> Plan[None]:
        # sessions that expired since they were revoked are refused anyway: forgotten now
        yield Stmt(self.q.forget_revoked_sessions, {"now": self.now(now)})
        yield Stmt(self.q.revoke_session, {"nonce": nonce, "until": until})

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> Call[None]:
        params = {"name": queue, "concurrency": concurrency}
        return self._write(self._statement(self.q.set_queue_concurrency, params))

    def record_probe(self, name: str, now: float) -> Call[None]:
        params = {"name": name, "now": self.now(now)}
        return self._write(self._statement(self.q.record_probe, params))

    def claim_alert(self, key: str, every: float, now: float) -> Call[bool]:
        params = {"key": key, "every": every, "now": self.now(now)}
        return self._write(self._is_one(self._count(self.q.claim_alert, params)))

    def change_circuit(
        self,
        name: str,
        action: Action,
        now: float,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
    ) -> Call[CircuitEvent | None]:
        plan = self._change_circuit_plan(name, action, now, threshold, reason, half_open_jobs)
        return Call(plan, atomic=not self.write_atomic)

    def _change_circuit_plan(
        self,
        name: str,
        action: Action,
        now: float,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
    ) -> Plan[CircuitEvent | None]:
        key = {"name": name, "now": self.now(now)}
        if action is not Action.FAILURE:
            # most successes meet a closed circuit: nothing to change, no write
            [found] = yield Stmt(self.q.lock_circuit, key)
            if found["state"] is None or (found["state"] == "closed" and not found["failures"]):
                return None
        change: CircuitEvent | None = yield Atomic(
            self._circuit_change_plan(name, action, threshold, reason, half_open_jobs, key)
        )
        return change

    def _circuit_change_plan(
        self,
        name: str,
        action: Action,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
        key: dict[str, Any],
    ) -> Plan[CircuitEvent | None]:
        """The circuit's row is locked (or the store's one writer holds it) while `transition`
        decides."""
        if action is Action.FAILURE:
            yield Stmt(self.q.ensure_circuit, key)
        [found] = yield Stmt(self.q.lock_circuit, key)
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
        [count] = yield Stmt(self.q.held_by_circuit, {"name": name, "running": event == "opened"})
        change = CircuitEvent.after(name, before, after, event, at, int(count["held"]))
        yield Stmt(self.q.log_circuit, change.params())
        if event != "opened" and not self.commits_wake:
            yield Stmt(self.q.wake_held, {"name": name})
        return change

    # -- workers ----------------------------------------------------------------------------

    def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Call[Beat]:
        return self._write(self._heartbeat_plan(worker, running, lease_until, look))

    @abc.abstractmethod
    def extend_leases_stmt(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Stmt:
        """The statement that renews the leases of the worker's attempts still its own and
        returns them (id, attempt, cancel_requested)."""

    def after_beat(self) -> Plan[None]:
        """What a heartbeat also does (SQLite watches everyone's beats)."""
        return None
        yield

    def _heartbeat_plan(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float, look: bool
    ) -> Plan[Beat]:
        running = sorted(running)
        register = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "queues": None if worker.queues is None else json.dumps(worker.queues),
            "concurrency": worker.concurrency,
            "started_at": worker.started_at,
            "last_beat": worker.last_beat,
            "now": self.now(worker.last_beat),
            "running": json.dumps(sorted({job_id for job_id, _ in running})),
        }
        statements = [
            Stmt(self.q.upsert_worker, register),
            self.extend_leases_stmt(worker, running, lease_until),
        ]
        if look:
            statements.append(Stmt(self.q.running_of_worker, {"worker_id": worker.id}))
        _, extended, *under = yield statements
        yield from self.after_beat()
        return Beat.read(extended, running, under[0] if look else None)

    def deregister_worker(self, worker_id: str) -> Call[None]:
        return self._write(self._statement(self.q.delete_worker, {"id": worker_id}))

    def resign(self, name: str, holder: str) -> Call[None]:
        return self._write(self._statement(self.q.resign, {"name": name, "holder": holder}))

    # -- cron -------------------------------------------------------------------------------

    def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None
    ) -> Call[Job | None]:
        return Call(self._fire_periodic_plan(name, tick, job, now, leader), atomic=True)

    def _fire_periodic_plan(
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

    def prune_ticks(self, older_than: float, now: float) -> Call[int]:
        params = {"age": older_than, "now": self.now(now)}
        return self._write(self._count(self.q.prune_ticks, params))
