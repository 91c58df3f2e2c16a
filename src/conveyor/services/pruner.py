"""On the leader: forget the workers long gone, and delete finished jobs past their retention
(with their history), old cron ticks and old progress reports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.base import JobFilter
from conveyor.backends.faces import Backend
from conveyor.job import JobState
from conveyor.logging import get_logger
from conveyor.services.base import Service

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.services")

#: Workers not heard from for this long (or ten leases, if longer) are forgotten.
FORGET_WORKERS_AFTER_S = 3600.0
#: How long progress reports stay for the event stream (each job keeps its latest anyway).
KEEP_PROGRESS_S = 3600.0
#: How often the leader deletes finished jobs past their retention.
PRUNE_EVERY_S = 60.0


class Pruner(Service):
    """Forgets lost workers every round; deletes what is past its retention in its first
    round, then at most every PRUNE_EVERY_S."""

    name = "pruner"

    def __init__(self, app: App, backend: Backend, interval: float) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend
        self._pruned_at: float | None = None

    async def run_once(self) -> None:
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        await self.backend.prune_workers(max(FORGET_WORKERS_AFTER_S, 10 * lease), now)
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
            await self.prune_finished_jobs(now)
            self._pruned_at = now

    async def prune_finished_jobs(self, now: float) -> int:
        """Delete succeeded jobs after `retention_succeeded`, dead and cancelled ones after
        `retention_failed`, with their history."""
        settings = self.app.settings
        succeeded = JobFilter.of([JobState.SUCCEEDED])
        pruned = await self.backend.purge(succeeded, settings.retention_succeeded, now)
        failed = JobFilter.of([JobState.DEAD, JobState.CANCELLED])
        pruned += await self.backend.purge(failed, settings.retention_failed, now)
        if pruned:
            log.info("jobs.pruned", count=pruned)
        await self.backend.prune_ticks(settings.retention_failed, now)
        await self.backend.prune_progress(KEEP_PROGRESS_S, now)
        return pruned
