"""The threads sync tasks run on: every call's result or error reaches its future, an abandoned
call's thread is replaced at once, and a call abandoned before it began never runs."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from conveyor.worker.threads import TaskThreads

#: A lost wake-up would leave a future unsettled: the tests fail after this long, not hang.
SETTLE_S = 10.0


async def test_each_call_settles_its_own_future_with_its_result_or_error() -> None:
    threads = TaskThreads(4)

    def call(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i * i

    try:
        works = [threads.submit(functools.partial(call, i)) for i in range(300)]
        gathered = asyncio.gather(*(w.future for w in works), return_exceptions=True)
        settled = await asyncio.wait_for(gathered, SETTLE_S)
    finally:
        threads.shutdown()
    for i, outcome in enumerate(settled):
        if i % 3:
            assert outcome == i * i
        else:
            assert isinstance(outcome, ValueError) and str(outcome) == f"bad {i}"


async def test_a_task_raising_stop_iteration_fails_with_a_runtime_error() -> None:
    threads = TaskThreads(1)

    def stops() -> None:
        raise StopIteration

    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(threads.submit(stops).future, SETTLE_S)
    finally:
        threads.shutdown()


async def test_an_abandoned_call_frees_its_slot_and_one_not_begun_never_runs() -> None:
    threads = TaskThreads(1)
    release = threading.Event()
    began = threading.Event()
    ran: list[str] = []

    def stuck() -> None:
        began.set()
        release.wait(SETTLE_S)
        ran.append("stuck")

    try:
        hung = threads.submit(stuck)
        await asyncio.to_thread(began.wait, SETTLE_S)
        queued = threads.submit(lambda: ran.append("never"))
        threads.abandon(queued)  # not begun: dropped
        threads.abandon(hung)  # running: its thread is replaced
        assert threads.abandoned == 1
        assert await asyncio.wait_for(threads.submit(lambda: "next").future, SETTLE_S) == "next"
        release.set()
        for _ in range(200):
            if threads.abandoned == 0:
                break
            await asyncio.sleep(0.01)
        assert threads.abandoned == 0  # the stuck call returned and its thread left
        assert ran == ["stuck"]
    finally:
        release.set()
        threads.shutdown()
