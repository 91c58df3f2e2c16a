"""The leader-only services of a worker, run while it leads: started when the elector says the
leadership is gained, stopped when it is lost — at once: their tasks are cancelled then and
there, so that no round of leader work begins past that moment — and stopped on shutdown. The
services themselves know nothing of leadership."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from conveyor.logging import get_logger
from conveyor.services.base import Service

log = get_logger("conveyor.services")

#: How long services whose leadership was lost get to end once cancelled, before the maintainer
#: goes on without them (one in the middle of a call to a hung store); each is started again only
#: once it has ended.
END_WAIT_S = 2.0


class Maintainer:
    """Runs `services` while this worker leads. `leadership_changed` is the elector's
    `on_change`; `run()` until `stop()`."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self._leading = False
        self._stopping = False
        #: set at a change of leadership, at stop, and when a service's task ends
        self._changed = asyncio.Event()
        self._tasks: dict[Service, asyncio.Task[None]] = {}
        #: services cancelled for a lost leadership whose task has not ended yet
        self._ending: set[Service] = set()

    @property
    def running(self) -> bool:
        """Whether leader-only services run now (or some are still ending)."""
        return any(not task.done() for task in self._tasks.values())

    def leadership_changed(self, leading: bool) -> None:
        """Start the services (in a moment) or stop them (now: cancelled before this returns)."""
        self._leading = leading
        if not leading:
            self._cancel()
        self._changed.set()

    async def run(self) -> None:
        try:
            while not self._stopping:
                self._changed.clear()
                self._forget_ended()
                if self._leading:
                    self._start()
                elif self._ending:
                    await self._wait_ending()
                await self._changed.wait()
            # Stopping: the services were told to stop after their round in progress.
            if self._tasks:
                await asyncio.wait(self._tasks.values())
        finally:
            for task in self._tasks.values():
                task.cancel()

    def stop(self) -> None:
        """Stop the services after their round in progress, and then the maintainer."""
        self._stopping = True
        for service in self._tasks:
            service.stop()
        self._changed.set()

    def _start(self) -> None:
        """Start each service not running; one still ending starts once it has ended."""
        loop = asyncio.get_running_loop()
        for service in self.services:
            if service not in self._tasks:
                task = loop.create_task(service.run(), name=f"conveyor.{service.name}")
                task.add_done_callback(lambda _: self._changed.set())
                self._tasks[service] = task

    def _cancel(self) -> None:
        for service, task in self._tasks.items():
            task.cancel()
            self._ending.add(service)

    def _forget_ended(self) -> None:
        """Forget the tasks cancelled for a lost leadership that have ended, so that the next
        leadership starts them again (one that ended otherwise, while leading, is not started
        again until the leadership is lost and gained)."""
        for service in [s for s in self._ending if self._tasks[s].done()]:
            self._ending.discard(service)
            del self._tasks[service]

    async def _wait_ending(self) -> None:
        ending = [self._tasks[s] for s in self._ending]
        await asyncio.wait(ending, timeout=END_WAIT_S)
        if not all(task.done() for task in ending):
            log.warning(
                "maintainer.services_not_ended",
                services=sorted(s.name for s in self._ending if not self._tasks[s].done()),
                reason="in a call to the store since the leadership was lost",
            )
