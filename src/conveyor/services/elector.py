"""Leader election among all workers: the leadership is a lease in the store that the leader
renews every round and anyone may take once it has run out. The elector takes it, renews it and
gives it up, and says when it is gained or lost; what a leader does is the maintainer's.

A leader knows how long its lease lasts on its own monotonic clock (from the moment it asked to
renew it): when that passes without a renewal, the leadership counts as lost at once — so a
leader frozen past its lease (a pause, a hung connection) stops its leader work as it wakes, and
resumes it only once it has renewed. Its writes are fenced in the store too: a rescue or a cron
fire applies only while the store still names it leader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.backends.faces import Backend
from conveyor.logging import get_logger
from conveyor.services.base import Service

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.services")

#: The store's name for the leadership.
LEADERSHIP = "maintenance"


class Elector(Service):
    """Takes and renews this worker's leadership every round; tells `on_change` (with True or
    False) each time it is gained or lost."""

    name = "elector"

    def __init__(
        self,
        app: App,
        backend: Backend,
        holder: str,
        interval: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend
        #: this worker's id, under which the store records the leadership
        self.holder = holder
        self.on_change = on_change
        #: whether the store named this worker leader at its last renewal
        self._held = False
        #: until when that renewal lasts, on this process's monotonic clock
        self._lease_ends = 0.0
        #: whether this worker leads, as last told to `on_change`
        self._leading = False
        self._lapse: asyncio.TimerHandle | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this worker leads now: it won the lease, and the lease has not run out on
        its own clock since it asked for it."""
        return self._held and time.monotonic() < self._lease_ends

    async def run_once(self) -> None:
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        asked = time.monotonic()
        try:
            held = await self.backend.try_lead(LEADERSHIP, self.holder, now + lease, now)
        except BaseException:
            self._held = False
            self._announce(False, reason="store unavailable")
            raise
        self._held, self._lease_ends = held, asked + lease
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        if not self.is_leader:  # refused, or renewed too late to count
            self._announce(False)
            return
        self._lapse = asyncio.get_running_loop().call_later(
            self._lease_ends - time.monotonic(), self._lapsed
        )
        self._announce(True)

    def _lapsed(self) -> None:
        self._lapse = None
        self._announce(False, reason="the lease ran out before it was renewed")

    def _announce(self, leading: bool, **why: Any) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("leader.elected", worker_id=self.holder)
        else:
            (log.warning if why else log.info)("leader.lost", worker_id=self.holder, **why)
        if self.on_change is not None:
            self.on_change(leading)

    async def resign(self) -> None:
        """Give the leadership up (on shutdown), so that another worker takes it at once."""
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        if self._leading:
            self._leading = False
            if self.on_change is not None:
                self.on_change(False)
        if self._held:
            self._held = False
            await self.backend.resign(LEADERSHIP, self.holder)
