"""Periodic jobs, fired by the elected leader: every tick of every `@app.periodic` entry once,
however many workers run and whichever of them leads. The store keeps a row per (entry, tick)
dealt with, written in the same transaction as the job it fires, so a second leader, a restart
at the tick or a stale cache cannot fire a tick twice."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from conveyor.backends.faces import Backend
from conveyor.cron import Periodic
from conveyor.logging import get_logger
from conveyor.services.base import Service
from conveyor.task import CallOptions

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.cron")

#: A tick found later than this is one that was missed (no leader ran at the time): with
#: `catch_up=False` it is skipped.
MISSED_AFTER_S = 60.0


class Scheduler(Service):
    name = "scheduler"

    def __init__(
        self, app: App, backend: Backend, interval: float, leader_id: str | None = None
    ) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend
        #: the leader's id: a fire applies only while the store still names it leader
        self.leader_id = leader_id
        #: the latest tick dealt with per entry, as the store said when this worker took the lead
        self._last: dict[str, float] | None = None

    def reset(self) -> None:
        self._last = None  # read the store again on taking the lead

    async def run_once(self) -> None:
        if not self.app.periodics:
            return
        if self._last is None:
            ticks = await self.backend.periodic_ticks()
            self._last = {name: record.tick for name, record in ticks.items()}
        now = self.app.clock.now()
        for entry in self.app.periodics.values():
            await self.fire_due(entry, now)

    async def fire_due(self, entry: Periodic, now: float) -> None:
        """Deal with the entry's latest tick at or before `now`, if nothing has yet."""
        assert self._last is not None
        tick = entry.schedule.latest_at_or_before(now)
        last = self._last.get(entry.name)
        if last is not None and tick <= last:
            return
        fields = {"name": entry.name, "tick": _iso(tick)}
        if last is None:
            # First sight of the entry: its schedule starts now; no earlier tick was missed.
            await self.backend.fire_periodic(entry.name, tick, None, now, self.leader_id)
            log.info("cron.started", **fields, next=_iso(entry.schedule.next_after(now)))
        elif entry.catch_up or now - tick <= max(MISSED_AFTER_S, 3 * self.interval):
            job = entry.task.build_job(CallOptions(), entry.args, entry.kwargs)
            stored = await self.backend.fire_periodic(entry.name, tick, job, now, self.leader_id)
            if stored is not None:
                log.info("cron.fired", **fields, job_id=stored.id, late_s=round(now - tick, 3))
        else:
            await self.backend.fire_periodic(entry.name, tick, None, now, self.leader_id)
            log.info("cron.skipped", **fields, reason="missed while no worker ran")
        self._last[entry.name] = tick

    def next_interval(self) -> float:
        """Sleep until the next tick of any entry (or one interval at most)."""
        now = self.app.clock.now()
        upcoming = [e.schedule.next_after(now) - now for e in self.app.periodics.values()]
        return max(0.0, min([self.interval, *upcoming]))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
