"""`App`: the task registry, enqueueing, and the operations to inspect and steer jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

from conveyor import tracing
from conveyor.backends import Backend, JobFilter, check_url, open_backend
from conveyor.backends.base import Subscription
from conveyor.circuit import Action, Circuit, CircuitEvent, CircuitInfo, Probe
from conveyor.clock import Clock, SystemClock
from conveyor.config import Settings, parse_duration
from conveyor.cron import Periodic, Schedule, TickRecord
from conveyor.errors import InvalidTransition, JobNotFound, UnknownTask, ValidationError
from conveyor.events import Cursor, Event
from conveyor.job import (
    CANCELLABLE_STATES,
    FINISHED_STATES,
    RETRYABLE_STATES,
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    NewJob,
    WorkerInfo,
)
from conveyor.limits import check_count
from conveyor.notify import Alerter, BacklogRule, Notifier, NoWorkerRule, from_config
from conveyor.redact import Redactor, secrets
from conveyor.retry import BackoffLike, RetryPolicy, as_backoff, exponential
from conveyor.services.circuits import announce
from conveyor.task import CallOptions, Task, check_priority, check_queue

F = TypeVar("F", bound=Callable[..., Any])

#: How long closing an App waits for alerts still being sent.
ALERT_FLUSH_S = 5.0
StateFilter = JobState | str | Iterable[JobState | str] | None


#: Told how far a bulk change made in chunks got: (jobs done, jobs in all). The CLI draws it
#: as a progress bar.
Progress = Callable[[int, int], None]
#: Jobs a bulk change made in chunks lists per read, and changes per statement.
BULK_LIST_PAGE = 1_000
BULK_CHUNK = 500


def _states(value: StateFilter) -> list[JobState] | None:
    if value is None:
        return None
    if isinstance(value, JobState | str):
        value = [value]
    try:
        return [JobState(v) for v in value]
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise ValidationError(f"unknown state in {value!r} (known: {known})") from None


def _seconds(value: float | dt.timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if seconds < 0:
        raise ValidationError(f"{what} must be >= 0 seconds, got {value!r}")
    return seconds


def _optional_duration(value: float | str | dt.timedelta | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what}: {exc}") from None
    if not seconds > 0:
        raise ValidationError(f"{what} must be a duration > 0, got {value!r}")
    return seconds


def _exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple | list) else (value,)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(f"{what} takes exception classes, got {t!r}")
    return tuple(types)


class App:
    """A conveyor application: where jobs are stored and which tasks exist.

    `App("sqlite:///jobs.db")`; every keyword argument falls back to a `CONVEYOR_*` environment
    variable, then to its default (see `Settings`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        lease_seconds: float | None = None,
        max_attempts: int | None = None,
        retry_base_delay: float | None = None,
        retry_cap: float | None = None,
        max_payload_bytes: int | None = None,
        auto_migrate: bool | None = None,
        default_queue: str | None = None,
        sqlite_synchronous: str | None = None,
        postgres_schema: str | None = None,
        postgres_pool_size: int | None = None,
        postgres_listen: bool | None = None,
        redis_prefix: str | None = None,
        poll_interval: float | None = None,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
        retention_succeeded: float | str | None = None,
        retention_failed: float | str | None = None,
        notifiers: Sequence[Notifier] | None = None,
        alert_every: float | str | None = None,
        redact: Redactor | None = None,
        clock: Clock | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.settings = Settings.load(
            {
                "database_url": url,
                "lease_seconds": lease_seconds,
                "max_attempts": max_attempts,
                "retry_base_delay": retry_base_delay,
                "retry_cap": retry_cap,
                "max_payload_bytes": max_payload_bytes,
                "auto_migrate": auto_migrate,
                "default_queue": default_queue,
                "sqlite_synchronous": sqlite_synchronous,
                "postgres_schema": postgres_schema,
                "postgres_pool_size": postgres_pool_size,
                "postgres_listen": postgres_listen,
                "redis_prefix": redis_prefix,
                "poll_interval": poll_interval,
                "connect_timeout": connect_timeout,
                "statement_timeout": statement_timeout,
                "retention_succeeded": retention_succeeded,
                "retention_failed": retention_failed,
                "alert_every": alert_every,
            }
        )
        check_url(self.settings.database_url)
        #: the backoff of a task that names none, and of a job whose task this app lacks
        self.default_backoff = exponential(self.settings.retry_base_delay, self.settings.retry_cap)
        self._clock: Clock = clock or SystemClock()
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: periodic entries by name, as `@app.periodic` declared them
        self.periodics: dict[str, Periodic] = {}
        #: queue concurrency limits, as `app.queue` declared them (None: no limit)
        self.declared_queues: dict[str, int | None] = {}
        #: circuits by name, as `app.circuit` declared them
        self.circuits: dict[str, Circuit] = {}
        self._backend: Backend | None = None
        self._backend_lock = threading.Lock()
        if notifiers is None:
            notifiers = from_config(self.settings.alerts) if self.settings.alerts else []
        #: alerts: circuit changes, dead jobs, backlogs, missing workers (see conveyor.notify)
        self.alerts = Alerter(self, notifiers, self.settings.alert_every)
        #: how a job's args, kwargs and meta are shown (CLI, API, dashboard); see
        #: conveyor.redact
        self.redact: Redactor = redact or secrets
        #: the OpenTelemetry tracer provider spans go to (None: OpenTelemetry's global one;
        #: see conveyor.tracing)
        self.tracer_provider = tracer_provider

    def __repr__(self) -> str:
        return f"<conveyor.App {self.settings.database_url}>"

    @property
    def clock(self) -> Clock:
        """Where every "now" comes from; set a `FrozenClock` in tests."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        if self._backend is not None:
            self._backend.use_clock(clock)

    @property
    def url(self) -> str:
        return self.settings.database_url

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            # Once, however many threads ask at once: each backend has pools of its own.
            with self._backend_lock:
                if self._backend is None:
                    self._backend = open_backend(
                        self.settings.database_url, self.settings, self._clock
                    )
        return self._backend

    # -- tasks ------------------------------------------------------------------------------

    @overload
    def task(self, fn: F) -> Task[Any, Any]: ...

    @overload
    def task(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | str = 5,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: BackoffLike | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        give_up_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        pass_context: bool = False,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        circuit: Circuit | str | None = None,
        alert_on_dead: bool = False,
    ) -> Callable[[F], Task[Any, Any]]: ...

    def task(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | str = 5,
        max_attempts: int | None = None,
        timeout: float | None = None,
        backoff: BackoffLike | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        give_up_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        pass_context: bool = False,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        circuit: Circuit | str | None = None,
        alert_on_dead: bool = False,
    ) -> Task[Any, Any] | Callable[[F], Task[Any, Any]]:
        """Register a function as a task: `@app.task` or `@app.task(queue=..., ...)`."""

        def register(fn: F) -> Task[Any, Any]:
            task_name = name or f"{fn.__module__}.{fn.__name__}"
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered")
            policy = RetryPolicy(
                backoff=self.default_backoff if backoff is None else as_backoff(backoff),
                retry_on=_exception_types(retry_on, "retry_on"),
                give_up_on=_exception_types(give_up_on, "give_up_on"),
            )
            task: Task[Any, Any] = Task(
                self,
                fn,
                name=task_name,
                queue=queue or self.settings.default_queue,
                priority=check_priority(priority),
                max_attempts=self.settings.max_attempts if max_attempts is None else max_attempts,
                timeout=timeout,
                retry=policy,
                pass_context=pass_context,
                rate_limit=rate_limit,
                rate_limit_key=rate_limit_key,
                concurrency=concurrency,
                concurrency_key=concurrency_key,
                circuit=self._declared_circuit(circuit),
                alert_on_dead=alert_on_dead,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        schedule: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        catch_up: bool = True,
        **task_options: Any,
    ) -> Callable[[F], Task[Any, Any]]:
        """Register a task that the leader enqueues on every tick of a cron `schedule`
        (five fields, or @hourly, @daily, …) in time zone `tz`, with `args` and `kwargs`.
        `name` names the entry and the task; `task_options` are those of `@app.task`
        (queue, priority, max_attempts, timeout, backoff, …). Bad schedules, time zones and
        arguments are refused here, when the task is declared."""
        parsed = Schedule.parse(schedule, tz)
        call_kwargs = dict(kwargs or {})

        def register(fn: F) -> Task[Any, Any]:
            entry_name = name or f"{fn.__module__}.{fn.__name__}"
            if entry_name in self.periodics:
                raise ValueError(f"a periodic entry named {entry_name!r} is already declared")
            task = self.task(name=entry_name, **task_options)(fn)
            try:
                task.build_job(CallOptions(), args, call_kwargs)  # the arguments must fit
            except ValidationError:
                del self.tasks[entry_name]
                raise
            self.periodics[entry_name] = Periodic(
                entry_name, parsed, task, tuple(args), call_kwargs, catch_up
            )
            return task

        return register

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none registered"
            raise UnknownTask(f"unknown task {name!r} (known: {known})") from None

    # -- enqueue ----------------------------------------------------------------------------

    def _bind(self, jobs: list[Job]) -> list[Job]:
        for job in jobs:
            job.app = self
        return jobs

    def insert_sync(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        sent, positions = _first_of_each_key(jobs)
        if (recorder := tracing.tracer(self.tracer_provider)) is None:
            return self._bind(_spread(self.backend.sync.enqueue(sent, connection), positions))
        with tracing.enqueueing(recorder, sent) as span:
            stored = self._bind(_spread(self.backend.sync.enqueue(sent, connection), positions))
            tracing.enqueued(span, stored)
        return stored

    async def insert_async(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        sent, positions = _first_of_each_key(jobs)
        if (recorder := tracing.tracer(self.tracer_provider)) is None:
            return self._bind(_spread(await self.backend.enqueue(sent, connection), positions))
        with tracing.enqueueing(recorder, sent) as span:
            stored = self._bind(_spread(await self.backend.enqueue(sent, connection), positions))
            tracing.enqueued(span, stored)
        return stored

    def _build_by_name(
        self,
        task: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> NewJob:
        return self.get_task(task).build_job(CallOptions.build(**options), args or (), kwargs or {})

    def enqueue(
        self,
        task: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Enqueue a registered task by name: `app.enqueue("tasks.add", args=[1, 2])`.

        Options: priority, delay, run_at, queue, max_attempts, meta.
        """
        connection = options.pop("connection", None)
        return self.insert_sync([self._build_by_name(task, args, kwargs, options)], connection)[0]

    async def enqueue_async(
        self,
        task: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        connection = options.pop("connection", None)
        job = self._build_by_name(task, args, kwargs, options)
        return (await self.insert_async([job], connection))[0]

    # -- reading ----------------------------------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        """The job with this id; `JobNotFound` if there is none."""
        job = self.backend.sync.get_job(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._bind([job])[0]

    async def get_job_async(self, job_id: int) -> Job:
        job = await self.backend.get_job(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._bind([job])[0]

    def list_jobs(
        self,
        state: StateFilter = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        error_type: str | None = None,
        *,
        after_id: int | None = None,
        contains: str | None = None,
    ) -> list[Job]:
        """Jobs, newest first, filtered by state(s), queue, task, the type of the last error
        (`"TimeoutError"`) and ASCII text in the task name or arguments (`contains`, ignoring
        case); ids between `after_id` and `before_id` (`before_id` pages on)."""
        if limit < 1:
            raise ValidationError(f"limit must be >= 1, got {limit}")
        return self._bind(
            self.backend.sync.list_jobs(
                JobFilter.of(
                    _states(state),
                    queue=queue,
                    task=task,
                    before_id=before_id,
                    error_type=error_type,
                    after_id=after_id,
                    contains=contains,
                ),
                limit,
            )
        )

    def job_history(self, job_id: int) -> list[HistoryEntry]:
        """Every state change of the job, oldest first."""
        return self.backend.sync.job_history(job_id)

    def queue_stats(self, state: StateFilter = None) -> dict[str, dict[JobState, int]]:
        """`{queue: {state: count}}` for every queue that has jobs (in `state`, if given)."""
        return self.backend.sync.queue_stats(_states(state))

    def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        """The dead-letter queue grouped by task and the type of the last error, biggest group
        first."""
        return self.backend.sync.dead_groups(queue)

    def finished_counts(self, since: float, bucket: int = 60) -> list[FinishedCount]:
        """How many jobs finished (succeeded, dead, cancelled) per queue and `bucket` seconds
        since the Unix time `since`: throughput, read from an index."""
        if bucket < 1:
            raise ValidationError(f"bucket must be >= 1 second, got {bucket}")
        return self.backend.sync.finished_counts(since, bucket)

    def queued_since(self) -> dict[str, float]:
        """Per queue with queued jobs, since when (Unix time) its oldest has been queued."""
        return self.backend.sync.queued_since()

    def list_workers(self) -> list[WorkerInfo]:
        return self.backend.sync.list_workers()

    def live_workers(self) -> list[WorkerInfo]:
        """The workers that heartbeat within a lease."""
        now, lease = self.clock.now(), self.settings.lease_seconds
        return [w for w in self.list_workers() if not w.is_lost(now, lease)]

    def periodic_ticks(self) -> dict[str, TickRecord]:
        """Per periodic entry the store has seen: its latest tick dealt with, and the latest
        job it fired, with that job's state."""
        return self.backend.sync.periodic_ticks()

    def revoke_session(self, nonce: str, until: float) -> None:
        """Refuse a dashboard session from now on, in every server sharing this store (the
        dashboard's sign-out)."""
        self.backend.sync.revoke_session(nonce, until, self.clock.now())

    def session_revoked(self, nonce: str) -> bool:
        return self.backend.sync.session_revoked(nonce)

    def paused_queues(self) -> list[str]:
        """The names of the paused queues, sorted."""
        return self.backend.sync.paused_queues()

    # -- steering ---------------------------------------------------------------------------

    def cancel_job(self, job_id: int, note: str = "cancelled") -> Job:
        """Cancel a job that has not started; ask a running one to stop (it ends `cancelled`).
        Finished jobs are left as they are."""
        job = self.backend.sync.cancel_job(job_id, self.clock.now(), note)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._bind([job])[0]

    def cancel_jobs(
        self,
        queue: str | None = None,
        task: str | None = None,
        state: StateFilter = None,
        note: str = "cancelled",
        *,
        job_ids: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Cancel every job of a queue (or task, or both) that has not started — in `state`
        (waiting, scheduled, queued or retrying; default all four) — in one statement;
        returns the count. Running jobs are left alone (cancel them one by one). With
        `progress`, in chunks instead, told how far it got after each (see `Progress`).

        With `job_ids`: cancel those jobs one by one, as `cancel_job` does (running ones are
        asked to stop); returns how many were cancelled or asked to stop."""
        if job_ids is not None:
            return sum(self._cancel_if_unfinished(job_id, note) for job_id in job_ids)
        if queue is None and task is None:
            raise ValidationError("give a queue or a task whose jobs to cancel")
        states = _states(state) or sorted(CANCELLABLE_STATES, key=list(JobState).index)
        bad = [s.value for s in states if s not in CANCELLABLE_STATES]
        if bad:
            raise ValidationError(f"only jobs not started yet can be cancelled in bulk, not {bad}")
        where = JobFilter.of(states, queue=None if queue is None else check_queue(queue), task=task)
        now = self.clock.now()

        def change(chunk: JobFilter) -> int:
            return self.backend.sync.cancel_jobs(chunk, now, note)

        return change(where) if progress is None else self._in_chunks(where, change, progress)

    def _in_chunks(
        self,
        where: JobFilter,
        change: Callable[[JobFilter], int],
        progress: Progress,
        keep: Callable[[Job], bool] = lambda job: True,
    ) -> int:
        """A bulk change made a chunk of jobs at a time, newest first: the jobs matching now
        are listed (those `keep` keeps), then changed BULK_CHUNK ids at a time (the filter
        still applies to each), `progress` told after each chunk. Jobs that arrive meanwhile
        are left out; each chunk is one statement of its own."""
        ids: list[int] = []
        before: int | None = None
        while page := self.backend.sync.list_jobs(
            dataclasses.replace(where, before_id=before), BULK_LIST_PAGE
        ):
            ids += [job.id for job in page if keep(job)]
            before = page[-1].id
        progress(0, len(ids))
        changed = 0
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = tuple(ids[start : start + BULK_CHUNK])
            changed += change(dataclasses.replace(where, ids=chunk))
            progress(start + len(chunk), len(ids))
        return changed

    def _cancel_if_unfinished(self, job_id: int, note: str) -> bool:
        try:
            job = self.cancel_job(job_id, note)
        except JobNotFound:
            return False
        return job.state is JobState.CANCELLED or job.cancel_requested

    async def cancel_job_async(self, job_id: int, note: str = "cancelled") -> Job:
        job = await self.backend.cancel_job(job_id, self.clock.now(), note)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return self._bind([job])[0]

    def circuit(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        probe: Probe | None = None,
        schedule: Sequence[tuple[Any, Any]] | None = None,
        half_open_jobs: int = 1,
    ) -> Circuit:
        """Declare a downstream service that tasks call (`@app.task(circuit=...)`). After
        `failure_threshold` downstream failures in a row it opens for every worker: the jobs
        of its tasks are held, queued, and spend no attempts. The leader runs `probe` (an
        http(s) URL answering 2xx/3xx, or a callable, sync or async, that returns without
        raising) on `schedule` — `[("1h", "1m"), (None, "10m")]` by default: every minute for
        an hour, then every ten minutes; when it answers, `half_open_jobs` jobs run, and the
        first to succeed closes the circuit."""
        if name in self.circuits:
            raise ValueError(f"a circuit named {name!r} is already declared")
        declared = Circuit.declare(
            name,
            failure_threshold=failure_threshold,
            probe=probe,
            schedule=schedule,
            half_open_jobs=half_open_jobs,
        )
        self.circuits[name] = declared
        return declared

    def _declared_circuit(self, circuit: Circuit | str | None) -> Circuit | None:
        if circuit is None:
            return None
        name = circuit if isinstance(circuit, str) else circuit.name
        declared = self.circuits.get(name)
        if declared is None or (isinstance(circuit, Circuit) and circuit is not declared):
            raise ValidationError(f"circuit {name!r} is not declared on this app (app.circuit)")
        return declared

    def close_circuit(self, name: str, reason: str = "closed by hand") -> bool:
        """Close a circuit from outside (its service is back): its held jobs run again at once.
        False if it was not open or half-open."""
        change = self.backend.sync.change_circuit(
            name, Action.CLOSE, self.clock.now(), reason=reason
        )
        if change is None:
            return False
        announce(self, change)
        return True

    def circuit_states(self) -> list[CircuitInfo]:
        """Every circuit the store knows: state, failures in a row, since when, jobs held."""
        return self.backend.sync.circuits()

    def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        """Opens, half-opens and closes, newest first: when, why, jobs held, how long."""
        return self.backend.sync.circuit_log(name, limit)

    def alert_on_backlog(
        self,
        queue: str,
        *,
        depth: int | None = None,
        older_than: float | str | dt.timedelta | None = None,
    ) -> None:
        """Alert (through the app's notifiers) when `queue` holds more than `depth` queued
        jobs, or its oldest queued job has waited longer than `older_than`. The elected leader
        checks every few seconds; the alert is rate-limited like every other."""
        if depth is None and older_than is None:
            raise ValidationError("alert_on_backlog needs depth= or older_than=")
        if depth is not None:
            check_count(depth, "depth")
        self.alerts.backlog_rules.append(
            BacklogRule(check_queue(queue), depth, _optional_duration(older_than, "older_than"))
        )

    def alert_on_no_worker(self, queue: str, *, after: float | str | dt.timedelta = "5m") -> None:
        """Alert when no live worker has served `queue` for `after` (five minutes). Checked by
        the elected leader, so it speaks for queues other workers serve."""
        wait = _optional_duration(after, "after")
        assert wait is not None
        self.alerts.no_worker_rules.append(NoWorkerRule(check_queue(queue), wait))

    def events(
        self, job_id: int | None = None, queue: str | None = None, *, poll: float = 1.0
    ) -> AsyncGenerator[Event, None]:
        """Every state change and progress report from now on — of one job, one queue, or all —
        in order: `async for event in app.events(job_id=job.id): ...`. The store wakes the
        subscriber (NOTIFY on PostgreSQL, a change check on SQLite); `poll` is the longest it
        waits without a wake-up. Events carry ids and small fields, never job arguments."""
        return self._events(job_id, queue, poll, None)

    async def _open_events(
        self, job_id: int | None, queue: str | None, poll: float = 1.0
    ) -> tuple[AsyncGenerator[Event, None], Subscription]:
        """`events`, subscribed and positioned now (before the caller looks at the job)."""
        subscription = await self.backend.subscribe()
        cursor = await self.backend.event_cursor()
        return self._events(job_id, queue, poll, (subscription, cursor)), subscription

    async def _events(
        self,
        job_id: int | None,
        queue: str | None,
        poll: float,
        start: tuple[Subscription, Cursor] | None,
    ) -> AsyncGenerator[Event, None]:
        backend = self.backend
        if start is None:
            subscription = await backend.subscribe()  # before the cursor: nothing slips by
            cursor = await backend.event_cursor()
        else:
            subscription, cursor = start
        try:
            while True:
                found, cursor = await backend.read_events(cursor, job_id, queue)
                for event in found:
                    yield event
                if not found:
                    await subscription.wait(poll)
        finally:
            await subscription.close()

    def queue(self, name: str, *, concurrency: int | None = None) -> None:
        """Declare a queue's limit: at most `concurrency` of its jobs run at once, across every
        worker and machine. Workers of this app write it to the store when they start (so the
        limit in force is the one the latest worker declared); `concurrency=None` lifts it."""
        self.declared_queues[check_queue(name)] = (
            None if concurrency is None else check_count(concurrency, "concurrency")
        )

    def queue_limits(self) -> dict[str, int]:
        """The queue concurrency limits in force, as the store has them."""
        return self.backend.sync.queue_limits()

    def pause_queue(self, queue: str) -> bool:
        """Start nothing new from `queue`, on any worker, until it is resumed; jobs already
        running finish. Kept in the store, so it outlives restarts. False if it was paused."""
        return self.backend.sync.set_queue_paused(check_queue(queue), True, self.clock.now())

    def resume_queue(self, queue: str) -> bool:
        """Let workers start `queue`'s jobs again. False if it was not paused."""
        return self.backend.sync.set_queue_paused(check_queue(queue), False, self.clock.now())

    def retry_job(self, job_id: int) -> Job:
        """Put a dead or cancelled job back in its queue, with its attempts starting again."""
        where = JobFilter.of(RETRYABLE_STATES, ids=[job_id])
        done = self.backend.sync.retry_jobs(where, self.clock.now(), "retried by hand")
        if not done:
            job = self.get_job(job_id)
            if job.state in RETRYABLE_STATES and job.unique_key is not None:
                holder = self.backend.sync.find_unique(job.unique_key)
                if holder is not None:
                    raise InvalidTransition(
                        f"job {job_id} cannot be retried: job {holder.id} holds its unique key "
                        f"{job.unique_key!r} ({holder.state.value})"
                    )
            raise InvalidTransition(
                f"job {job_id} is {job.state.value}; only dead or cancelled jobs can be retried"
            )
        return self.get_job(job_id)

    def retry_jobs(
        self,
        state: StateFilter = JobState.DEAD,
        queue: str | None = None,
        task: str | None = None,
        *,
        job_ids: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Retry every dead (or cancelled) job of a queue or task — or of `job_ids` — at once;
        returns the count. With `progress`, in chunks (see `Progress`)."""
        states = _states(state) or [JobState.DEAD]
        bad = [s.value for s in states if s not in RETRYABLE_STATES]
        if bad:
            raise ValidationError(f"only dead or cancelled jobs can be retried, not {bad}")
        where = JobFilter.of(states, ids=job_ids, queue=queue, task=task)
        now = self.clock.now()

        def change(chunk: JobFilter) -> int:
            return len(self.backend.sync.retry_jobs(chunk, now, "retried by hand (bulk)"))

        return change(where) if progress is None else self._in_chunks(where, change, progress)

    def purge(
        self,
        state: StateFilter = None,
        older_than: float | dt.timedelta = 0.0,
        queue: str | None = None,
        task: str | None = None,
        *,
        job_ids: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Delete finished jobs (succeeded, dead, cancelled; or the states given) that finished
        more than `older_than` ago — of `job_ids` only, if given — with their history. Returns
        how many were deleted. With `progress`, in chunks (see `Progress`)."""
        states = _states(state) or sorted(FINISHED_STATES)
        unfinished = [s.value for s in states if s not in FINISHED_STATES]
        if unfinished:
            raise ValidationError(f"only finished jobs can be purged, not {unfinished}")
        where = JobFilter.of(states, ids=job_ids, queue=queue, task=task)
        age, now = _seconds(older_than, "older_than"), self.clock.now()

        def change(chunk: JobFilter) -> int:
            return self.backend.sync.purge(chunk, age, now)

        def old_enough(job: Job) -> bool:
            return job.finished_at is not None and job.finished_at <= now - age

        if progress is None:
            return change(where)
        return self._in_chunks(where, change, progress, keep=old_enough)

    # -- schema, workers, lifetime ----------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; returns the migration versions applied."""
        return self.backend.sync.migrate()

    def schema_version(self) -> int:
        """The newest schema migration the store has (0 before the first)."""
        return self.backend.sync.schema_version()

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        burst: bool = False,
        grace: float = 30.0,
        prefetch: int | None = None,
        max_jobs: int | None = None,
        name: str | None = None,
    ) -> None:
        """Run a worker in this thread until stopped (SIGTERM/SIGINT), or, with `burst`, until
        nothing is runnable, or, with `max_jobs`, once it has run that many jobs. `prefetch`
        and `name`: see `Worker`."""
        from conveyor.worker import Worker

        Worker(
            self,
            queues=queues,
            concurrency=concurrency,
            burst=burst,
            grace=grace,
            prefetch=prefetch,
            max_jobs=max_jobs,
            name=name,
        ).run()

    async def run_worker_async(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        burst: bool = False,
        grace: float = 30.0,
        prefetch: int | None = None,
        max_jobs: int | None = None,
        name: str | None = None,
    ) -> None:
        from conveyor.worker import Worker

        await Worker(
            self,
            queues=queues,
            concurrency=concurrency,
            burst=burst,
            grace=grace,
            prefetch=prefetch,
            max_jobs=max_jobs,
            name=name,
        ).run_async()

    def close(self) -> None:
        """Close the store's connections (after giving alerts on their way a few seconds).
        The App can be used again afterwards."""
        self.alerts.flush(ALERT_FLUSH_S)
        if self._backend is not None:
            self._backend.sync.close()
            self._backend = None

    async def close_async(self) -> None:
        await asyncio.to_thread(self.alerts.flush, ALERT_FLUSH_S)
        if self._backend is not None:
            await self._backend.close()
            self._backend = None


def _first_of_each_key(jobs: Sequence[NewJob]) -> tuple[Sequence[NewJob], list[int] | None]:
    """Within one batch, the first call with a unique key decides: later calls with that key
    get the first one's job. The jobs to send to the store, and for each job given, the
    position of its stand-in among them (None when every job is sent). A job that waits for
    jobs of the same batch (a chain, a group) waits for their stand-ins."""
    if all(j.unique_key is None for j in jobs):
        return jobs, None
    sent: list[NewJob] = []
    positions: list[int] = []
    first: dict[str, int] = {}
    for job in jobs:
        key = job.unique_key
        if key is not None and key in first:
            positions.append(first[key])
            continue
        if key is not None:
            first[key] = len(sent)
        if job.depends_on_batch:
            after = tuple(dict.fromkeys(positions[p] for p in job.depends_on_batch))
            job = dataclasses.replace(job, depends_on_batch=after)
        positions.append(len(sent))
        sent.append(job)
    return sent, positions


def _spread(stored: list[Job], positions: list[int] | None) -> list[Job]:
    """The store's answer for the jobs sent, laid out again as the jobs given."""
    if positions is None:
        return stored
    out: list[Job] = []
    seen: set[int] = set()
    for position in positions:
        job = stored[position]
        out.append(dataclasses.replace(job, deduplicated=True) if position in seen else job)
        seen.add(position)
    return out
