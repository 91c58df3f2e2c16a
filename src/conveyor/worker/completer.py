"""Writes outcomes in batches: whatever finished while the last write was in flight goes in the
next one, so a busy worker writes many outcomes per transaction and an idle one writes at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conveyor.backends.base import Backend
from conveyor.errors import BackendUnavailable
from conveyor.logging import get_logger
from conveyor.worker.executor import Finished

log = get_logger("conveyor.worker")

MAX_BATCH = 1000
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Completer:
    def __init__(
        self, backend: Backend, on_written: Callable[[list[Finished], list[int]], None]
    ) -> None:
        self._backend = backend
        self._on_written = on_written
        self._pending: list[Finished] = []
        self._inflight: list[Finished] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def add(self, finished: Finished) -> None:
        self._pending.append(finished)
        self._idle.clear()
        self._wake.set()

    @property
    def unwritten(self) -> int:
        return len(self._inflight) + len(self._pending)

    @property
    def pending_ids(self) -> list[int]:
        """Jobs whose outcome is not written yet: they are still leased to this worker."""
        return [f.job.id for f in self._inflight] + [f.job.id for f in self._pending]

    async def run(self) -> None:
        """Write batches until `close()` and everything added has been written."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._inflight = batch
                applied = await self._write(batch)
                self._inflight = []
                self._on_written(batch, applied)
            self._idle.set()
            if self._closed:
                return

    async def _write(self, batch: list[Finished]) -> list[int]:
        # An outcome is never dropped: a failed write is retried, while the heartbeat keeps the
        # jobs' leases alive. If the worker must stop first, the leases run out and the jobs are
        # rescued: nothing is lost.
        attempt = 0
        while True:
            try:
                return await self._backend.complete([f.outcome for f in batch])
            except Exception as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                level = log.warning if isinstance(exc, BackendUnavailable) else log.error
                level("outcomes.write_failed", count=len(batch), error=repr(exc), retry_in_s=delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def flush(self) -> None:
        """Return once everything added so far is written."""
        await self._idle.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
