"""On the elected leader: the alert rules that look at the whole store — queues backing up,
queues no live worker serves."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from conveyor.services.base import Service

if TYPE_CHECKING:
    from conveyor.app import App


class Watch(Service):
    name = "watch"

    def __init__(self, app: App, interval: float) -> None:
        super().__init__(interval)
        self.app = app
        #: per queue with a rule, since when no live worker has served it (this leader's view)
        self._missing_since: dict[str, float] = {}

    def reset(self) -> None:
        self._missing_since.clear()  # a new leader starts watching afresh

    async def run_once(self) -> None:
        alerts = self.app.alerts
        if not (alerts.backlog_rules or alerts.no_worker_rules):
            return
        store = self.app.backend.sync
        now = self.app.clock.now()
        for backlog in alerts.backlog_rules:
            depth, age = await asyncio.to_thread(store.backlog, backlog.queue, now)
            if (backlog.depth is not None and depth > backlog.depth) or (
                backlog.older_than is not None and age is not None and age > backlog.older_than
            ):
                alerts.backlog(backlog, depth, age)
        if not alerts.no_worker_rules:
            return
        workers = await asyncio.to_thread(store.list_workers)
        lease = self.app.settings.lease_seconds
        for rule in alerts.no_worker_rules:
            serving = [w for w in workers if w.queues is None or rule.queue in w.queues]
            if any(not w.is_lost(now, lease) for w in serving):
                self._missing_since.pop(rule.queue, None)
                continue
            last_seen = max((w.last_beat for w in serving), default=now)
            since = self._missing_since.setdefault(rule.queue, min(last_seen, now))
            if now - since >= rule.after:
                alerts.workers_missing(rule, now - since)
