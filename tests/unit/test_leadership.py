"""The elector and the maintainer, against a store that answers as the test says: the
leader-only services run while the worker leads, and stop the moment it no longer does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

import conveyor
from conveyor.errors import BackendUnavailable
from conveyor.services.base import Service
from conveyor.services.elector import LEADERSHIP, Elector
from conveyor.services.maintainer import Maintainer


class Leaderships:
    """The store's side of the leadership: `answer` is what `try_lead` says (or raises)."""

    def __init__(self) -> None:
        self.answer: bool | BaseException = True
        self.resigned: list[tuple[str, str]] = []

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    async def resign(self, name: str, holder: str) -> None:
        self.resigned.append((name, holder))


class LeaderWork(Service):
    """A leader-only service whose round lasts until the test lets it end."""

    name = "leader-work"

    def __init__(self) -> None:
        super().__init__(interval=60)
        self.runs = 0
        self.cancelled = 0
        self.in_round = asyncio.Event()
        self.let_end = asyncio.Event()

    def reset(self) -> None:
        self.runs += 1

    async def run_once(self) -> None:
        self.in_round.set()
        try:
            await self.let_end.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@pytest.fixture
def work() -> LeaderWork:
    return LeaderWork()


@pytest.fixture
def store() -> Leaderships:
    return Leaderships()


@pytest.fixture
async def maintainer(work: LeaderWork) -> AsyncIterator[Maintainer]:
    maintainer = Maintainer([work])
    running = asyncio.create_task(maintainer.run())
    yield maintainer
    work.let_end.set()
    maintainer.stop()
    await asyncio.wait_for(running, 5)


def elector(store: Leaderships, maintainer: Maintainer, lease: float = 30) -> Elector:
    app = conveyor.App("sqlite:///never-opened.db", lease_seconds=lease)
    backend: Any = store
    return Elector(app, backend, "w1", interval=60, on_change=maintainer.leadership_changed)


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def leader_events(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [
        (e["event"], e["log_level"], e.get("reason"))
        for e in logs
        if e["event"].startswith("leader.")
    ]


async def test_services_run_while_leading_and_are_cancelled_when_the_lead_is_lost(
    store: Leaderships, maintainer: Maintainer, work: LeaderWork
) -> None:
    leader = elector(store, maintainer)
    with capture_logs() as logs:
        await leader.run_once()
        await asyncio.wait_for(work.in_round.wait(), 5)
        assert leader.is_leader and maintainer.running

        store.answer = False  # another worker took the lead
        await leader.run_once()
        assert not leader.is_leader
        await until(lambda: not maintainer.running)
        assert work.cancelled == 1

        store.answer = True
        work.in_round.clear()
        await leader.run_once()
        await asyncio.wait_for(work.in_round.wait(), 5)
        assert work.runs == 2  # started afresh
    assert leader_events(logs) == [
        ("leader.elected", "info", None),
        ("leader.lost", "info", None),
        ("leader.elected", "info", None),
    ]


async def test_a_lease_run_out_on_the_leaders_own_clock_stops_the_services(
    store: Leaderships, maintainer: Maintainer, work: LeaderWork
) -> None:
    """No renewal came in time (a pause, a hung store): the leader stops its leader work when
    its lease ends by its own clock, without waiting for the store to say anything."""
    leader = elector(store, maintainer, lease=0.3)
    with capture_logs() as logs:
        await leader.run_once()
        await asyncio.wait_for(work.in_round.wait(), 5)
        await until(lambda: not maintainer.running)
        assert work.cancelled == 1 and not leader.is_leader
        await leader.run_once()  # renewed: leading again
        await until(lambda: maintainer.running)
    assert leader_events(logs) == [
        ("leader.elected", "info", None),
        ("leader.lost", "warning", "the lease ran out before it was renewed"),
        ("leader.elected", "info", None),
    ]


async def test_a_store_out_of_reach_loses_the_lead(
    store: Leaderships, maintainer: Maintainer, work: LeaderWork
) -> None:
    leader = elector(store, maintainer)
    await leader.run_once()
    await asyncio.wait_for(work.in_round.wait(), 5)
    store.answer = BackendUnavailable("connection refused")
    with capture_logs() as logs, pytest.raises(BackendUnavailable):
        await leader.run_once()
    await until(lambda: not maintainer.running)
    assert work.cancelled == 1
    assert leader_events(logs) == [("leader.lost", "warning", "store unavailable")]
    await leader.resign()
    assert store.resigned == []  # the store's answer is unknown: the lease runs out there


async def test_resigning_stops_the_services_and_frees_the_lead(
    store: Leaderships, maintainer: Maintainer, work: LeaderWork
) -> None:
    leader = elector(store, maintainer)
    await leader.run_once()
    await asyncio.wait_for(work.in_round.wait(), 5)
    await leader.resign()
    await until(lambda: not maintainer.running)
    assert store.resigned == [(LEADERSHIP, "w1")]
    await leader.resign()
    assert store.resigned == [(LEADERSHIP, "w1")]


async def test_a_follower_runs_nothing(
    store: Leaderships, maintainer: Maintainer, work: LeaderWork
) -> None:
    store.answer = False
    leader = elector(store, maintainer)
    await leader.run_once()
    await asyncio.sleep(0.05)
    assert not maintainer.running and work.runs == 0
    await leader.resign()
    assert store.resigned == []


async def test_on_shutdown_the_round_in_progress_ends_first(
    store: Leaderships, work: LeaderWork
) -> None:
    maintainer = Maintainer([work])
    running = asyncio.create_task(maintainer.run())
    await elector(store, maintainer).run_once()
    await asyncio.wait_for(work.in_round.wait(), 5)
    maintainer.stop()
    await asyncio.sleep(0.05)
    assert not running.done()
    work.let_end.set()
    await asyncio.wait_for(running, 5)
    assert work.cancelled == 0 and work.rounds == 1
