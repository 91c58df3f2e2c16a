"""The job: its states, the transitions allowed between them, and the `Job` handle users hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.errors import JobFailed, WaitTimeout

if TYPE_CHECKING:
    from conveyor.app import App


class JobState(enum.StrEnum):
    """Where a job is in its life. Terminal states are `succeeded`, `dead` and `cancelled`."""

    WAITING = "waiting"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED_STATES


#: Each state by its stored name: a look-up, where `JobState(name)` goes through the enum's
#: machinery (0.7 µs, a sixth of making a Job of a row).
STATE_NAMED = {state.value: state for state in JobState}
FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})
CANCELLABLE_STATES = frozenset(
    {JobState.WAITING, JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING}
)
RETRYABLE_STATES = frozenset({JobState.DEAD, JobState.CANCELLED})
#: Where a running job goes when it is not finished: retried, or handed back.
LEFT_STATES = frozenset({JobState.RETRYING, JobState.QUEUED})
UNFINISHED_STATES = frozenset(JobState) - FINISHED_STATES
#: Waiting for their `run_at`: promoted to queued when it comes.
DUE_STATES = frozenset({JobState.SCHEDULED, JobState.RETRYING})
#: Still to run (a circuit holds these while it is open).
TO_RUN_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RETRYING})
#: Behind a circuit: still to run, or running.
HELD_STATES = TO_RUN_STATES | {JobState.RUNNING}

_S = JobState
#: Every transition a job may make; the history table holds nothing else.
#: `None` is "not yet a job" (the enqueue).
TRANSITIONS: frozenset[tuple[JobState | None, JobState]] = frozenset(
    {
        (None, _S.WAITING),
        (None, _S.SCHEDULED),
        (None, _S.QUEUED),
        (_S.WAITING, _S.QUEUED),
        # released with a delay still to run (it keeps its run_at)
        (_S.WAITING, _S.SCHEDULED),
        (_S.SCHEDULED, _S.QUEUED),
        (_S.QUEUED, _S.RUNNING),
        (_S.RUNNING, _S.SUCCEEDED),
        (_S.RUNNING, _S.RETRYING),
        (_S.RUNNING, _S.DEAD),
        (_S.RUNNING, _S.QUEUED),
        (_S.RUNNING, _S.CANCELLED),
        (_S.RETRYING, _S.QUEUED),
        (_S.WAITING, _S.CANCELLED),
        (_S.SCHEDULED, _S.CANCELLED),
        (_S.QUEUED, _S.CANCELLED),
        (_S.RETRYING, _S.CANCELLED),
        (_S.DEAD, _S.QUEUED),
        (_S.CANCELLED, _S.QUEUED),
    }
)

PRIORITY_NAMES: Mapping[str, int] = {"critical": 1, "high": 3, "normal": 5, "low": 8}


@dataclass(slots=True)
class NewJob:
    """A validated job, ready to be written by a backend. JSON fields are already encoded."""

    queue: str
    task: str
    args: str
    kwargs: str
    meta: str
    priority: int
    max_attempts: int
    run_at: float
    created_at: float
    #: the caller's args, kwargs and meta (copies), for the handle enqueue returns
    values: tuple[list[Any], dict[str, Any], dict[str, Any]] | None = None
    #: while a job with this key is unfinished (or finished less than `unique_for` seconds
    #: ago), enqueue returns that job instead of storing this one
    unique_key: str | None = None
    unique_for: float | None = None
    #: ids of stored jobs this one waits for, and positions of jobs earlier in the same
    #: enqueue call that it waits for (a chain or a group is stored in one call)
    depends_on: tuple[int, ...] = ()
    depends_on_batch: tuple[int, ...] = ()
    #: None: cancelled when a dependency ends dead or cancelled; "run": runs anyway
    on_dependency_failure: str | None = None
    #: the buckets of the job's task limits (see conveyor.limits): at most `concurrency_max`
    #: jobs of `concurrency_key` run at once, at most `rate_max` start per `rate_period` seconds
    concurrency_key: str | None = None
    concurrency_max: int | None = None
    rate_key: str | None = None
    rate_max: int | None = None
    rate_period: float | None = None
    #: the circuit its task is behind: held while the circuit is open
    circuit: str | None = None

    @property
    def waits(self) -> bool:
        return bool(self.depends_on or self.depends_on_batch)

    @property
    def limited(self) -> bool:
        return self.concurrency_key is not None or self.rate_key is not None

    @property
    def plain(self) -> bool:
        """Nothing but the basic columns: no dependencies, unique key, limit or circuit."""
        return not (
            self.waits
            or self.limited
            or self.unique_key is not None
            or self.on_dependency_failure is not None
            or self.circuit is not None
        )

    @property
    def state(self) -> JobState:
        if self.depends_on or self.depends_on_batch:
            return JobState.WAITING
        return JobState.SCHEDULED if self.run_at > self.created_at else JobState.QUEUED

    @property
    def finished_since(self) -> float | None:
        """With `unique_for`: a job with the key that finished after this also holds it."""
        return None if self.unique_for is None else self.created_at - self.unique_for

    def stored_as(self, job_id: int) -> Job:
        """The Job this became once stored under `job_id`."""
        if self.values is None:
            args, kwargs, meta = (
                json.loads(self.args),
                json.loads(self.kwargs),
                json.loads(self.meta),
            )
        else:
            args, kwargs, meta = self.values
        return Job(
            id=job_id,
            queue=self.queue,
            task=self.task,
            args=args,
            kwargs=kwargs,
            priority=self.priority,
            state=self.state,
            attempt=0,
            max_attempts=self.max_attempts,
            run_at=self.run_at,
            created_at=self.created_at,
            meta=meta,
            unique_key=self.unique_key,
        )


@dataclass(slots=True)
class Outcome:
    """What became of one run of a job: exactly one of these per claim.

    The executor decides it (and sets `ran_for` once the attempt is over), the completer writes
    it; nothing changes it after that. Not frozen: a frozen dataclass costs a call per field to
    make and a whole copy to amend, on every job a worker runs. `state` is where the job goes:
    succeeded, retrying (at `run_at`), dead, cancelled, or queued (handed back on shutdown,
    the attempt not counted). `lease_expired_before` makes the write conditional on the lease
    having run out, which is how a rescue never overrides a live worker.
    """

    job_id: int
    worker_id: str
    attempt: int
    state: JobState
    at: float
    result: str | None = None
    error: Mapping[str, Any] | None = None
    run_at: float | None = None
    note: str | None = None
    lease_expired_before: float | None = None
    #: the attempt does not count (a downstream failure behind a circuit)
    refund: bool = False
    #: for a rescue: the leader that decided it; the write applies only while it still leads
    leader: str | None = None
    #: how long the attempt ran, up to `at` (None: it never began): the store records when it
    #: began, unless a `Start` did already
    ran_for: float | None = None

    @property
    def refunds_attempt(self) -> bool:
        return self.refund or self.state is JobState.QUEUED

    # What the outcome writes, decided here once for every backend (the stores only write it).

    @property
    def finished_at(self) -> float | None:
        """When the job finished, if this outcome finishes it."""
        return self.at if self.state.is_finished else None

    @property
    def progress(self) -> float | None:
        """The progress to record (None: the job keeps what it reported): a job that
        succeeded is done."""
        return 100.0 if self.state is JobState.SUCCEEDED else None

    @property
    def keeps_cancel_request(self) -> bool:
        """A cancel asked for while the job ran outlives a retry or a hand-back: the job then
        ends cancelled instead (`LEFT_STATES`)."""
        return self.state in LEFT_STATES

    @property
    def keeps_requester_note(self) -> bool:
        """A job stopped on request keeps the requester's note (who asked)."""
        return self.state is JobState.CANCELLED

    @property
    def delay(self) -> float | None:
        """For a retry: how long after `at` it runs again."""
        return None if self.run_at is None else max(0.0, self.run_at - self.at)


@dataclass(frozen=True, slots=True)
class Start:
    """That an attempt claimed ahead has begun on its worker: `ago` seconds before `at`.

    A job is claimed `running` with no start time; until its start is recorded it counts as
    claimed ahead, not begun (a rescue then hands it back, the attempt not counted)."""

    job_id: int
    worker_id: str
    attempt: int
    at: float
    ago: float


def error_record(
    kind: str, message: str, traceback: str | None, at: float, worker: str | None, attempt: int
) -> dict[str, Any]:
    """One attempt's error, as a job's `errors` keep it (every reader expects this shape)."""
    return {
        "type": kind,
        "message": message,
        "traceback": traceback,
        "at": at,
        "worker": worker,
        "attempt": attempt,
    }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded transition of a job."""

    job_id: int
    at: float
    from_state: JobState | None
    to_state: JobState
    worker_id: str | None
    note: str | None

    @classmethod
    def from_row(cls, row: Row) -> HistoryEntry:
        return cls(
            job_id=row["job_id"],
            at=_seconds(row["at"]),
            from_state=None if row["from_state"] is None else JobState(row["from_state"]),
            to_state=JobState(row["to_state"]),
            worker_id=row["worker_id"],
            note=row["note"],
        )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as registered in the store."""

    id: str
    host: str
    pid: int
    queues: list[str] | None
    concurrency: int
    started_at: float
    last_beat: float
    running: list[int]
    #: seconds since the last heartbeat, as the store's clock tells it (None: not known)
    beat_age: float | None = None

    @classmethod
    def from_row(cls, row: Row, beat_age: float | None = None) -> WorkerInfo:
        return cls(
            id=row["id"],
            host=row["host"],
            pid=row["pid"],
            queues=_loads(row["queues"]),
            concurrency=row["concurrency"],
            started_at=_seconds(row["started_at"]),
            last_beat=_seconds(row["last_beat"]),
            running=_loads(row["running"], []),
            beat_age=beat_age,
        )

    def heartbeat_age(self, now: float) -> float:
        """Seconds since the last heartbeat, by the store's clock where it has one."""
        return now - self.last_beat if self.beat_age is None else self.beat_age

    def is_lost(self, now: float, lease_seconds: float) -> bool:
        """No heartbeat for longer than a lease."""
        return self.heartbeat_age(now) > lease_seconds


@dataclass(frozen=True, slots=True)
class DeadGroup:
    """Dead jobs of one task whose last error was of one type."""

    task: str
    error_type: str | None
    count: int
    newest_id: int
    newest_at: float

    @classmethod
    def from_row(cls, row: Row) -> DeadGroup:
        return cls(
            row["task"],
            row["error_type"],
            int(row["n"]),
            int(row["newest_id"]),
            float(row["newest_at"]),
        )


@dataclass(frozen=True, slots=True)
class FinishedCount:
    """How many jobs of a queue finished in a state within one time bucket."""

    queue: str
    state: JobState
    #: the bucket's start, Unix seconds
    bucket: float
    count: int

    @classmethod
    def from_row(cls, row: Row) -> FinishedCount:
        return cls(row["queue"], JobState(row["state"]), float(row["bucket"]), int(row["n"]))


def _seconds(value: Any) -> Any:
    """Epoch seconds from a row: a number already, or a datetime the driver made."""
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


#: States a job behind an open circuit is held in.
_HOLDABLE = frozenset({"queued", "retrying", "scheduled"})


def _clock_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


#: Epoch seconds from a store row's time column, whichever form the driver gives.
epoch_seconds = _seconds


class Row(Protocol):
    """A store row: columns by name."""

    def __getitem__(self, key: str) -> Any: ...


_EMPTY_JSON = {"[]": list, "{}": dict}


def _loads(text: str | None, default: Any = None) -> Any:
    """A JSON column's text, decoded."""
    if text is None:
        return default
    empty = _EMPTY_JSON.get(text)  # most jobs: no errors, no meta
    return empty() if empty is not None else json.loads(text)


@dataclass(slots=True)
class Job:
    """A job as last read from the store, and a handle to act on it.

    Read fields directly (`job.state`, `job.result`, ...); `refresh()` reads them again.
    """

    id: int
    queue: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    state: JobState
    attempt: int
    max_attempts: int
    run_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    worker_id: str | None = None
    progress: float | None = None
    stage: str | None = None
    result: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    unique_key: str | None = None
    #: the circuit its task is behind (see `held_by`)
    circuit: str | None = None
    #: True on the handle enqueue returned when it found this job holding the unique key
    #: (and stored nothing); a flag of that handle, not of the job
    deduplicated: bool = field(default=False, compare=False)
    app: App | None = field(default=None, repr=False, compare=False)

    @classmethod
    def reader(cls, names: Sequence[str]) -> Callable[[Sequence[Any]], Job]:
        """What makes a Job of a row with these columns (`JOB_COLUMNS` among them), read by
        position: each column is found once for all the rows of a statement (a SQLite row
        looked up by name compares the name with each column's in turn)."""
        if tuple(names) == JOB_COLUMNS:
            return cls.from_values
        missing = [column for column in JOB_COLUMNS if column not in names]
        if missing:
            raise ValueError(f"a job's row lacks the column(s) {', '.join(missing)}")
        get = operator.itemgetter(*[list(names).index(column) for column in JOB_COLUMNS])
        of = cls.from_values
        return lambda row: of(get(row))

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> Job:
        """A Job from the values of `JOB_COLUMNS`, in that order (its times as epoch seconds
        or datetimes, its JSON columns as text)."""
        (
            id_,
            queue,
            task,
            args,
            kwargs,
            priority,
            state,
            attempt,
            max_attempts,
            run_at,
            created_at,
            started_at,
            finished_at,
            lease_until,
            worker_id,
            progress,
            stage,
            result,
            errors,
            meta,
            cancel_requested,
            unique_key,
            circuit,
        ) = values
        return cls(
            id_,
            queue,
            task,
            _loads(args),
            _loads(kwargs),
            priority,
            STATE_NAMED[state],
            attempt,
            max_attempts,
            _seconds(run_at),
            _seconds(created_at),
            _seconds(started_at),
            _seconds(finished_at),
            _seconds(lease_until),
            worker_id,
            progress,
            stage,
            _loads(result),
            _loads(errors, []),
            _loads(meta, {}),
            bool(cancel_requested),
            unique_key,
            circuit,
        )

    @property
    def claimed_ahead(self) -> bool:
        """Claimed by a worker ahead of a free slot, not begun yet (see the guide's Workers)."""
        return self.state is JobState.RUNNING and self.started_at is None

    # -- the handle -------------------------------------------------------------------------

    def _require_app(self) -> App:
        if self.app is None:
            raise RuntimeError("this Job is not bound to an App")
        return self.app

    def _update_from(self, other: Job) -> None:
        for name in self.__dataclass_fields__:
            if name not in ("app", "deduplicated"):
                setattr(self, name, getattr(other, name))

    @property
    def held_by(self) -> str | None:
        """The circuit holding this job back while its downstream is down (it is not failing:
        it runs by itself once the service is back), else None. Asks the store."""
        if self.circuit is None or self.app is None or self.state not in _HOLDABLE:
            return None
        for info in self.app.circuit_states():
            if info.name == self.circuit and info.state.value == "open":
                return info.name
        return None

    @property
    def status_message(self) -> str:
        """One sentence for the people waiting on this job (what a dashboard shows)."""
        held = self.held_by
        if held is not None:
            return f"Queued — will run when {held} is back"
        state = self.state
        if state is JobState.RUNNING:
            done = "" if self.progress is None else f" — {self.progress:.0f}%"
            return f"Running{done}" + (f" ({self.stage})" if self.stage else "")
        if state is JobState.SCHEDULED:
            return f"Scheduled for {_clock_time(self.run_at)}"
        if state is JobState.RETRYING:
            return f"Retrying at {_clock_time(self.run_at)} after: {self._last_error()}"
        if state is JobState.DEAD:
            return f"Failed: {self._last_error()}"
        return {
            JobState.WAITING: "Waiting for the jobs it depends on",
            JobState.QUEUED: "Queued",
            JobState.SUCCEEDED: "Succeeded",
            JobState.CANCELLED: "Cancelled",
        }[state]

    def _last_error(self) -> str:
        if not self.errors:
            return "an error"
        last = self.errors[-1]
        return f"{last.get('type', 'error')}: {last.get('message', '')}".rstrip(": ")

    def refresh(self) -> Job:
        """Read the job again from the store; returns self."""
        self._update_from(self._require_app().get_job(self.id))
        return self

    async def refresh_async(self) -> Job:
        self._update_from(await self._require_app().get_job_async(self.id))
        return self

    def cancel(self) -> Job:
        """Cancel the job (see `App.cancel_job`); returns self, refreshed."""
        self._update_from(self._require_app().cancel_job(self.id))
        return self

    async def cancel_async(self) -> Job:
        self._update_from(await self._require_app().cancel_job_async(self.id))
        return self

    def history(self) -> list[HistoryEntry]:
        return self._require_app().job_history(self.id)

    def _outcome(self) -> Any:
        if self.state is JobState.SUCCEEDED:
            return self.result
        raise JobFailed(self)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Any:
        """Block until the job finishes; return its result. Woken by changes in the store
        (NOTIFY on PostgreSQL, a change check on SQLite), looking again at least every `poll`
        seconds.

        Raises `JobFailed` if it ends dead or cancelled, `WaitTimeout` after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        subscription = self._require_app().backend.sync.subscribe()
        try:
            while True:
                self.refresh()
                if self.state.is_finished:
                    return self._outcome()
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"job {self.id} still {self.state.value} after {timeout}s")
                subscription.wait(_next_wait(poll, deadline))
        finally:
            subscription.close()

    async def wait_async(self, timeout: float | None = None, poll: float = 1.0) -> Any:
        """Wait until the job finishes; return its result. Woken by the job's events (NOTIFY on
        PostgreSQL, a change check on SQLite), looking again at least every `poll` seconds.

        Raises `JobFailed` if it ends dead or cancelled, `WaitTimeout` after `timeout` seconds.
        """
        app = self._require_app()
        stream, subscription = await app._open_events(self.id, None, poll)
        try:
            await self.refresh_async()
            if not self.state.is_finished:
                try:
                    async with asyncio.timeout(timeout):
                        async for event in stream:
                            if event.finished:
                                break
                except TimeoutError:
                    await self.refresh_async()
                    if not self.state.is_finished:
                        raise WaitTimeout(
                            f"job {self.id} still {self.state.value} after {timeout}s"
                        ) from None
                await self.refresh_async()
        finally:
            await stream.aclose()
            await subscription.close()
        return self._outcome()


#: The columns a Job is read from: its stored fields, in their order (`Job.from_values` takes
#: them so).
JOB_COLUMNS = tuple(f.name for f in fields(Job) if f.name not in ("deduplicated", "app"))
#: Those of them that are moments (epoch seconds in a Job).
TIME_COLUMNS = frozenset(("run_at", "created_at", "started_at", "finished_at", "lease_until"))


def _next_wait(delay: float, deadline: float | None) -> float:
    if deadline is None:
        return delay
    return max(0.0, min(delay, deadline - time.monotonic()))
