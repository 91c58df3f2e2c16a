"""A background loop with an interval, a clean stop, and a hook that fires after every round,
so tests wait for a round instead of sleeping."""

from __future__ import annotations

import abc
import asyncio

from conveyor.logging import Outage, get_logger

log = get_logger("conveyor.services")


class Service(abc.ABC):
    name: str = "service"
    #: True: the first round comes after one interval rather than at once (for a service
    #: whose owner has just done that work itself).
    wait_first: bool = False

    def __init__(self, interval: float) -> None:
        self.interval = interval
        #: rounds completed since the service started (a round that failed counts)
        self.rounds = 0
        self._in_round = False
        self._round_done = asyncio.Condition()
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()

    @abc.abstractmethod
    async def run_once(self) -> None:
        """One round of the service's work."""

    async def run(self) -> None:
        self.reset()
        if self.wait_first:
            await self._sleep()
        outage = Outage(log, f"{self.name}.round")
        while not self._stop.is_set():
            self._in_round = True
            try:
                await self.run_once()
            except Exception as exc:  # logged once a run of failures; the next round tries again
                outage.failed(exc)
            else:
                outage.recovered()
            self._in_round = False
            self.rounds += 1
            async with self._round_done:
                self._round_done.notify_all()
            await self._sleep()

    async def _sleep(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        kick = asyncio.ensure_future(self._kick.wait())
        try:
            await asyncio.wait(
                {stop, kick}, timeout=self.next_interval(), return_when="FIRST_COMPLETED"
            )
        finally:
            stop.cancel()
            kick.cancel()
        self._kick.clear()

    def reset(self) -> None:  # noqa: B027 - most services keep nothing between runs
        """Forget what earlier runs learnt: called as `run` begins (a leader-only service runs
        again each time its worker takes the lead)."""

    def next_interval(self) -> float:
        """How long to sleep before the next round."""
        return self.interval

    def kick(self) -> None:
        """Run the next round now."""
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()

    async def wait_rounds(self, n: int = 1, kick: bool = False) -> None:
        """Test hook: return once `n` rounds begun after this call have completed. A round
        under way does not count: it may have looked before the caller changed something.
        `kick` starts the next round now rather than after the interval.
        (`conveyor.testing.wait_rounds` adds a deadline.)"""
        target = self.rounds + n + (1 if self._in_round else 0)
        if kick:
            self.kick()
        async with self._round_done:
            await self._round_done.wait_for(lambda: self.rounds >= target)
