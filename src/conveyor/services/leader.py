"""Maintenance, run by one elected leader among all workers: the leadership is a lease that the
leader renews every round and anyone may take once it has run out.

A leader knows how long its lease lasts on its own monotonic clock (from the moment it asked to
renew it): past that, it does no leader work until it has renewed — so a leader frozen past its
lease (a pause, a hung connection) wakes up a follower. Its writes are fenced in the store too:
a rescue or a cron fire applies only while the store still names it leader."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from conveyor.backends.base import JobFilter
from conveyor.backends.faces import Backend
from conveyor.job import JobState
from conveyor.logging import get_logger
from conveyor.services.base import Service
from conveyor.services.rescuer import rescue_expired_leases

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.services")

LEADERSHIP = "maintenance"
#: Workers not heard from for this long (or ten leases, if longer) are forgotten.
FORGET_WORKERS_AFTER_S = 3600.0
#: How long progress reports stay for the event stream (each job keeps its latest anyway).
KEEP_PROGRESS_S = 3600.0
#: How often the leader deletes finished jobs past their retention.
PRUNE_EVERY_S = 60.0


class Maintenance(Service):
    name = "maintenance"

    def __init__(self, app: App, backend: Backend, worker_id: str, interval: float) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend
        self.worker_id = worker_id
        self._leading = False
        #: while leading: until when the lease lasts, on this process's monotonic clock
        self._lease_ends = 0.0
        self._pruned_at: float | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this worker leads now: it won the lease, and the lease has not run out on
        its own clock since it asked for it."""
        return self._leading and time.monotonic() < self._lease_ends

    async def run_once(self) -> None:
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        asked = time.monotonic()
        was_leader = self.is_leader
        try:
            leading = await self.backend.try_lead(LEADERSHIP, self.worker_id, now + lease, now)
        except BaseException:
            self._leading = False
            if was_leader:
                log.warning("leader.lost", worker_id=self.worker_id, reason="store unavailable")
            raise
        self._leading, self._lease_ends = leading, asked + lease
        if leading != was_leader:
            log.info("leader.elected" if leading else "leader.lost", worker_id=self.worker_id)
        if not leading:
            return
        await rescue_expired_leases(self.app, self.backend, leader=self.worker_id)
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

    async def resign(self) -> None:
        if self._leading:
            self._leading = False
            await self.backend.resign(LEADERSHIP, self.worker_id)
