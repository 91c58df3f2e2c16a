"""The backend seam: one method per operation on the store, in an async and a sync spelling.

Domain decisions (whether to retry, when, what counts as lost) are made above this seam, once;
a backend only writes them, atomically. Every method that changes a job's state records the
transition in the history table.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    WorkerInfo,
)


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
        cls, extended: set[tuple[int, int]], named: Iterable[tuple[int, int]],
        running: Iterable[Mapping[str, Any]],
    ) -> Beat:  # fmt: skip
        """From the store's rows of what runs under the worker (id, attempt, cancel_requested)."""
        mine = set(named)
        rows = [(int(r["id"]), int(r["attempt"]), bool(r["cancel_requested"])) for r in running]
        return cls(
            extended=extended,
            cancel={job_id for job_id, _, cancel in rows if cancel},
            unknown={(job_id, attempt) for job_id, attempt, _ in rows} - mine,
        )


class Store(Protocol):
    """The operations the public API needs, as blocking calls (the sync facade uses these)."""

    def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied."""

    def schema_version(self) -> int:
        """The newest migration applied to the store (0: none)."""

    def latest_version(self) -> int:
        """The newest migration this conveyor knows."""

    def close(self) -> None: ...

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        """Insert the jobs in one transaction, all or none; with `connection`, inside the
        caller's own transaction (where the backend supports it)."""

    def get_job(self, job_id: int) -> Job | None: ...

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
        """Newest first, with ids between `after_id` and `before_id` (both excluded);
        `error_type`: the type of the last error; `contains`: ASCII text in the task name or
        the stored arguments, ignoring case."""

    def job_history(self, job_id: int) -> list[HistoryEntry]: ...

    def find_unique(self, key: str) -> Job | None:
        """The unfinished job holding a unique key, if any."""

    def queue_stats(
        self, states: Iterable[JobState] | None = None
    ) -> dict[str, dict[JobState, int]]:
        """`{queue: {state: count}}`, of every state or only these (an index range each)."""

    def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        """The dead jobs counted by task and type of their last error, biggest group first."""

    def finished_counts(self, since: float, bucket: int) -> list[FinishedCount]:
        """Jobs that finished at or after `since`, counted per queue, state and `bucket`
        seconds."""

    def queued_since(self) -> dict[str, float]:
        """Per queue with queued jobs, since when the oldest of them has been queued."""

    def list_workers(self) -> list[WorkerInfo]: ...

    def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        """Cancel a job that has not started; ask a running one to stop. None if no such job."""

    def cancel_jobs(
        self,
        *,
        states: Iterable[JobState],
        queue: str | None,
        task: str | None,
        now: float,
        note: str,
    ) -> int:
        """Cancel every job in these (not yet started) states of the queue or task, in one
        statement; return the count."""

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
        """Move matching jobs back to `queued` with attempts starting again; return their ids."""

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
        """Delete finished jobs (and their history) that finished more than `older_than`
        seconds before `now` (the store's own clock, where it has one); with `job_ids`, only
        those."""

    def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool:  # fmt: skip
        """Record progress of the given running attempt (and the report, for the event
        stream); False if it is no longer running."""

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> bool:
        """Pause a queue (nothing new starts from it, on any worker) or resume it; False if it
        already was. Resuming wakes idle workers."""

    def paused_queues(self) -> list[str]:
        """The names of the paused queues, sorted."""

    def revoke_session(self, nonce: str, until: float, now: float) -> None:
        """Refuse the dashboard session `nonce` from now on, in every server sharing the store;
        kept until `until` (when it would have expired anyway)."""

    def session_revoked(self, nonce: str) -> bool:
        """Whether the dashboard session `nonce` was revoked (signed out)."""

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        """Let at most `concurrency` jobs of the queue run at once, cluster-wide (None: no
        limit)."""

    def queue_limits(self) -> dict[str, int]:
        """The queues with a concurrency limit, and their limits."""

    def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None:  # fmt: skip
        """Apply `action` to the circuit by `circuit.transition`, atomically; return the
        event recorded if its state changed. Held jobs released wake idle workers."""

    def record_probe(self, name: str, now: float) -> None: ...

    def backlog(self, queue: str, now: float) -> tuple[int, float | None]:
        """How many jobs are queued in `queue`, and how long the oldest has waited (None:
        none queued)."""

    def claim_alert(self, key: str, every: float, now: float) -> bool:
        """Take the right to send the alert `key`: True unless it was sent within `every`
        seconds before `now`, by anyone."""

    def circuits(self) -> list[CircuitInfo]:
        """Every circuit the store has seen, with its held jobs."""

    def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        """The latest opens, half-opens and closes, newest first."""

    def subscribe(self) -> SyncSubscription:
        """A blocking wake-up for one waiter: returns soon after the store changed."""

    def event_cursor(self) -> Cursor:
        """Where the event stream ends now."""

    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        """Events after `after` (of one job or queue), in order, and the cursor after them."""

    def periodic_ticks(self) -> dict[str, TickRecord]:
        """Per periodic entry the store has seen, its latest tick and latest fired job."""


class SyncSubscription(Protocol):
    def wait(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Subscription(Protocol):
    async def wait(self, timeout: float) -> None:
        """Return soon after the event stream may have grown, or after `timeout`."""

    async def close(self) -> None: ...


class Backend(abc.ABC):
    """The async operations the worker and services use, plus `sync`, the blocking twin."""

    url: str
    sync: Store

    def use_clock(self, clock: Clock) -> None:  # noqa: B027 - most backends need nothing
        """The App's clock changed (tests freeze time after the backend was opened)."""

    @abc.abstractmethod
    async def migrate(self) -> list[int]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def release(self) -> None:
        """Close what is bound to the running event loop (async connections, listeners);
        the backend stays usable and opens them again when needed."""

    @abc.abstractmethod
    async def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]: ...

    @abc.abstractmethod
    async def get_job(self, job_id: int) -> Job | None: ...

    @abc.abstractmethod
    async def cancel_job(self, job_id: int, now: float, note: str) -> Job | None: ...

    @abc.abstractmethod
    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
    ) -> list[Job]:
        """Promote due scheduled/retrying jobs, then atomically move up to `limit` queued jobs
        to `running` (priority, then run_at, then id), attempt + 1, leased to the worker."""

    @abc.abstractmethod
    async def complete(self, outcomes: Sequence[Outcome]) -> list[int]:
        """Write a batch of outcomes; each applies only while that attempt of the job is still
        `running` under that worker (and, for rescues, its lease is still the one that ran out,
        and the rescuing leader still leads). A job whose cancel was asked for while it ran
        ends `cancelled` instead of being retried or handed back. Returns the ids of the jobs
        whose outcome applied."""

    @abc.abstractmethod
    async def heartbeat(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float
    ) -> Beat:
        """Register or refresh the worker and extend the leases of its running attempts
        (`(job id, attempt)` pairs) that are still its own."""

    @abc.abstractmethod
    async def deregister_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    async def find_expired(self, now: float, limit: int) -> list[Job]:
        """Running jobs whose worker is lost: their lease ran out before `now` (on a store
        without a clock of its own, their worker has also not been seen to beat for a lease)."""

    @abc.abstractmethod
    async def prune_workers(self, older_than: float, now: float) -> int:
        """Forget workers not heard from for more than `older_than` seconds."""

    @abc.abstractmethod
    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        """Take or keep the named leadership for `until - now` seconds; True if `holder` has
        it. A holder that does not renew in time loses it to the next that tries."""

    @abc.abstractmethod
    async def resign(self, name: str, holder: str) -> None: ...

    @abc.abstractmethod
    async def next_due_in(self, queues: Sequence[str] | None, now: float) -> float | None:
        """Seconds until the next scheduled or retrying job in these queues is due (zero or
        less: due now; None: nothing pending)."""

    @abc.abstractmethod
    async def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        """None when no queued job waits in these (unpaused) queues; else the seconds until
        the next rate window opens (infinity: none is closed; the jobs wait for a slot, or for
        another worker that is taking them)."""

    @abc.abstractmethod
    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None: ...

    @abc.abstractmethod
    async def change_circuit(
        self, name: str, action: Action, now: float, *, threshold: int = 5,
        reason: str | None = None, half_open_jobs: int = 1,
    ) -> CircuitEvent | None: ...  # fmt: skip

    @abc.abstractmethod
    async def record_probe(self, name: str, now: float) -> None: ...

    @abc.abstractmethod
    async def circuits(self) -> list[CircuitInfo]: ...

    @abc.abstractmethod
    async def wait_for_change(self, timeout: float) -> None:
        """Return soon after the store may have new runnable work, or after `timeout`."""

    @abc.abstractmethod
    async def purge(self, *, states: Iterable[JobState], older_than: float, now: float) -> int:
        """Delete finished jobs in these states (with their history) older than that."""

    @abc.abstractmethod
    async def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        """Record that the entry's `tick` was dealt with and store `job` in the same
        transaction — unless the tick was recorded already, or `leader` no longer leads: then
        store nothing and return None. `job=None` records a tick skipped (or the first one
        seen) without a job."""

    @abc.abstractmethod
    async def periodic_ticks(self) -> dict[str, TickRecord]: ...

    @abc.abstractmethod
    async def prune_ticks(self, older_than: float, now: float) -> int:
        """Forget ticks older than that, except each entry's latest."""

    @abc.abstractmethod
    async def event_cursor(self) -> Cursor:
        """Where the event stream ends now."""

    @abc.abstractmethod
    async def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int = 500
    ) -> tuple[list[Event], Cursor]:
        """Events after `after` (of one job or queue), in order, and the cursor after them."""

    @abc.abstractmethod
    async def subscribe(self) -> Subscription:
        """A wake-up of its own for one event subscriber."""

    @abc.abstractmethod
    async def prune_progress(self, older_than: float, now: float) -> int:
        """Forget progress reports older than that (the jobs keep their latest)."""

    @abc.abstractmethod
    async def set_progress(
        self, job_id: int, worker_id: str, attempt: int, progress: float, stage: str | None,
        message: str | None, now: float,
    ) -> bool: ...  # fmt: skip


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
