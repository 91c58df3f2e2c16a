"""The service loop's test hook: a wait for rounds counts only rounds begun after it."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.services.base import Service
from conveyor.testing import wait_rounds, wait_until


class Gated(Service):
    """A service whose rounds end when the test says."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__(interval=3600.0)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run_once(self) -> None:
        self.entered.set()
        await self.release.wait()
        self.entered.clear()
        self.release.clear()


async def test_a_round_under_way_does_not_count_and_kick_starts_the_next() -> None:
    service = Gated()
    loop = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.entered.wait(), 5)  # round 1 is under way
        waiting = asyncio.create_task(wait_rounds(service, kick=True, timeout=5))
        await asyncio.sleep(0)  # the wait has begun
        service.release.set()
        await wait_until(lambda: service.rounds == 1, 5)
        assert not waiting.done()  # round 1 may have looked before the test changed anything
        await asyncio.wait_for(service.entered.wait(), 5)  # kicked: no hour-long interval
        service.release.set()
        await waiting
        assert service.rounds == 2
        with pytest.raises(TimeoutError, match="round\\(s\\) of the gated service"):
            await wait_rounds(service, timeout=0.1)  # the next round is an hour away
    finally:
        service.stop()
        service.release.set()
        await asyncio.wait_for(loop, 5)
