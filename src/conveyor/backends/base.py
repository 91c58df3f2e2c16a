"""The backend seam: one list of operations (`Operations`), and what a backend provides to run
them (`Engine`).

Domain decisions (whether to retry, when, what counts as lost, what an outcome writes) are made
above this seam, once; a backend only writes them, atomically, with the duties `Operations`
lists. The faces that callers use (`Store`, blocking; `Backend`, async) are generic: see
`conveyor.backends.faces`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from conveyor.backends.plan import Call
from conveyor.circuit import Action, CircuitEvent, CircuitInfo
from conveyor.clock import Clock
from conveyor.cron import TickRecord
from conveyor.errors import ValidationError
from conveyor.events import Cursor, Event
from conveyor.job import (
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    NewJob,
    Outcome,
    Start,
    WorkerInfo,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Beat:
    """What a heartbeat learned: which of the worker's attempts got a new lease (the others
    were taken from it: rescued, or finished elsewhere), which jobs someone asked to cancel, and
    which attempts the store has running under the worker that it did not name (claimed for it
    by a claim whose answer never reached it)."""

    extended: set[tuple[int, int]]
    cancel: set[int]
    unknown: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def read(
        cls,
        extended: Iterable[Mapping[str, Any]],
        named: Iterable[tuple[int, int]],
        running: Iterable[Mapping[str, Any]] | None,
    ) -> Beat:
        """From the store's rows (id, attempt, cancel_requested) of the named attempts it renewed
        and, if it was asked, of everything it runs under the worker."""
        rows = [(int(r["id"]), int(r["attempt"]), bool(r["cancel_requested"])) for r in extended]
        under = [] if running is None else [(int(r["id"]), int(r["attempt"])) for r in running]
        return cls(
            extended={(job_id, attempt) for job_id, attempt, _ in rows},
            cancel={job_id for job_id, _, cancel in rows if cancel},
            unknown=set(under) - set(named),
        )


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs an operation is about: listing, cancelling, retrying and purging all take
    one. `None` means "any"; `states` and `ids` are sets to match."""

    states: frozenset[JobState] | None = None
    queue: str | None = None
    task: str | None = None
    ids: tuple[int, ...] | None = None
    #: the type of the job's last error ("TimeoutError")
    error_type: str | None = None
    #: ASCII text in the task name or the stored arguments, ignoring case
    contains: str | None = None
    #: only ids below / above these (both excluded): paging
    before_id: int | None = None
    after_id: int | None = None

    @classmethod
    def of(
        cls,
        states: Iterable[JobState] | None = None,
        ids: Iterable[int] | None = None,
        **fields: Any,
    ) -> JobFilter:
        return cls(
            states=None if states is None else frozenset(states),
            ids=None if ids is None else tuple(int(i) for i in ids),
            **fields,
        )

    def bulk(self, action: str) -> JobFilter:
        """The filter, checked for a bulk change (one statement): states, queue, task and ids
        only — a narrower filter must not be widened by being ignored."""
        unsupported = [
            name
            for name in ("error_type", "contains", "before_id", "after_id")
            if getattr(self, name) is not None
        ]
        if unsupported:
            raise ValidationError(
                f"{action} filters by state, queue, task and ids only, not by "
                f"{', '.join(unsupported)}"
            )
        if not self.states:
            raise ValidationError(f"{action} needs the states of the jobs it changes")
        return self

    @property
    def state_names(self) -> list[str] | None:
        """The states as stored, in a stable order."""
        return None if self.states is None else sorted(s.value for s in self.states)


class Operations(abc.ABC):
    """Every operation on a store, declared once, as a `Call` (a plan and how to run it).

    A backend implements this list; the generic faces in `conveyor.backends.faces` run each
    call blocking (`Store`, for the sync API) or async (`Backend`, for workers and services).
    `now` is the caller's clock; a store with a clock of its own (PostgreSQL) uses its own
    unless the App was given a clock (tests).

    What a backend must do atomically, with each operation that changes a job's state (on SQL
    stores, triggers carry these duties; a store without triggers does them in the same
    transaction or script):

    - **history**: every state change writes a history row (job, time, from, to, worker, note),
      and nothing else does; the pairs written are exactly `job.TRANSITIONS`;
    - **dependents**: a job that succeeds releases the jobs waiting only on it (`waiting` →
      `queued`); one that ends dead or cancelled cancels its dependents (or releases them, as
      their `on_dependency_failure` says), on down the chain;
    - **counts**: the per-queue, per-state counts the dashboard reads stay exact;
    - **wake-ups**: a job becoming runnable wakes idle workers of its queue (`wait_for_change`
      returns), and every state change or progress report wakes event subscribers;
    - **fencing**: an outcome, heartbeat or progress report applies only to the very attempt
      still running under that worker; a rescue or cron record decided by a leader applies
      only while that leader still leads.
    """

    #: the newest migration this conveyor knows for the store
    latest_version: int

    @abc.abstractmethod
    def migrate(self, down_to: int | None = None) -> Call[list[int]]:
        """Apply pending migrations (or, with `down_to`, undo those above it; 0 removes the
        whole schema); the versions changed."""

    @abc.abstractmethod
    def schema_version(self) -> Call[int]:
        """The newest migration applied to the store (0: none)."""

    @abc.abstractmethod
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> Call[list[Job]]:
        """Insert the jobs in one transaction, all or none; with `connection`, inside the
        caller's own transaction (where the backend supports it)."""

    @abc.abstractmethod
    def get_job(self, job_id: int) -> Call[Job | None]: ...

    @abc.abstractmethod
    def list_jobs(self, where: JobFilter, limit: int) -> Call[list[Job]]:
        """Newest first."""

    @abc.abstractmethod
    def job_history(self, job_id: int) -> Call[list[HistoryEntry]]: ...

    @abc.abstractmethod
    def noted(self, ids: Sequence[int], prefix: str) -> Call[set[int]]:
        """The jobs among `ids` with a transition in their history whose note begins with
        `prefix`."""

    @abc.abstractmethod
    def find_unique(self, key: str) -> Call[Job | None]:
        """The unfinished job holding a unique key, if any."""

    @abc.abstractmethod
    def queue_stats(
        self, states: Iterable[JobState] | None
    ) -> Call[dict[str, dict[JobState, int]]]:
        """`{queue: {state: count}}`, of every state or only these."""

    @abc.abstractmethod
    def dead_groups(self, queue: str | None) -> Call[list[DeadGroup]]:
        """The dead jobs counted by task and type of their last error, biggest group first."""

    @abc.abstractmethod
    def finished_counts(self, since: float, bucket: int) -> Call[list[FinishedCount]]:
        """Jobs that finished at or after `since`, per queue, state and `bucket` seconds."""

    @abc.abstractmethod
    def queued_since(self) -> Call[dict[str, float]]:
        """Per queue with queued jobs, since when the oldest of them has been queued."""

    @abc.abstractmethod
    def list_workers(self) -> Call[list[WorkerInfo]]: ...

    @abc.abstractmethod
    def cancel_job(self, job_id: int, now: float, note: str) -> Call[Job | None]:
        """Cancel a job that has not started; ask a running one to stop. None if no such job."""

    @abc.abstractmethod
    def cancel_jobs(self, where: JobFilter, now: float, note: str) -> Call[int]:
        """Cancel every matching job (of states not yet started) in one statement; the count."""

    @abc.abstractmethod
    def retry_jobs(self, where: JobFilter, now: float, note: str) -> Call[list[int]]:
        """Move matching jobs back to `queued` with attempts starting again; their ids."""

    @abc.abstractmethod
    def purge(self, where: JobFilter, older_than: float, now: float) -> Call[int]:
        """Delete matching finished jobs (and their history) that finished more than
        `older_than` seconds before `now`; the count."""

    @abc.abstractmethod
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
        """Record progress of the given running attempt (and the report, for the event
        stream); False if it is no longer running."""

    @abc.abstractmethod
    def set_queue_paused(self, queue: str, paused: bool, now: float) -> Call[bool]:
        """Pause a queue (nothing new starts from it, on any worker) or resume it; False if it
        already was. Resuming wakes idle workers."""

    @abc.abstractmethod
    def paused_queues(self) -> Call[list[str]]: ...

    @abc.abstractmethod
    def revoke_session(self, nonce: str, until: float, now: float) -> Call[None]:
        """Refuse the dashboard session `nonce` from now on, in every server sharing the store;
        kept until `until` (when it would have expired anyway)."""

    @abc.abstractmethod
    def session_revoked(self, nonce: str) -> Call[bool]: ...

    @abc.abstractmethod
    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> Call[None]:
        """Let at most `concurrency` jobs of the queue run at once, cluster-wide (None: no
        limit)."""

    @abc.abstractmethod
    def queue_limits(self) -> Call[dict[str, int]]: ...

    @abc.abstractmethod
    def change_circuit(
        self,
        name: str,
        action: Action,
        now: float,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
    ) -> Call[CircuitEvent | None]:
        """Apply `action` to the circuit by `circuit.transition`, atomically; the event
        recorded if its state changed. Held jobs released wake idle workers."""

    @abc.abstractmethod
    def record_probe(self, name: str, now: float) -> Call[None]: ...

    @abc.abstractmethod
    def circuits(self) -> Call[list[CircuitInfo]]:
        """Every circuit the store has seen, with its held jobs."""

    @abc.abstractmethod
    def circuit_log(self, name: str | None, limit: int) -> Call[list[CircuitEvent]]:
        """The latest opens, half-opens and closes, newest first."""

    @abc.abstractmethod
    def backlog(self, queue: str, now: float) -> Call[tuple[int, float | None]]:
        """How many jobs are queued in `queue`, and how long the oldest has waited."""

    @abc.abstractmethod
    def claim_alert(self, key: str, every: float, now: float) -> Call[bool]:
        """Take the right to send the alert `key`: True unless it was sent within `every`
        seconds before `now`, by anyone."""

    @abc.abstractmethod
    def event_cursor(self, start: Cursor | None) -> Call[Cursor]:
        """Where the event stream ends now — or `start`, if it is a position of this stream
        and not past its end (one a client handed back to resume from)."""

    @abc.abstractmethod
    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int, progress: bool
    ) -> Call[tuple[list[Event], Cursor]]:
        """Events after `after` (of one job or queue; state changes, and progress reports if
        `progress`), in order, and the cursor after them. A cursor not of this stream is a
        ValidationError."""

    @abc.abstractmethod
    def prune_progress(self, older_than: float, now: float) -> Call[int]:
        """Forget progress reports older than that (the jobs keep their latest)."""

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int = 0,
    ) -> Call[list[Job]]:
        """Promote due scheduled/retrying jobs, then atomically move up to `limit` queued jobs
        to `running` (priority, then run_at, then id), attempt + 1, leased to the worker, not
        begun (no start time) — within every limit, circuit and pause. Up to `ahead` more may
        be claimed for the worker to hold ahead of its free slots, of jobs without limits
        only: a job held back must hold no limit's room and no rate window's start."""

    @abc.abstractmethod
    def complete(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> Call[list[int]]:
        """Write a batch of outcomes, each as `Outcome.changes` says, each only while that
        attempt of the job is still `running` under that worker (and, for rescues, its lease is
        still the one that ran out, and the rescuing leader still leads). A job whose cancel
        was asked for while it ran ends `cancelled` instead of being retried or handed back.
        With them, record when the `starts`' attempts began (under the same guard, and only
        once). The ids of the jobs whose outcome applied."""

    @abc.abstractmethod
    def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Call[Beat]:
        """Register or refresh the worker and extend the leases of its running attempts
        (`(job id, attempt)` pairs) that are still its own; with `look`, also find what the
        store runs under the worker that it did not name."""

    @abc.abstractmethod
    def deregister_worker(self, worker_id: str) -> Call[None]: ...

    @abc.abstractmethod
    def find_expired(self, now: float, limit: int) -> Call[list[Job]]:
        """Running jobs whose worker is lost: their lease ran out before `now` (on a store
        without a clock of its own, their worker has also not been seen to beat for a lease)."""

    @abc.abstractmethod
    def prune_workers(self, older_than: float, now: float) -> Call[int]:
        """Forget workers not heard from for more than `older_than` seconds."""

    @abc.abstractmethod
    def try_lead(self, name: str, holder: str, until: float, now: float) -> Call[bool]:
        """Take or keep the named leadership for `until - now` seconds; True if `holder` has
        it. A holder that does not renew in time loses it to the next that tries."""

    @abc.abstractmethod
    def resign(self, name: str, holder: str) -> Call[None]: ...

    @abc.abstractmethod
    def after_short_claim(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        """Asked by the worker after every claim that came back short, before it waits: the
        seconds until the next scheduled or retrying job in these queues is due (zero or less:
        due now; None: nothing pending). A store may do here, in the same round trip, what its
        next claim would otherwise do first (PostgreSQL promotes due jobs and looks for
        limits); zero then also means that the next claim may find more."""

    @abc.abstractmethod
    def held_back(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        """None when no queued job waits in these (unpaused) queues; else the seconds until
        the next rate window opens (infinity: none is closed; the jobs wait for a slot, or for
        another worker that is taking them)."""

    @abc.abstractmethod
    def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None
    ) -> Call[Job | None]:
        """Record that the entry's `tick` was dealt with and store `job` in the same
        transaction — unless the tick was recorded already, or `leader` no longer leads: then
        store nothing and return None. `job=None` records a tick skipped (or the first one
        seen) without a job."""

    @abc.abstractmethod
    def periodic_ticks(self) -> Call[dict[str, TickRecord]]:
        """Per periodic entry the store has seen, its latest tick and latest fired job."""

    @abc.abstractmethod
    def prune_ticks(self, older_than: float, now: float) -> Call[int]:
        """Forget ticks older than that, except each entry's latest."""


class SyncSubscription(Protocol):
    def wait(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Subscription(Protocol):
    async def wait(self, timeout: float) -> None:
        """Return soon after the event stream may have grown, or after `timeout`."""

    async def close(self) -> None: ...


class Engine(abc.ABC):
    """A backend: its operations, the drivers that run them, and its wake-ups.

    A new backend is an `Engine` subclass (with an `Operations` subclass) registered for its
    URL schemes in `conveyor.backends.BACKENDS`; the faces, the worker and everything above
    them are the same for every backend.
    """

    url: str
    ops: Operations

    @abc.abstractmethod
    def run(self, call: Call[T]) -> T:
        """Run a call, blocking. Every error that means the store cannot serve now is
        `BackendUnavailable`."""

    @abc.abstractmethod
    async def arun(self, call: Call[T]) -> T:
        """Run a call on the event loop."""

    def use_clock(self, clock: Clock) -> None:  # noqa: B027 - most backends need nothing
        """The App's clock changed (tests freeze time after the backend was opened)."""

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        """Leadership, where a backend holds it on a session of its own (it may override)."""
        return await self.arun(self.ops.try_lead(name, holder, until, now))

    async def resign(self, name: str, holder: str) -> None:
        await self.arun(self.ops.resign(name, holder))

    @abc.abstractmethod
    async def wait_for_change(self, timeout: float) -> None:
        """Return soon after the store may have new runnable work, or after `timeout`."""

    @abc.abstractmethod
    async def subscribe(self) -> Subscription:
        """A wake-up of its own for one event subscriber."""

    @abc.abstractmethod
    def subscribe_blocking(self) -> SyncSubscription:
        """A blocking wake-up for one waiter: returns soon after the store changed."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Close what is bound to the running event loop (async connections, listeners);
        the backend stays usable and opens them again when needed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection (blocking); the backend opens them again when needed."""


#: How deep dependencies may chain. A job that finishes releases (or cancels) its dependents
#: inside its own transaction, and a cancellation runs on down the line there: the stores'
#: trigger nesting (SQLite stops past about 500 levels, PostgreSQL's stack past about 400)
#: bounds it, so enqueue refuses deeper chains with a clear error instead.
MAX_DEPENDENCY_DEPTH = 250


def dependency_depths(jobs: Sequence[NewJob], named: Mapping[int, int]) -> list[int]:
    """How deep each new job's dependencies go, given the depths of the stored jobs they name
    (`{id: depth}`, as the store has them). Refuses — a ValidationError, nothing stored — a job
    that names a job that does not exist (so no cycle can ever form: a job can only depend on
    jobs that exist) or that would chain deeper than MAX_DEPENDENCY_DEPTH."""
    wanted = {d for j in jobs for d in j.depends_on}
    missing = sorted(wanted - set(named))
    if missing:
        shown = ", ".join(str(m) for m in missing[:5])
        raise ValidationError(f"depends_on names no such job: {shown}")
    depths: list[int] = []
    for job in jobs:
        parents = [named[d] for d in job.depends_on] + [depths[p] for p in job.depends_on_batch]
        depth = 1 + max(parents) if parents else 0
        if depth > MAX_DEPENDENCY_DEPTH:
            raise ValidationError(
                f"dependencies may chain at most {MAX_DEPENDENCY_DEPTH} jobs deep; this job "
                f"would be {depth} deep"
            )
        depths.append(depth)
    return depths


def outcome_array(o: Outcome) -> list[Any]:
    """An outcome as the stores that take a batch of them as JSON arrays read each (SQLite's
    `complete` statement, Redis's `complete.lua`): [id, worker_id, attempt, state, result,
    error, run_at, refund, finished_at, progress, keeps_cancel_request, keeps_requester_note,
    at, note, lease_expired_before, leader, ran_for]."""
    return [
        o.job_id,
        o.worker_id,
        o.attempt,
        o.state.value,
        o.result,
        None if o.error is None else json.dumps(o.error),
        o.run_at,
        1 if o.refunds_attempt else 0,
        o.finished_at,
        o.progress,
        o.keeps_cancel_request,
        o.keeps_requester_note,
        o.at,
        o.note,
        o.lease_expired_before,
        o.leader,
        o.ran_for,
    ]
