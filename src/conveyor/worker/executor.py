"""One claimed job in, exactly one `Outcome` out: returned, raised, retried, discarded, timed out,
cancelled, stopped for a lost lease, or handed back on shutdown.

Everything the task wrote (its result, its error's message and traceback, the reasons it gave)
is made storable here — NUL characters and lone surrogates become U+FFFD — so no backend is ever
handed text it cannot keep."""

from __future__ import annotations

import asyncio
import contextvars
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor import tracing
from conveyor.circuit import is_downstream_failure
from conveyor.context import Context
from conveyor.errors import LeaseLost, TaskTimeout, UnknownTask, ValidationError
from conveyor.job import Job, JobState, Outcome, error_record
from conveyor.logging import get_logger
from conveyor.payload import encode_result, storable_text
from conveyor.retry import RetryPolicy, decide, downstream_down
from conveyor.worker.threads import TaskThreads, Work

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.worker")

#: Why a running job is being stopped.
CANCELLED = "cancelled"
SHUTDOWN = "shutdown"
#: its lease ran out before a heartbeat could renew it, or the store gave the job to another
LEASE_LOST = "lease lost"


@dataclass(frozen=True, slots=True)
class Finished:
    """An outcome and what the completer needs to report it."""

    job: Job
    outcome: Outcome
    duration: float


_OWN_CODE = str(Path(__file__).resolve().parent.parent)


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the task's own frames on: conveyor's frames above them are noise."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_CODE):
        tb = tb.tb_next
    if tb is None:
        tb = exc.__traceback__
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _safe_text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not cost the job its outcome
        return f"<unprintable {type(exc).__name__}>"


def error_entry(exc: BaseException, worker_id: str, at: float, attempt: int) -> dict[str, Any]:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        trace = _user_traceback(exc)
    except Exception:
        trace = f"{name}: {_safe_text(exc)} (the traceback could not be formatted)"
    return error_record(
        storable_text(name),
        storable_text(_safe_text(exc)),
        storable_text(trace),
        at,
        worker_id,
        attempt,
    )


class NotStarted(Exception):
    """The job was stopped before its task began."""


def _not_to_start(ctx: Context) -> bool:
    """Whether a job about to begin must not: it was asked to stop, or its lease has lapsed
    (a worker that was paused past it: the job may be running elsewhere by now)."""
    if ctx.cancel_reason is None and ctx.lease_lapsed():
        ctx.request_cancel(LEASE_LOST)
    return ctx.cancel_reason is not None


class Executor:
    def __init__(
        self,
        app: App,
        worker_id: str,
        threads: TaskThreads,
        began: Callable[[Job, float], None] = lambda job, at: None,
    ) -> None:
        self.app = app
        self.worker_id = worker_id
        self.threads = threads
        #: told of each attempt as it begins (with the monotonic time), for the store to know
        self.began = began
        self._fallback_policy = RetryPolicy(backoff=app.default_backoff)

    async def execute(self, job: Job, ctx: Context) -> Finished:
        started = time.monotonic()
        if (recorder := tracing.tracer(self.app.tracer_provider)) is None:
            outcome = await self._outcome_of(job, ctx, traced=False)
        else:
            with tracing.attempt(recorder, job) as span:
                outcome = await self._outcome_of(job, ctx, traced=True)
                tracing.outcome(span, outcome)
        ended = time.monotonic()
        if ctx.began is not None:
            outcome.ran_for = ended - ctx.began
        return Finished(job, outcome, ended - started)

    async def _outcome_of(self, job: Job, ctx: Context, traced: bool) -> Outcome:
        try:
            return await self._run(job, ctx, traced)
        except Exception as exc:  # a fault of conveyor's own: still exactly one outcome
            log.error("job.internal_error", job_id=job.id, task=job.task, exc_info=exc)
            return self._outcome(job, JobState.DEAD, error=exc, note="internal error")

    async def _run(self, job: Job, ctx: Context, traced: bool) -> Outcome:
        task = self.app.tasks.get(job.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            exc = UnknownTask(
                f"task {job.task!r} is not registered in this worker (known: {known})"
            )
            return self._failed(job, self._fallback_policy, exc)
        circuit = None if task.circuit is None else task.circuit.name
        if _not_to_start(ctx):
            return self.not_started(job, ctx)
        log.info("job.started", job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempt)
        ctx.began = time.monotonic()
        if job.started_at is None:  # claimed ahead: the store learns of its start from here
            self.began(job, ctx.began)
        args = (ctx, *job.args) if task.pass_context else tuple(job.args)
        work: Work | None = None
        deadline: asyncio.Timeout | None = None

        def in_thread() -> Any:
            # A thread may come free only after the lease ran out (the worker was paused).
            if _not_to_start(ctx):
                raise NotStarted()
            return task.fn(*args, **job.kwargs)

        try:
            if task.is_async:
                # Checked again at the last moment: the worker may have been paused since the
                # check above (between it and the task's first line, its lease ran out).
                if _not_to_start(ctx):
                    raise NotStarted()
                call = task.fn(*args, **job.kwargs)
            else:
                # traced: the task's thread runs in the attempt's span (its spans nest in it)
                run = contextvars.copy_context().run if traced else None
                work = self.threads.submit(in_thread if run is None else lambda: run(in_thread))
                call = work.future
            if task.timeout is None:
                result = await call
            else:
                async with asyncio.timeout(task.timeout) as deadline:
                    result = await call
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if ctx.cancel_reason is None:
                if current is not None and current.cancelling():
                    raise
                # The task raised CancelledError of its own accord: an error like any other.
                return self._failed(job, task.retry, exc, circuit)
            if current is not None:
                current.uncancel()
            if work is not None:
                self.threads.abandon(work)
            return self._stopped(job, ctx)
        except NotStarted:
            return self.not_started(job, ctx)
        except TimeoutError as exc:
            if deadline is None or not deadline.expired():
                return self._failed(job, task.retry, exc, circuit)
            if work is not None:
                self.threads.abandon(work)
            ctx.request_cancel("timeout")
            return self._failed(job, task.retry, TaskTimeout(f"timed out after {task.timeout}s"))
        except BaseException as exc:
            if ctx.cancel_reason in (CANCELLED, LEASE_LOST):
                return self._stopped(job, ctx)
            return self._failed(job, task.retry, exc, circuit)
        if ctx.cancel_reason in (CANCELLED, LEASE_LOST):
            # Returned after it was asked to stop: whether it finished is unknown.
            return self._stopped(job, ctx)
        try:
            result_json = encode_result(result, f"the result of {job.task}")
        except ValidationError as exc:
            # The work is done; running it again would repeat its effects. Straight to dead.
            return self._outcome(job, JobState.DEAD, error=exc, note="result could not be stored")
        return self._make(job, JobState.SUCCEEDED, result=result_json)

    def hand_back(self, job: Job, note: str = "handed back on shutdown") -> Outcome:
        """Back to `queued`, the attempt not counted: the worker is shutting down (or never
        knew it had the job)."""
        return self._make(job, JobState.QUEUED, note=note)

    def cancelled_before_start(self, job: Job) -> Outcome:
        return self._make(job, JobState.CANCELLED, note="cancelled before it began")

    def not_started(self, job: Job, ctx: Context) -> Outcome:
        """The outcome of a job stopped before its task began."""
        if ctx.cancel_reason == LEASE_LOST:  # it never ran: the attempt does not count
            return self.hand_back(job, note="lease lost before it began: handed back")
        return self._stopped(job, ctx)

    def _stopped(self, job: Job, ctx: Context) -> Outcome:
        if ctx.cancel_reason == SHUTDOWN:
            return self.hand_back(job)
        if ctx.cancel_reason == LEASE_LOST:
            task = self.app.tasks.get(job.task)
            backoff = (task.retry if task else self._fallback_policy).backoff
            # Like a lost worker: retried whatever retry_on says, the attempt counts.
            return self._failed(job, RetryPolicy(backoff=backoff), LeaseLost(LEASE_LOST))
        return self._make(job, JobState.CANCELLED, note="cancelled")

    def _failed(
        self, job: Job, policy: RetryPolicy, exc: BaseException, circuit: str | None = None
    ) -> Outcome:
        downstream = circuit is not None and is_downstream_failure(exc)
        if downstream:
            assert circuit is not None
            decision = downstream_down(policy, job.attempt, circuit)
        else:
            decision = decide(policy, exc, job.attempt, job.max_attempts)
        return self._outcome(
            job,
            decision.state,
            error=exc,
            note=decision.note,
            delay=decision.delay,
            refund=downstream,
        )

    def _outcome(
        self,
        job: Job,
        state: JobState,
        *,
        error: BaseException,
        note: str | None,
        delay: float = 0.0,
        refund: bool = False,
    ) -> Outcome:
        now = self.app.clock.now()
        return self._make(
            job,
            state,
            at=now,
            error=error_entry(error, self.worker_id, now, job.attempt),
            run_at=now + delay if state is JobState.RETRYING else None,
            note=note,
            refund=refund,
        )

    def _make(self, job: Job, state: JobState, at: float | None = None, **fields: Any) -> Outcome:
        at = self.app.clock.now() if at is None else at
        note = fields.get("note")
        if note is not None:  # reasons may be the task's own words (Retry, Discard)
            fields["note"] = storable_text(note)
        return Outcome(job.id, self.worker_id, job.attempt, state, at, **fields)
