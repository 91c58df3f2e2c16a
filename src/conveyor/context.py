"""`Context`: what a task with `pass_context=True` gets as its first argument."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from conveyor.errors import BackendUnavailable, ValidationError
from conveyor.logging import get_logger
from conveyor.payload import storable_text

if TYPE_CHECKING:
    from conveyor.backends.faces import Backend
    from conveyor.job import Job


#: Which reason to stop a job wins when several come (see `Context.request_cancel`).
_RANK = {"cancelled": 2, "lease lost": 1}
#: How long a sync task's progress report waits for the worker's loop before giving up.
PROGRESS_WAIT_S = 30.0
#: At most one progress write per job this often (a few a second).
PROGRESS_EVERY_S = 0.25


class Context:
    """The running job as its task sees it: ids, progress reporting, cancellation, a logger."""

    def __init__(
        self,
        job: Job,
        worker_id: str,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.worker_id = worker_id
        self._backend = backend
        self._loop = loop
        self.cancel_reason: str | None = None
        #: when the task began (monotonic; None until then)
        self.began: float | None = None
        #: until when the worker surely holds the job's lease, on the monotonic clock (the
        #: worker moves it at every renewal)
        self.lease_ends = math.inf
        self._log: Any = None
        self._now = now
        # progress throttling: the latest report, when and with which stage the last went out
        self._latest: tuple[float, str | None, str | None] | None = None
        self._written_at = -PROGRESS_EVERY_S
        self._written_stage: str | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    @property
    def log(self) -> Any:
        """A structured logger bound to the job's id, task, queue and attempt."""
        if self._log is None:
            self._log = get_logger("conveyor.task").bind(
                job_id=self.job.id,
                task=self.job.task,
                queue=self.job.queue,
                attempt=self.job.attempt,
            )
        return self._log

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def attempt(self) -> int:
        """The attempt now running, from 1."""
        return self.job.attempt

    @property
    def cancelled(self) -> bool:
        """True once someone asked this job to stop (a sync task should poll it and return)."""
        return self.cancel_reason is not None

    def lease_lapsed(self) -> bool:
        """Whether the job's lease has run out before the worker could renew it."""
        return time.monotonic() >= self.lease_ends

    def request_cancel(self, reason: str) -> None:
        # A user's cancel wins over anything later (the job must not be handed back or
        # retried); a lost lease wins over a shutdown (the job is no longer this worker's to
        # hand back).
        if _RANK.get(reason, 0) >= _RANK.get(self.cancel_reason or "", 0):
            self.cancel_reason = reason

    def progress(
        self, percent: float, stage: str | None = None, message: str | None = None
    ) -> Awaitable[None]:
        """Report progress (0-100), with an optional stage name and message.

        From an async task: `await ctx.progress(50, stage="encode")`. From a sync task, call it
        plainly. Reports are throttled: the job's row and the event stream get at most one every
        PROGRESS_EVERY_S per job (a new stage goes out at once); the latest always gets out.
        """
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise ValidationError(f"progress must be a number from 0 to 100, got {percent!r}")
        if not 0 <= percent <= 100:
            raise ValidationError(f"progress must be from 0 to 100, got {percent!r}")
        for value, what in ((stage, "stage"), (message, "message")):
            if value is not None and (not isinstance(value, str) or len(value) > 500):
                raise ValidationError(f"{what} must be text of at most 500 characters")
        if stage is not None:
            stage = storable_text(stage)
        if message is not None:
            message = storable_text(message)
        self.job.progress = float(percent)
        if stage is not None:
            self.job.stage = stage
        if message is not None:
            self.log.info("job.progress", progress=percent, stage=stage, message=message)
        report = (float(percent), stage, message)
        if _on_loop(self._loop):
            return self._report(report)
        future = asyncio.run_coroutine_threadsafe(_awaited(self._report(report)), self._loop)
        try:
            future.result(timeout=PROGRESS_WAIT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self.log.warning("job.progress_failed", error="the worker did not answer in time")
        return _DONE

    def _report(self, report: tuple[float, str | None, str | None]) -> Awaitable[None]:
        """On the worker's loop: write now, or leave the latest report for a write due soon."""
        self._latest = report
        if self._flush is not None:
            return _DONE  # a write is due: it takes the latest report
        wait = self._written_at + PROGRESS_EVERY_S - time.monotonic()
        if wait <= 0 or report[1] != self._written_stage:
            return self._write_latest()
        self._flush = self._loop.call_later(wait, self._flush_now)
        return _DONE

    def _flush_now(self) -> None:
        self._flush = None
        self._flushing = self._loop.create_task(self._write_latest())

    async def _write_latest(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        assert self._latest is not None
        percent, stage, message = self._latest
        self._written_at, self._written_stage = time.monotonic(), stage
        # Progress is a report, not the job's work: a store hiccup is logged, never raised.
        try:
            await self._backend.set_progress(
                self.job.id,
                self.worker_id,
                self.job.attempt,
                percent,
                stage,
                message,
                self._now(),
            )
        except BackendUnavailable as exc:
            self.log.warning("job.progress_failed", error=str(exc))


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


class _Done:
    """An awaitable that is already done: what a sync task gets back from `progress`."""

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
