"""Writes outcomes in batches: whatever finished while the last write was in flight goes in the
next one, so a busy worker writes many outcomes per transaction and an idle one writes at once.
The starts of jobs still running go with them (a job claimed ahead counts as begun only once the
store knows its start); a finished job's start goes in its outcome.

A batch the store cannot take for now (`BackendUnavailable`) is tried again, with backoff, for
as long as the worker runs. A batch the store refuses for another reason is split until the
outcome at fault stands alone: that one is written without what its task wrote (result, error
text), and is given up only if even that fails — so one bad outcome never holds back the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from conveyor.backends.faces import Backend
from conveyor.errors import BackendUnavailable
from conveyor.job import Job, Outcome, Start
from conveyor.logging import Outage, get_logger
from conveyor.worker.executor import Finished

log = get_logger("conveyor.worker")

MAX_BATCH = 1000
#: A start goes with the next outcomes, or on its own once it is this old (seconds): a job
#: shorter than that never needs a write of its own for its start.
START_AFTER_S = 0.01
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Completer:
    def __init__(
        self,
        backend: Backend,
        on_written: Callable[[list[Finished], list[int], set[int]], None],
        now: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._on_written = on_written
        self._now = now
        self._pending: list[Finished] = []
        #: when the oldest outcome in `_pending`, and in `_inflight`, was added (monotonic)
        self._pending_since = 0.0
        self._inflight_since = 0.0
        #: jobs begun whose start is not written yet, and when they began (monotonic)
        self._began: dict[tuple[int, int], tuple[Job, float]] = {}
        self._start_timer: asyncio.TimerHandle | None = None
        self._inflight: list[Finished] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._outage = Outage(log, "outcomes.write")
        #: jobs of the batch in flight whose outcome the store refused even bare: given up
        self._given_up: set[int] = set()

    def began(self, job: Job, at: float) -> None:
        self._began[job.id, job.attempt] = (job, at)
        if self._start_timer is None:
            loop = asyncio.get_running_loop()
            self._start_timer = loop.call_later(START_AFTER_S, self._starts_due)

    def _starts_due(self) -> None:
        self._start_timer = None
        if self._began:
            self._wake.set()

    def add(self, finished: Finished) -> None:
        self._began.pop((finished.job.id, finished.job.attempt), None)
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(finished)
        self._idle.clear()
        self._wake.set()

    @property
    def unwritten(self) -> int:
        return len(self._inflight) + len(self._pending)

    def unwritten_for(self, now: float) -> float:
        """How long the oldest outcome not written yet has waited (seconds; 0 if none)."""
        if self._inflight:
            return now - self._inflight_since
        return now - self._pending_since if self._pending else 0.0

    @property
    def pending(self) -> list[tuple[int, int]]:
        """The attempts whose outcome is not written yet: they are still leased to this
        worker, as `(job id, attempt)`."""
        return [(f.job.id, f.job.attempt) for f in (*self._inflight, *self._pending)]

    async def run(self) -> None:
        """Write batches until `close()` and everything added has been written."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or (self._began and self._start_timer is None):
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._inflight, self._inflight_since = batch, self._pending_since
                applied = await self._write(batch, self._starts())
                given_up, self._given_up = self._given_up, set()
                self._inflight = []
                self._on_written(batch, applied, given_up)
            self._idle.set()
            if self._closed:
                return

    def _starts(self) -> list[Start]:
        """The starts not written yet (taken: a start is written once). Each says when its job
        began on this worker's clock; the store takes that to its own as it writes, however
        long the write waited (an outage)."""
        if not self._began:
            return []
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        at, mono = self._now(), time.monotonic()
        began, self._began = self._began, {}
        return [
            Start(job.id, job.worker_id or "", job.attempt, at, mono - t)
            for job, t in began.values()
        ]

    async def _write(self, batch: list[Finished], starts: Sequence[Start] = ()) -> list[int]:
        # An outcome is never dropped for an outage: the write is tried again, while the
        # heartbeat keeps the jobs' leases alive. If the worker must stop first, the leases run
        # out and the jobs are rescued: nothing is lost.
        attempt = 0
        while True:
            try:
                applied = await self._backend.complete([f.outcome for f in batch], starts)
            except BackendUnavailable as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                self._outage.failed(exc, count=len(batch), retry_in_s=delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                if not batch:
                    # A start the store refuses is given up: were its worker lost, the job
                    # would count as never begun.
                    log.error("job.starts_unwritten", count=len(starts), error=repr(exc))
                    return []
                if starts:  # apart from the outcomes, so that a bad outcome cannot hold them
                    await self._write([], starts)
                return await self._isolate(batch, exc)
            self._outage.recovered()
            return applied

    async def _isolate(self, batch: list[Finished], exc: Exception) -> list[int]:
        """The store refused the batch: write its halves apart until the bad outcome is alone."""
        if len(batch) > 1:
            half = len(batch) // 2
            return [*await self._write(batch[:half]), *await self._write(batch[half:])]
        [finished] = batch
        bare = _without_task_output(finished.outcome, exc)
        if bare != finished.outcome:
            log.error(
                "job.outcome_unstorable",
                job_id=finished.job.id,
                task=finished.job.task,
                attempt=finished.job.attempt,
                error=repr(exc),
            )
            return await self._write([dataclasses.replace(finished, outcome=bare)])
        # Not even the bare outcome is taken: give it up. The job's lease runs out and the
        # leader rescues it, as if this worker had died.
        log.error(
            "outcomes.write_failed",
            job_id=finished.job.id,
            task=finished.job.task,
            attempt=finished.job.attempt,
            error=repr(exc),
        )
        self._given_up.add(finished.job.id)
        return []

    async def flush(self) -> None:
        """Return once everything added so far is written."""
        await self._idle.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


def _without_task_output(outcome: Outcome, exc: Exception) -> Outcome:
    """The outcome with nothing the task wrote: no result, an error that only says why."""
    error = outcome.error
    if error is not None:
        error = {
            **error,
            "message": f"the error could not be stored ({type(exc).__name__})",
            "traceback": None,
        }
    note = None if outcome.note is None else "the outcome could not be stored as written"
    return dataclasses.replace(outcome, result=None, error=error, note=note)
