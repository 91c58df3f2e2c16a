"""`@app.task`: a function registered under a name, with its options and its enqueue calls."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor import tracing
from conveyor.config import QUEUE_NAME
from conveyor.errors import MAX_DELAY_S, ValidationError, describe
from conveyor.job import PRIORITY_NAMES, Job, NewJob
from conveyor.limits import Rate, bucket, check_count, check_key_value
from conveyor.payload import check_size, encode, encode_arguments, task_signature
from conveyor.retry import RetryPolicy

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.circuit import Circuit

#: The last moment a job can be scheduled for: the end of the year 9999.
LATEST_RUN_AT = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()

#: The longest unique key, in characters.
MAX_UNIQUE_KEY = 255

P = ParamSpec("P")
R = TypeVar("R")


def check_priority(value: int | str) -> int:
    """1 (highest) to 10 (lowest), or a name: critical, high, normal, low."""
    if isinstance(value, str):
        if value in PRIORITY_NAMES:
            return PRIORITY_NAMES[value]
        names = ", ".join(PRIORITY_NAMES)
        raise ValidationError(f"unknown priority {value!r} (use 1-10 or one of: {names})")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        raise ValidationError(f"priority must be an integer from 1 (highest) to 10, got {value!r}")
    return value


def check_queue(value: str) -> str:
    if not isinstance(value, str) or not QUEUE_NAME.fullmatch(value):
        raise ValidationError(
            f"bad queue name {describe(value)}: use 1-128 characters of A-Z a-z 0-9 _ . : -"
        )
    return value


def check_max_attempts(value: int) -> int:
    return check_count(value, "max_attempts")


def check_unique_key(value: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_UNIQUE_KEY
        or "\x00" in value
        or not value.isprintable()
    ):
        raise ValidationError(
            f"unique_key must be text of 1-{MAX_UNIQUE_KEY} printable characters, "
            f"got {describe(value)}"
        )
    return value


def check_depends_on(value: Iterable[Job | int]) -> tuple[int, ...]:
    """Job handles or ids, as ids (each once, in the order given)."""
    if isinstance(value, Job | int | str | bytes) or not isinstance(value, Iterable):
        raise ValidationError(f"depends_on must be a list of jobs or job ids, got {value!r}")
    ids: dict[int, None] = {}
    for item in value:
        job_id = item.id if isinstance(item, Job) else item
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
            raise ValidationError(f"depends_on takes jobs or job ids, got {item!r}")
        ids[job_id] = None
    return tuple(ids)


def check_on_dependency_failure(value: str | None) -> str | None:
    """None (the default, "cancel") or "run"."""
    if value is None or value == "cancel":
        return None
    if value == "run":
        return value
    raise ValidationError(f"on_dependency_failure must be 'cancel' or 'run', got {value!r}")


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call options given to `configure(...)`; None means "the task's default"."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    run_at: float | None = None
    max_attempts: int | None = None
    meta: Mapping[str, Any] | None = None
    connection: Any = None
    unique_key: str | None = None
    unique_for: float | None = None
    depends_on: tuple[int, ...] | None = None
    on_dependency_failure: str | None = None
    rate_key: str | None = None
    concurrency_key: str | None = None

    @classmethod
    def build(
        cls,
        *,
        queue: str | None = None,
        priority: int | str | None = None,
        delay: float | dt.timedelta | None = None,
        run_at: float | dt.datetime | None = None,
        max_attempts: int | None = None,
        meta: Mapping[str, Any] | None = None,
        connection: Any = None,
        unique_key: str | None = None,
        unique_for: float | dt.timedelta | None = None,
        depends_on: Iterable[Job | int] | None = None,
        on_dependency_failure: str | None = None,
        rate_key: str | int | None = None,
        concurrency_key: str | int | None = None,
    ) -> CallOptions:
        """Validate options once, where the user wrote them."""
        if delay is not None and run_at is not None:
            raise ValidationError("give delay or run_at, not both")
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay != delay:
                raise ValidationError(f"delay must be a number of seconds, got {delay!r}")
            if delay < 0:
                raise ValidationError(f"delay must be >= 0 seconds, got {delay!r}")
            if delay > MAX_DELAY_S:
                raise ValidationError(f"delay must be at most 100 years, got {delay!r} seconds")
        if isinstance(run_at, dt.datetime):
            if run_at.tzinfo is None:
                raise ValidationError("run_at must be a timezone-aware datetime")
            run_at = run_at.timestamp()
        if run_at is not None and (
            isinstance(run_at, bool)
            or not isinstance(run_at, int | float)
            or not 0 <= run_at <= LATEST_RUN_AT
        ):
            raise ValidationError(
                f"run_at must be a datetime or epoch seconds before the year 9999, got {run_at!r}"
            )
        if meta is not None and not isinstance(meta, Mapping):
            raise ValidationError(f"meta must be a mapping, got {describe(meta)}")
        if isinstance(unique_for, dt.timedelta):
            unique_for = unique_for.total_seconds()
        if unique_for is not None and (
            isinstance(unique_for, bool)
            or not isinstance(unique_for, int | float)
            or not 0 <= unique_for <= MAX_DELAY_S
        ):
            raise ValidationError(
                f"unique_for must be a number of seconds from 0 to 100 years, got {unique_for!r}"
            )
        return cls(
            queue=None if queue is None else check_queue(queue),
            priority=None if priority is None else check_priority(priority),
            delay=None if delay is None else float(delay),
            run_at=None if run_at is None else float(run_at),
            max_attempts=None if max_attempts is None else check_max_attempts(max_attempts),
            meta=meta,
            connection=connection,
            unique_key=None if unique_key is None else check_unique_key(unique_key),
            unique_for=None if unique_for is None else float(unique_for),
            depends_on=None if depends_on is None else check_depends_on(depends_on),
            on_dependency_failure=check_on_dependency_failure(on_dependency_failure),
            rate_key=None if rate_key is None else check_key_value(rate_key, "rate_key"),
            concurrency_key=None
            if concurrency_key is None
            else check_key_value(concurrency_key, "concurrency_key"),
        )

    def merged(self, other: CallOptions) -> CallOptions:
        """These options with `other`'s set values on top."""
        changes = {f: getattr(other, f) for f in self.__slots__ if getattr(other, f) is not None}
        if other.delay is not None:
            changes["run_at"] = None  # the later of delay and run_at wins
        if other.run_at is not None:
            changes["delay"] = None
        return replace(self, **changes)


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; `enqueue` it to run it on a worker."""

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int,
        timeout: float | None,
        retry: RetryPolicy,
        pass_context: bool,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        concurrency: int | None = None,
        concurrency_key: str | None = None,
        circuit: Circuit | None = None,
        alert_on_dead: bool = False,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = check_queue(queue)
        self.priority = check_priority(priority)
        self.max_attempts = check_max_attempts(max_attempts)
        if timeout is not None and not timeout > 0:
            raise ValidationError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.timeout = timeout
        self.retry = retry
        self.pass_context = pass_context
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = task_signature(fn, pass_context)
        self._shapes: dict[tuple[Any, ...], str | None] = {}
        #: the downstream service the task calls, whose outages hold its jobs
        self.circuit = circuit
        #: alert a human (the app's notifiers) when one of its jobs is dead-lettered
        self.alert_on_dead = bool(alert_on_dead)
        self.rate = None if rate_limit is None else Rate.parse(rate_limit)
        self.concurrency = None if concurrency is None else check_count(concurrency, "concurrency")
        self.rate_limit_key = self._key_argument(rate_limit_key, "rate_limit_key", self.rate)
        self.concurrency_key = self._key_argument(
            concurrency_key, "concurrency_key", self.concurrency
        )
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def _key_argument(self, name: str | None, what: str, limit: object) -> str | None:
        """The argument a limit is kept per; it must exist (where the signature is known)."""
        if name is None:
            return None
        if limit is None:
            limit_name = "rate_limit" if what == "rate_limit_key" else "concurrency"
            raise ValidationError(f"{what} needs {limit_name}= on the task too")
        parameters = None if self.signature is None else self.signature.parameters
        if parameters is not None and (
            name not in parameters
            or parameters[name].kind
            in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ):
            raise ValidationError(f"{what}={name!r}: {self.name} has no argument named {name!r}")
        return name

    def _argument(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if self.signature is None:
            if name not in kwargs:
                raise ValidationError(f"{self.name} needs the keyword argument {name!r}")
            return kwargs[name]
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments[name]

    def limit_fields(
        self, options: CallOptions, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The job's limit buckets (NewJob fields) for one call whose arguments fit."""
        fields: dict[str, Any] = {}
        if self.concurrency is not None:
            key = options.concurrency_key
            if key is None and self.concurrency_key is not None:
                value = self._argument(self.concurrency_key, args, kwargs)
                key = check_key_value(value, f"argument {self.concurrency_key!r} (concurrency_key)")
            fields["concurrency_key"] = bucket(self.name, key)
            fields["concurrency_max"] = self.concurrency
        elif options.concurrency_key is not None:
            raise ValidationError(f"concurrency_key needs a concurrency= on task {self.name}")
        if self.rate is not None:
            key = options.rate_key
            if key is None and self.rate_limit_key is not None:
                value = self._argument(self.rate_limit_key, args, kwargs)
                key = check_key_value(value, f"argument {self.rate_limit_key!r} (rate_limit_key)")
            fields["rate_key"] = bucket(self.name, key)
            fields["rate_max"] = self.rate.count
            fields["rate_period"] = self.rate.period
        elif options.rate_key is not None:
            raise ValidationError(f"rate_key needs a rate_limit= on task {self.name}")
        return fields

    def build_job(
        self, options: CallOptions, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> NewJob:
        """One call of this task as a job to store: validated and encoded, or refused before
        anything is stored."""
        if options.unique_for is not None and options.unique_key is None:
            raise ValidationError("unique_for needs a unique_key")
        args_json, kwargs_json = encode_arguments(
            self.name, self.signature, args, kwargs, self._shapes
        )
        meta = dict(options.meta or {})
        if (carrier := tracing.trace_context(self.app.tracer_provider)) is not None:
            meta[tracing.META_KEY] = carrier  # the enqueuing code's trace, for the attempts
        meta_json = "{}" if not meta else encode(meta, "meta")
        max_bytes = self.app.settings.max_payload_bytes
        check_size(self.name, max_bytes, args_json, kwargs_json, meta_json)
        now = self.app.clock.now()
        if options.run_at is not None:
            run_at = max(options.run_at, now)
        else:
            run_at = now + (options.delay or 0.0)
        return NewJob(
            queue=options.queue or self.queue,
            task=self.name,
            args=args_json,
            kwargs=kwargs_json,
            meta=meta_json,
            priority=options.priority or self.priority,
            max_attempts=options.max_attempts or self.max_attempts,
            run_at=run_at,
            created_at=now,
            values=(list(args), dict(kwargs), meta),
            unique_key=options.unique_key,
            unique_for=options.unique_for,
            depends_on=options.depends_on or (),
            on_dependency_failure=options.on_dependency_failure,
            **self.limit_fields(options, args, kwargs),
            circuit=None if self.circuit is None else self.circuit.name,
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.fn(*args, **kwargs)
        return result

    def configure(self, **options: Any) -> Call:
        """Per-call options: priority, delay, run_at, queue, max_attempts, meta, unique_key,
        unique_for, depends_on, on_dependency_failure, rate_key and concurrency_key (the key
        value the task's limit is kept per), and connection (PostgreSQL: enqueue inside that
        connection's transaction)."""
        return Call(self, CallOptions.build(**options))

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """This task with these arguments, to enqueue later (in `enqueue_many`, say)."""
        return Signature(self, args, kwargs, CallOptions())

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Store a job that runs this task with these arguments; returns its handle."""
        return Call(self, CallOptions()).enqueue(*args, **kwargs)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return await Call(self, CallOptions()).enqueue_async(*args, **kwargs)

    def enqueue_many(self, calls: Iterable[Any]) -> list[Job]:
        """Store many jobs in one transaction. Each call is a tuple of args, a dict of kwargs,
        `(args, kwargs)`, or a signature of this task (`task.configure(...).s(...)`) with
        options of its own."""
        return Call(self, CallOptions()).enqueue_many(calls)

    async def enqueue_many_async(self, calls: Iterable[Any]) -> list[Job]:
        return await Call(self, CallOptions()).enqueue_many_async(calls)


def split_call(call: Any) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """`(1, 2)` → args; `{"x": 1}` → kwargs; `((1,), {"y": 2})` → both; a scalar → one arg."""
    if isinstance(call, Mapping):
        return (), call
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[0], list | tuple)
        and isinstance(call[1], Mapping)
    ):
        return call[0], call[1]
    if isinstance(call, list | tuple):
        return call, {}
    return (call,), {}


class Call:
    """A task with per-call options, ready to enqueue: `task.configure(priority=1).enqueue(...)`."""

    def __init__(self, task: Task[Any, Any], options: CallOptions) -> None:
        self.task = task
        self.options = options

    def configure(self, **options: Any) -> Call:
        return Call(self.task, self.options.merged(CallOptions.build(**options)))

    def enqueue(self, *args: Any, **kwargs: Any) -> Job:
        job = self.task.build_job(self.options, args, kwargs)
        return self.task.app.insert_sync([job], self.options.connection)[0]

    async def enqueue_async(self, *args: Any, **kwargs: Any) -> Job:
        job = self.task.build_job(self.options, args, kwargs)
        return (await self.task.app.insert_async([job], self.options.connection))[0]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.task, args, kwargs, self.options)

    def _build_many(self, calls: Iterable[Any]) -> list[NewJob]:
        jobs = []
        for call in calls:
            if isinstance(call, Signature):
                if call.task is not self.task:
                    raise ValidationError(
                        f"enqueue_many of {self.task.name} got a signature of {call.task.name}"
                    )
                options = self.options.merged(call.options)
                jobs.append(self.task.build_job(options, call.args, call.kwargs))
            else:
                jobs.append(self.task.build_job(self.options, *split_call(call)))
        return jobs

    def enqueue_many(self, calls: Iterable[Any]) -> list[Job]:
        return self.task.app.insert_sync(self._build_many(calls), self.options.connection)

    async def enqueue_many_async(self, calls: Iterable[Any]) -> list[Job]:
        return await self.task.app.insert_async(self._build_many(calls), self.options.connection)


@dataclass(frozen=True, slots=True)
class Signature:
    """A task, its arguments and per-call options, to enqueue later: `task.s(1, 2)`,
    `task.configure(priority=1).s(1, 2)`."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    options: CallOptions

    def enqueue(self) -> Job:
        return Call(self.task, self.options).enqueue(*self.args, **self.kwargs)

    async def enqueue_async(self) -> Job:
        return await Call(self.task, self.options).enqueue_async(*self.args, **self.kwargs)
