"""The SQLite backend: the embedded default. One file, many processes, WAL.

The store is natively blocking (`sqlite3`), so `SqliteStore` implements every operation as a
plain method and serves the sync API directly; `SqliteBackend` runs the same methods on one
dedicated thread for the async worker. Each thread has its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from conveyor.backends.base import Backend, Beat, dependency_depths
from conveyor.backends.sql import Queries, load_migrations
from conveyor.circuit import Action, CircuitEvent, CircuitInfo, CircuitRow, transition
from conveyor.clock import Clock, monotonic
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
from conveyor.limits import Candidate, best_buckets, pick
from conveyor.logging import get_logger

log = get_logger("conveyor.sqlite")

Q = Queries.load("conveyor.backends.sqlite", "queries.sql")
MIGRATIONS = load_migrations("conveyor.backends.sqlite.migrations")
BUSY_TIMEOUT_S = 10.0
#: How often an idle worker looks at `PRAGMA data_version` (a read of shared memory, not disk).
WATCH_INTERVAL_S = 0.005

P = ParamSpec("P")
T = TypeVar("T")


def path_from_url(url: str) -> str:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` to a file path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(f"a SQLite URL looks like sqlite:///path/to/file.db, got {url!r}")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r}: conveyor needs a database file that several connections can share "
            "(use a temporary file instead of :memory:)"
        )
    return path


def _json_list(values: Iterable[Any] | None) -> str | None:
    return None if values is None else json.dumps([str(v) for v in values])


def _ids_json(ids: Iterable[int]) -> str:
    return json.dumps([int(i) for i in ids])


#: SQLite's result codes that mean the file cannot serve now: busy or locked past the busy
#: timeout, out of memory, a read-only file, an I/O error, a full disk, a file that cannot be
#: opened, a locking protocol error.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def unavailable(exc: BaseException) -> BackendUnavailable | None:
    """`exc` as BackendUnavailable if it means the store cannot serve now, else None."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised before SQLite was asked (a closed connection, say)
        busy = "locked" in str(exc) or "busy" in str(exc)
        return BackendUnavailable(f"SQLite: {exc}") if busy else None
    if code & 0xFF not in UNAVAILABLE_CODES:
        return None
    return BackendUnavailable(f"SQLite: {exc}")


def _unavailable(exc: sqlite3.Error) -> BackendUnavailable:
    return unavailable(exc) or BackendUnavailable(f"SQLite: {exc}")


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced."""


class Sightings:
    """How long a value in the store (a worker's last beat, a leader's lease) has gone unchanged,
    on this process's monotonic clock.

    SQLite has no clock of its own: every process stamps times with its own wall clock, which
    can be off, or jump. So whether a worker is alive is judged by its beat being seen to
    change, never by comparing one process's wall time with another's. A value seen for the
    first time counts as just changed: a newcomer gives everyone one lease of doubt.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._seen: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def unchanged_for(self, key: str, value: Any) -> float:
        """Seconds since `key` was last seen with another value (0: it just changed)."""
        now = self._monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen[0] != value:
                self._seen[key] = (value, now)
                return 0.0
            return now - seen[1]

    def workers(self, beats: Iterable[sqlite3.Row]) -> dict[str, tuple[float, float]]:
        """Per registered worker: its last beat as stored, and how long it has not changed."""
        return {
            r["id"]: (r["last_beat"], self.unchanged_for(f"worker:{r['id']}", r["last_beat"]))
            for r in beats
        }


class SqliteStore:
    """Every operation of the SQLite backend as a blocking call, safe to use from any thread."""

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._settings = settings
        self._clock = clock
        self._local = threading.local()
        # Weak, so a connection of a thread that has ended goes with the thread.
        self._all: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._checked = False
        self._sightings = Sightings(lambda: monotonic(self._clock))

    def use_clock(self, clock: Clock) -> None:
        self._clock = clock

    # -- connections and transactions -------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection with conveyor's pragmas (callers own it)."""
        parent = Path(self.path).parent
        if not parent.exists():
            raise ConfigurationError(f"{self.url!r}: folder {str(parent)!r} does not exist")
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.row_factory = sqlite3.Row
        try:
            tables = {row[0] for row in conn.execute(Q.list_tables)}
        except sqlite3.DatabaseError as exc:
            conn.close()
            if (error := unavailable(exc)) is not None:
                raise error from exc
            raise NotAConveyorDatabase(f"{self.path!r} is not a SQLite database ({exc})") from None
        if tables and "conveyor_migrations" not in tables:
            # Checked before any pragma: a file that is not ours is left exactly as it was.
            conn.close()
            shown = ", ".join(sorted(tables)[:5])
            raise NotAConveyorDatabase(
                f"{self.path!r} holds other tables ({shown}) and no conveyor schema; "
                "give conveyor a database file of its own"
            )
        self._use_wal(conn)
        try:
            conn.execute(f"PRAGMA synchronous = {self._settings.sqlite_synchronous}")
            # Statement journals (for triggers) in memory: on disk they cost a temp file a write.
            conn.execute("PRAGMA temp_store = MEMORY")
            # Finishing a job releases (or cancels) the jobs waiting on it, whose finishing does
            # the same in turn: a trigger that fires itself through another table.
            conn.execute("PRAGMA recursive_triggers = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise _unavailable(exc) from exc
        with self._lock:
            self._all.add(conn)
        return conn

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch a new file to WAL. Connections opening a fresh file at once race for the
        switch, and SQLite answers the losers "database is locked" without waiting: try again
        for as long as a busy wait would."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.Error as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise _unavailable(exc) from exc
            time.sleep(0.01)

    def _conn(self, check: bool = True) -> sqlite3.Connection:
        """This thread's connection; the first use checks (and maybe migrates) the schema."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        if check and not self._checked:
            try:
                self._check_schema(conn)
            except sqlite3.Error as exc:
                if (error := unavailable(exc)) is not None:
                    raise error from exc
                raise
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (`BEGIN IMMEDIATE`: the only writer). Errors that mean the
        file cannot serve now (busy, disk full, I/O) are BackendUnavailable; nothing of the
        transaction stays."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if (error := unavailable(exc)) is not None:
                raise error from exc
            raise

    def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if (error := unavailable(exc)) is not None:
                raise error from exc
            raise

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # -- schema -----------------------------------------------------------------------------

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute(Q.list_tables)}
        applied = [r[0] for r in conn.execute(Q.applied_migrations)] if tables else []
        known = MIGRATIONS[-1].version
        if applied and applied[-1] > known:
            raise ConfigurationError(
                f"{self.path!r} has schema version {applied[-1]}, newer than this conveyor "
                f"knows ({known}); upgrade conveyor"
            )
        if len(applied) < known:
            if self._settings.auto_migrate is False:
                raise ConfigurationError(
                    f"{self.path!r} needs migrations {len(applied) + 1}..{known}: "
                    "run `conveyor migrate` (or pass auto_migrate=True)"
                )
            self._migrate(conn)
        self._checked = True

    def _migrate(self, conn: sqlite3.Connection) -> list[int]:
        applied_now: list[int] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        try:
            conn.execute(Q.create_migrations_table)
            done = {r[0] for r in conn.execute(Q.applied_migrations)}
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                for statement in _statements(migration.up):
                    conn.execute(statement)
                conn.execute(
                    Q.record_migration, (migration.version, migration.name, self._clock.now())
                )
                applied_now.append(migration.version)
            conn.execute("COMMIT")
        except BaseException as exc:
            _rollback(conn)
            if (error := unavailable(exc)) is not None:
                raise error from exc
            raise
        return applied_now

    def migrate(self) -> list[int]:
        applied = self._migrate(self._conn(check=False))
        self._checked = True
        return applied

    def migrate_down(self, to_version: int) -> list[int]:
        """Undo migrations above `to_version` (0 removes the whole schema)."""
        conn = self._conn()
        undone: list[int] = []
        with self._write():
            done = [r[0] for r in conn.execute(Q.applied_migrations)]
            for migration in reversed(MIGRATIONS):
                if migration.version in done and migration.version > to_version:
                    for statement in _statements(migration.down):
                        conn.execute(statement)
                    conn.execute(Q.forget_migration, (migration.version,))
                    undone.append(migration.version)
        return undone

    def latest_version(self) -> int:
        return MIGRATIONS[-1].version

    def schema_version(self) -> int:
        rows = self._read(Q.applied_migrations)
        return rows[-1][0] if rows else 0

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        if connection is not None:
            raise ValidationError(
                "enqueue inside your own transaction (connection=...) needs PostgreSQL"
            )
        if not jobs:
            return []
        with self._write() as conn:
            return self._insert(conn, jobs)

    def _insert(self, conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> list[Job]:
        waiting = [i for i, j in enumerate(jobs) if j.waits]
        plain = not waiting and all(
            j.unique_key is None and not j.limited and j.circuit is None for j in jobs
        )
        rows: list[tuple[Any, ...]]
        if plain:
            rows = [
                (j.queue, j.task, j.args, j.kwargs, j.meta, j.priority, j.state.value,
                 j.max_attempts, j.run_at, j.created_at, j.created_at)
                for j in jobs
            ]  # fmt: skip
        else:
            named = _ids_json({d for i in waiting for d in jobs[i].depends_on})
            found = conn.execute(Q.dependency_depths, {"ids": named}).fetchall()
            depths = dependency_depths(jobs, {r[0]: r[1] for r in found})
            rows = [
                (j.queue, j.task, j.args, j.kwargs, j.meta, j.priority, j.state.value,
                 j.max_attempts, j.run_at, j.created_at, j.created_at, j.unique_key,
                 j.on_dependency_failure, depth, j.concurrency_key, j.concurrency_max,
                 j.rate_key, j.rate_max, j.rate_period, j.circuit)
                for j, depth in zip(jobs, depths, strict=True)
            ]  # fmt: skip
        if any(j.unique_key is not None for j in jobs):
            stored = self._enqueue_unique(conn, jobs, rows)
        else:
            insert = Q.insert_job if plain else Q.insert_job_full
            stored = self._insert_plain(conn, jobs, rows, insert)
        if waiting:
            self._add_dependencies(conn, jobs, stored, waiting)
        return stored

    def _add_dependencies(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], stored: list[Job],
        waiting: list[int],
    ) -> None:  # fmt: skip
        """Record what the waiting jobs wait for, let the trigger look at them at once (some
        dependencies may have finished already), and read back where that left them."""
        new = [i for i in waiting if not stored[i].deduplicated]
        conn.executemany(
            Q.insert_dependency,
            [(stored[i].id, d) for i in new for d in _dependency_ids(jobs[i], stored)],
        )
        ids = _ids_json(stored[i].id for i in new)
        conn.execute(Q.touch_dependencies, {"ids": ids})
        now = {r["id"]: Job.from_row(r) for r in conn.execute(Q.get_jobs, {"ids": ids})}
        for i in new:
            stored[i] = now[stored[i].id]

    def _insert_plain(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], rows: list[tuple[Any, ...]],
        insert: str,
    ) -> list[Job]:  # fmt: skip
        if len(rows) == 1:
            conn.execute(insert, rows[0])
        else:
            conn.executemany(insert, rows)
        last = conn.execute(Q.last_insert_id).fetchone()[0]
        # AUTOINCREMENT under BEGIN IMMEDIATE (one writer) hands out consecutive ids.
        first = last - len(rows) + 1
        conn.execute(Q.record_enqueued, {"first": first, "last": last})
        return [j.stored_as(first + i) for i, j in enumerate(jobs)]

    def _enqueue_unique(
        self, conn: sqlite3.Connection, jobs: Sequence[NewJob], rows: list[tuple[Any, ...]]
    ) -> list[Job]:
        """Jobs one by one, each with a key looked up first (this transaction is the only
        writer, so nothing can take the key between the look-up and the insert)."""
        stored: list[Job] = []
        inserted: list[int] = []
        for new, row in zip(jobs, rows, strict=True):
            if new.unique_key is not None:
                holder = self._find_unique(conn, new.unique_key, new.finished_since)
                if holder is not None:
                    holder.deduplicated = True
                    stored.append(holder)
                    continue
            inserted.append(conn.execute(Q.insert_job_full, row).lastrowid or 0)
            stored.append(new.stored_as(inserted[-1]))
        if inserted:
            conn.execute(Q.record_enqueued, {"first": inserted[0], "last": inserted[-1]})
        return stored

    @staticmethod
    def _find_unique(conn: sqlite3.Connection, key: str, since: float | None) -> Job | None:
        row = conn.execute(Q.find_unique, {"key": key, "since": since}).fetchone()
        return None if row is None else Job.from_row(row)

    def find_unique(self, key: str) -> Job | None:
        rows = self._read(Q.find_unique, {"key": key, "since": None})
        return Job.from_row(rows[0]) if rows else None

    # -- the worker's hot path --------------------------------------------------------------

    def claim(
        self, worker_id: str, queues: Sequence[str] | None, limit: int, lease_until: float,
        now: float,
    ) -> list[Job]:  # fmt: skip
        params: dict[str, Any] = {
            "worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit,
        }  # fmt: skip
        with self._write() as conn:
            conn.execute(Q.promote_due, {"now": now})
            if conn.execute(Q.limits_present).fetchone()[0]:
                rows = self._claim_limited(conn, queues, params)
            elif queues is None:
                rows = conn.execute(Q.claim, params).fetchall()
            elif len(queues) == 1:
                rows = conn.execute(Q.claim_in_queue, {**params, "queue": queues[0]}).fetchall()
            else:
                # Each queue's best candidates come from its own index; the best of those win.
                candidates = sorted(
                    (row["priority"], row["run_at"], row["id"])
                    for queue in queues
                    for row in conn.execute(Q.claim_candidates, {"queue": queue, "limit": limit})
                )[:limit]
                params["ids"] = _ids_json(c[2] for c in candidates)
                rows = conn.execute(Q.claim_ids, params).fetchall()
        jobs = [Job.from_row(r) for r in rows]
        jobs.sort(key=lambda j: (j.priority, j.run_at, j.id))
        return jobs

    def _claim_limited(
        self, conn: sqlite3.Connection, queues: Sequence[str] | None, params: dict[str, Any]
    ) -> list[sqlite3.Row]:
        """The claim when limits are in play: the best plain jobs, and per queue or bucket
        with room the best of its jobs, merged by `pick` (this transaction is the only writer,
        so the counts cannot change under it)."""
        limit, now = params["limit"], params["now"]
        mine = None if queues is None else _json_list(queues)
        if queues is None:
            found = conn.execute(Q.plain_candidates, {"limit": limit}).fetchall()
        else:
            found = [
                row
                for queue in queues
                for row in conn.execute(Q.claim_candidates, {"queue": queue, "limit": limit})
            ]
        queue_free = {
            r["name"]: r["free"]
            for r in conn.execute(Q.limited_queues)
            if queues is None or r["name"] in queues
        }
        for queue, free in queue_free.items():
            if free > 0:
                wanted = {"queue": queue, "limit": min(free, limit)}
                found += conn.execute(Q.limited_queue_candidates, wanted).fetchall()
        circuit_free = {r["name"]: r["free"] for r in conn.execute(Q.half_open_circuits)}
        for circuit, free in circuit_free.items():
            if free > 0:
                wanted = {"circuit": circuit, "queues": mine, "limit": min(free, limit)}
                found += conn.execute(Q.circuit_candidates, wanted).fetchall()
        used: dict[str, dict[str, int]] = {}
        for kind, buckets, candidates in (
            ("concurrency", Q.concurrency_buckets, Q.concurrency_candidates),
            ("rate", Q.rate_buckets, Q.rate_candidates),
        ):
            rows = conn.execute(buckets, {"now": now}).fetchall()
            used[kind] = {b["key"]: b["used"] for b in rows}
            # The best `limit` jobs that fit lie in at most `limit` buckets: those with room
            # whose heads come first. Only theirs are fetched.
            for b in best_buckets(rows, limit):
                wanted = {
                    "key": b["key"],
                    "queues": mine,
                    "limit": min(b["max"] - b["used"], limit),
                }
                found += conn.execute(candidates, wanted).fetchall()
        ids = pick(
            (Candidate.from_row(r) for r in found), limit, queue_free=queue_free,
            running=used["concurrency"], started=used["rate"], circuit_free=circuit_free,
        )  # fmt: skip
        if not ids:
            return []
        rows = conn.execute(Q.claim_ids, {**params, "ids": _ids_json(ids)}).fetchall()
        conn.execute(Q.prune_rate_starts, {"now": now})
        conn.execute(Q.record_rate_starts, {"now": now, "ids": _ids_json(ids)})
        return rows

    def complete(self, outcomes: Sequence[Outcome]) -> list[int]:
        if not outcomes:
            return []
        applied: list[int] = []
        leftovers: list[int] = []
        with self._write() as conn:
            for o in outcomes:
                cursor = conn.execute(
                    Q.complete,
                    {
                        "job_id": o.job_id,
                        "worker_id": o.worker_id,
                        "attempt": o.attempt,
                        "state": o.state.value,
                        "result": o.result,
                        "error": None if o.error is None else json.dumps(o.error),
                        "run_at": o.run_at,
                        "refund": 1 if o.refunds_attempt else 0,
                        "finished_at": o.at if o.state.is_finished else None,
                        "at": o.at,
                        "note": o.note,
                        "lease_expired_before": o.lease_expired_before,
                        "leader": o.leader,
                    },
                )
                if cursor.rowcount:
                    applied.append(o.job_id)
                    if not o.state.is_finished:
                        leftovers.append(o.job_id)
            if leftovers:
                now = max(o.at for o in outcomes)
                conn.execute(
                    Q.cancel_requested_leftovers, {"ids": _ids_json(leftovers), "now": now}
                )
        return applied

    def heartbeat(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Beat:
        ids = sorted({job_id for job_id, _ in running})
        with self._write() as conn:
            conn.execute(
                Q.upsert_worker,
                {
                    "id": worker.id, "host": worker.host, "pid": worker.pid,
                    "queues": _json_list(worker.queues), "concurrency": worker.concurrency,
                    "started_at": worker.started_at, "last_beat": worker.last_beat,
                    "running": _ids_json(ids),
                },
            )  # fmt: skip
            extended: set[tuple[int, int]] = set()
            if running:
                rows = conn.execute(
                    Q.extend_leases,
                    {
                        "lease_until": lease_until, "worker_id": worker.id,
                        "ids": _ids_json(ids),
                        "attempts": json.dumps([f"{i}:{a}" for i, a in running]),
                    },
                ).fetchall()  # fmt: skip
                extended = {(r["id"], r["attempt"]) for r in rows}
            mine = conn.execute(Q.running_of_worker, {"worker_id": worker.id}).fetchall()
            # Every beat also looks at everyone else's: the liveness the leader judges by.
            self._sightings.workers(conn.execute(Q.worker_beats))
        return Beat.read(extended, running, mine)

    def deregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(Q.delete_worker, (worker_id,))

    def prune_workers(self, older_than: float, now: float) -> int:
        """Forget workers whose beat has not changed for `older_than` seconds, as this process
        has seen it (not by their wall clocks: a clock ahead would forget live workers)."""
        quiet = self._sightings.workers(self._read(Q.worker_beats))
        gone = [wid for wid, (_, silent) in quiet.items() if silent >= older_than]
        if not gone:
            return 0
        with self._write() as conn:
            return conn.execute(Q.prune_workers, {"ids": json.dumps(gone)}).rowcount

    def find_expired(self, now: float, limit: int) -> list[Job]:
        """Running jobs whose worker is lost: not seen to beat for a whole lease (of the job:
        the worker's own lease setting, and never less than this App's). A job whose lease ran
        out by this process's clock is one only if its worker is not seen beating either (a
        clock ahead would otherwise take every job); a job of a worker seen to stop beating is
        one whatever its lease says (that worker's clock may have been behind). Jobs of
        workers without a row (gone without a word) go by their lease alone."""
        beats = self._sightings.workers(self._read(Q.worker_beats))
        own_lease = self._settings.lease_seconds

        def lost(job: Job) -> bool:
            if job.worker_id not in beats:
                return True
            last_beat, silent = beats[job.worker_id]
            lease = max(own_lease, (job.lease_until or 0.0) - last_beat)
            return silent >= lease

        expired = {
            job.id: job
            for job in map(Job.from_row, self._read(Q.find_expired, {"now": now, "limit": limit}))
            if lost(job)
        }
        quiet = [wid for wid, (_, silent) in beats.items() if silent >= own_lease]
        if quiet:
            params = {"workers": json.dumps(quiet), "limit": limit}
            for job in map(Job.from_row, self._read(Q.find_running_of, params)):
                if lost(job):
                    expired.setdefault(job.id, job)
        return sorted(expired.values(), key=lambda j: j.lease_until or 0.0)[:limit]

    def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        """The leadership is a row its holder renews; another takes it over once it has watched
        the row go unrenewed for a whole lease (`until - now`), on its own monotonic clock —
        not by comparing the row's time with its own wall clock, which may be off."""
        row = {"name": name, "holder": holder, "until": until}
        with self._write() as conn:
            found = conn.execute(Q.get_leader, {"name": name}).fetchone()
            if found is not None and found["holder"] != holder:
                renewed = (found["holder"], found["until"])
                if self._sightings.unchanged_for(f"leader:{name}", renewed) < until - now:
                    return False
            conn.execute(Q.put_leader, row)
        return True

    def resign(self, name: str, holder: str) -> None:
        with self._write() as conn:
            conn.execute(Q.resign, (name, holder))

    def next_due_in(self, queues: Sequence[str] | None, now: float) -> float | None:
        if queues is None:
            rows = self._read(Q.next_run_at)
        else:
            rows = self._read(Q.next_run_at_in_queues, {"queues": _json_list(queues)})
        value = rows[0][0]
        return None if value is None else float(value) - now

    def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool:  # fmt: skip
        params = {
            "job_id": job_id, "worker_id": worker_id, "attempt": attempt, "progress": progress,
            "stage": stage, "message": message, "now": now,
        }  # fmt: skip
        with self._write() as conn:
            if conn.execute(Q.set_progress, params).rowcount == 0:
                return False
            conn.execute(Q.record_progress, params)
            return True

    def subscribe(self) -> SyncWatch:
        return SyncWatch(self)

    def event_cursor(self) -> Cursor:
        [row] = self._read(Q.event_cursor)
        return Cursor(row["history"], row["progress"])

    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        where = {"job_id": job_id, "queue": queue, "limit": limit}
        history = self._read(Q.history_events, {**where, "after": after.history})
        progress = self._read(Q.progress_events, {**where, "after": after.progress})
        return merge(history, progress, after)

    def prune_progress(self, older_than: float, now: float) -> int:
        with self._write() as conn:
            return conn.execute(Q.prune_progress, {"before": now - older_than}).rowcount

    def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        tick_key = {"name": name, "tick": tick}
        with self._write() as conn:
            recorded = conn.execute(Q.record_tick, {**tick_key, "now": now, "leader": leader})
            if recorded.rowcount == 0 or not job:
                return None
            [stored] = self._insert(conn, [job])
            conn.execute(Q.set_tick_job, {**tick_key, "job_id": stored.id})
        return stored

    def prune_ticks(self, older_than: float, now: float) -> int:
        with self._write() as conn:
            return conn.execute(Q.prune_ticks, {"before": now - older_than}).rowcount

    # -- reading and steering ---------------------------------------------------------------

    def periodic_ticks(self) -> dict[str, TickRecord]:
        return {r["name"]: TickRecord.from_row(r) for r in self._read(Q.periodic_ticks)}

    def get_job(self, job_id: int) -> Job | None:
        rows = self._read(Q.get_job, (job_id,))
        return Job.from_row(rows[0]) if rows else None

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
        params = {
            "queue": queue, "task": task, "limit": limit, "before_id": before_id,
            "error_type": error_type, "after_id": after_id,
            "contains": None if contains is None else contains.lower(),
        }  # fmt: skip
        if states is None:
            rows = self._read(Q.list_jobs, params)
        else:
            params["states"] = _json_list([s.value for s in states])
            rows = self._read(Q.list_jobs_in_states, params)
        return [Job.from_row(r) for r in rows]

    def job_history(self, job_id: int) -> list[HistoryEntry]:
        return [HistoryEntry.from_row(r) for r in self._read(Q.job_history, (job_id,))]

    def queue_stats(
        self, states: Iterable[JobState] | None = None
    ) -> dict[str, dict[JobState, int]]:
        stats: dict[str, dict[JobState, int]] = {}
        if states is None:
            rows = self._read(Q.queue_stats)
        else:
            rows = self._read(
                Q.queue_stats_in_states, {"states": _json_list([s.value for s in states])}
            )
        for row in rows:
            stats.setdefault(row["queue"], {})[JobState(row["state"])] = row["n"]
        return stats

    def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        return [DeadGroup.from_row(r) for r in self._read(Q.dead_groups, {"queue": queue})]

    def finished_counts(self, since: float, bucket: int) -> list[FinishedCount]:
        rows = self._read(Q.finished_counts, {"since": since, "bucket": bucket})
        return [FinishedCount.from_row(r) for r in rows]

    def queued_since(self) -> dict[str, float]:
        return {r["queue"]: r["since"] for r in self._read(Q.queued_since)}

    def list_workers(self) -> list[WorkerInfo]:
        return [WorkerInfo.from_row(r) for r in self._read(Q.list_workers)]

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> bool:
        with self._write() as conn:
            if paused:
                return conn.execute(Q.pause_queue, {"name": queue, "now": now}).rowcount == 1
            return conn.execute(Q.resume_queue, {"name": queue}).rowcount == 1

    def paused_queues(self) -> list[str]:
        return [r["name"] for r in self._read(Q.paused_queues)]

    def revoke_session(self, nonce: str, until: float, now: float) -> None:
        with self._write() as conn:
            conn.execute(Q.forget_revoked_sessions, {"now": now})
            conn.execute(Q.revoke_session, {"nonce": nonce, "until": until})

    def session_revoked(self, nonce: str) -> bool:
        return bool(self._read(Q.session_revoked, {"nonce": nonce}))

    def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None:  # fmt: skip
        if action is not Action.FAILURE:
            found = self._read(Q.get_circuit, {"name": name})
            if not found or (found[0]["state"] == "closed" and found[0]["failures"] == 0):
                return None  # nothing to change: no write
        with self._write() as conn:
            found = conn.execute(Q.get_circuit, {"name": name}).fetchall()
            before = CircuitRow.from_row(found[0]) if found else CircuitRow()
            after, event = transition(
                before, action, now, threshold=threshold, reason=reason,
                half_open_jobs=half_open_jobs,
            )  # fmt: skip
            if after == before:
                return None
            conn.execute(Q.put_circuit, after.params(name))
            if event is None:
                return None
            # opening: the jobs failing now are held too; else: the jobs still to run
            count = {"name": name, "running": event == "opened"}
            held = conn.execute(Q.held_by_circuit, count).fetchone()[0]
            change = CircuitEvent.after(name, before, after, event, now, held)
            conn.execute(Q.log_circuit, change.params())
        return change

    def backlog(self, queue: str, now: float) -> tuple[int, float | None]:
        [row] = self._read(Q.backlog, {"queue": queue})
        return row["depth"], None if row["since"] is None else max(now - row["since"], 0.0)

    def claim_alert(self, key: str, every: float, now: float) -> bool:
        with self._write() as conn:
            params = {"key": key, "every": every, "now": now}
            return conn.execute(Q.claim_alert, params).rowcount == 1

    def record_probe(self, name: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(Q.record_probe, {"name": name, "now": now})

    def circuits(self) -> list[CircuitInfo]:
        return [CircuitInfo.from_row(r) for r in self._read(Q.list_circuits)]

    def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        rows = self._read(Q.circuit_log, {"name": name, "limit": limit})
        return [CircuitEvent.from_row(r) for r in rows]

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        with self._write() as conn:
            conn.execute(Q.set_queue_concurrency, {"name": queue, "concurrency": concurrency})

    def queue_limits(self) -> dict[str, int]:
        return {r["name"]: r["concurrency"] for r in self._read(Q.queue_limits)}

    def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        mine = None if queues is None else _json_list(queues)
        [row] = self._read(Q.held_back, {"queues": mine, "now": now})
        if not row["held"]:
            return None
        return math.inf if row["opens"] is None else max(float(row["opens"]) - now, 0.0)

    def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        params = {"job_id": job_id, "now": now, "note": note}
        with self._write() as conn:
            if conn.execute(Q.cancel_pending, params).rowcount == 0:
                conn.execute(Q.request_cancel, {"job_id": job_id, "note": note})
            row = conn.execute(Q.get_job, (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

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
            "states": _json_list([s.value for s in states]), "queue": queue, "task": task,
            "now": now, "note": note,
        }  # fmt: skip
        with self._write() as conn:
            return conn.execute(Q.cancel_jobs, params).rowcount

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
            "ids": None if job_ids is None else _ids_json(job_ids),
            "states": _json_list([s.value for s in states]),
            "queue": queue, "task": task, "now": now, "note": note,
        }  # fmt: skip
        with self._write() as conn:
            return [r[0] for r in conn.execute(Q.retry_jobs, params).fetchall()]

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
        params = {
            "states": _json_list([s.value for s in states]),
            "before": now - older_than, "queue": queue, "task": task,
            "ids": None if job_ids is None else _ids_json(job_ids),
        }  # fmt: skip
        with self._write() as conn:
            conn.execute(Q.purge_history, params)
            return conn.execute(Q.purge, params).rowcount

    def data_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(Q.data_version).fetchone()[0])


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not done so itself (it does on a full disk or
    an I/O error): a second ROLLBACK would fail and hide the error that matters."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        # The connection is no good now; the error being raised is the one to report.
        log.warning("sqlite.rollback_failed", error=str(exc))


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


class SqliteBackend(Backend):
    """The async face of `SqliteStore`: each call runs on one dedicated database thread."""

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.store = SqliteStore(url, settings, clock)
        self.sync = self.store
        self._executor: ThreadPoolExecutor | None = None
        self._watch: Watch | None = None

    def use_clock(self, clock: Clock) -> None:
        self.store.use_clock(clock)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def migrate(self) -> list[int]:
        return await self._run(self.store.migrate)

    async def close(self) -> None:
        if self._executor is not None:
            await self._run(self.store.close)
            self._executor.shutdown(wait=True)
            self._executor = None
        self.store.close()
        self._watch = None

    async def release(self) -> None:
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._executor is not None:
            # Its thread exits once idle; a call still in it is not waited for (the next call
            # makes a new one).
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)

    async def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        return await self._run(self.store.enqueue, jobs, connection)

    async def get_job(self, job_id: int) -> Job | None:
        return await self._run(self.store.get_job, job_id)

    async def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        return await self._run(self.store.cancel_job, job_id, now, note)

    async def claim(
        self, worker_id: str, queues: Sequence[str] | None, limit: int, lease_until: float,
        now: float,
    ) -> list[Job]:  # fmt: skip
        return await self._run(self.store.claim, worker_id, queues, limit, lease_until, now)

    async def complete(self, outcomes: Sequence[Outcome]) -> list[int]:
        return await self._run(self.store.complete, outcomes)

    async def heartbeat(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Beat:
        return await self._run(self.store.heartbeat, worker, running, lease_until)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._run(self.store.deregister_worker, worker_id)

    async def find_expired(self, now: float, limit: int) -> list[Job]:
        return await self._run(self.store.find_expired, now, limit)

    async def prune_workers(self, older_than: float, now: float) -> int:
        return await self._run(self.store.prune_workers, older_than, now)

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        return await self._run(self.store.try_lead, name, holder, until, now)

    async def resign(self, name: str, holder: str) -> None:
        await self._run(self.store.resign, name, holder)

    async def next_due_in(self, queues: Sequence[str] | None, now: float) -> float | None:
        return await self._run(self.store.next_due_in, queues, now)

    async def purge(self, *, states: Iterable[JobState], older_than: float, now: float) -> int:
        return await self._run(
            lambda: self.store.purge(states=states, older_than=older_than, now=now)
        )

    async def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        return await self._run(self.store.held_back, queues, now)

    async def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None:  # fmt: skip
        return await self._run(
            lambda: self.store.change_circuit(
                name, action, now, threshold=threshold, reason=reason,
                half_open_jobs=half_open_jobs,
            )
        )  # fmt: skip

    async def record_probe(self, name: str, now: float) -> None:
        await self._run(self.store.record_probe, name, now)

    async def circuits(self) -> list[CircuitInfo]:
        return await self._run(self.store.circuits)

    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        await self._run(self.store.set_queue_concurrency, queue, concurrency)

    async def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool:  # fmt: skip
        return await self._run(
            self.store.set_progress, job_id, worker_id, attempt, progress, stage, message, now
        )

    async def event_cursor(self) -> Cursor:
        return await self._run(self.store.event_cursor)

    async def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        return await self._run(self.store.read_events, after, job_id, queue, limit)

    async def prune_progress(self, older_than: float, now: float) -> int:
        return await self._run(self.store.prune_progress, older_than, now)

    async def subscribe(self) -> Watch:
        watch = Watch(self.store)
        await watch.start(self._run)
        return watch

    async def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        return await self._run(self.store.fire_periodic, name, tick, job, now, leader)

    async def periodic_ticks(self) -> dict[str, TickRecord]:
        return await self._run(self.store.periodic_ticks)

    async def prune_ticks(self, older_than: float, now: float) -> int:
        return await self._run(self.store.prune_ticks, older_than, now)

    async def wait_for_change(self, timeout: float) -> None:
        if self._watch is None:
            self._watch = Watch(self.store)
            await self._watch.start(self._run)
        await self._watch.wait(timeout)


class DataVersion:
    """A connection of its own whose `PRAGMA data_version` changes whenever any other
    connection, in this process or another, commits (a read of the WAL's shared memory)."""

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self._conn: sqlite3.Connection | None = conn
        self._seen = store.data_version(conn)

    def changed(self) -> bool:
        """Whether someone committed since the last look (True when it cannot tell)."""
        if self._conn is None:
            return True
        try:
            version = self.store.data_version(self._conn)
        except sqlite3.OperationalError:
            return True
        if version == self._seen:
            return False
        self._seen = version
        return True

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class SyncWatch:
    """Waits, blocking, for a commit elsewhere: for one waiter (`job.wait()`)."""

    def __init__(self, store: SqliteStore) -> None:
        self._version = DataVersion(store, store.connect())

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._version.changed():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(WATCH_INTERVAL_S, remaining))

    def close(self) -> None:
        self._version.close()


class Watch:
    """Waits for a commit elsewhere, on the event loop: for the worker, or one subscriber."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._version: DataVersion | None = None

    async def start(self, run: Callable[..., Any]) -> None:
        self._version = DataVersion(self.store, await run(self.store.connect))

    async def wait(self, timeout: float) -> None:
        assert self._version is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._version.changed():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(WATCH_INTERVAL_S, remaining))

    async def close(self) -> None:
        if self._version is not None:
            self._version.close()


def _dependency_ids(job: NewJob, stored: Sequence[Job]) -> list[int]:
    """The ids a new job waits for: those it named, and those of the jobs of its own enqueue
    call it named by position."""
    return [*job.depends_on, *(stored[p].id for p in job.depends_on_batch)]
