"""Threads for sync tasks, with a slot given back when a task overruns its timeout.

A Python thread cannot be killed. When a sync task times out, its thread is abandoned: it
finishes in its own time and then exits, and a new thread takes its place at once, so the
worker keeps its concurrency.

The hand-off is the sync task's whole overhead, so it is kept small: a call is an event-loop
future and a place in a queue; a thread that finishes a call appends its result to a list the
loop settles in one callback, and wakes the loop only if no such callback is due already.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Work:
    """A call handed to the threads; `future` (of the loop that submitted it) settles with its
    result."""

    __slots__ = ("dropped", "fn", "future", "thread")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.future = future
        #: the thread running the call, while it runs
        self.thread: threading.Thread | None = None
        #: abandoned before a thread took it: it never runs
        self.dropped = False


class TaskThreads:
    def __init__(self, size: int, name: str = "conveyor-task") -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serial = 0
        self._abandoned: set[threading.Thread] = set()
        #: calls finished and not settled yet, and whether the loop is to settle them already
        self._finished: deque[tuple[Work, Any, BaseException | None]] = deque()
        self._settle_due = False

    def submit(self, fn: Callable[[], Any]) -> Work:
        """Run `fn` in a thread; await `work.future` on the running loop for its result."""
        loop = self._loop
        if loop is None:
            self._loop = loop = asyncio.get_running_loop()
            with self._lock:
                for _ in range(self._size):
                    self._spawn()
        work = Work(fn, loop.create_future())
        self._queue.put(work)
        return work

    def abandon(self, work: Work) -> None:
        """Stop waiting for `work`. If it is running, its thread exits when the call returns
        and a fresh thread takes its place now."""
        with self._lock:
            if work.thread is None:
                work.dropped = True  # not begun (it never will), or over
            elif work.thread not in self._abandoned:
                self._abandoned.add(work.thread)
                self._spawn()

    @property
    def abandoned(self) -> int:
        """Threads still stuck in calls nobody waits for."""
        with self._lock:
            return len(self._abandoned)

    def shutdown(self) -> None:
        """Let idle threads exit; abandoned ones are daemons and die with the process."""
        for _ in range(self._size):
            self._queue.put(None)

    def _spawn(self) -> None:
        self._serial += 1
        threading.Thread(
            target=self._loop_of_thread, name=f"{self._name}-{self._serial}", daemon=True
        ).start()

    def _loop_of_thread(self) -> None:
        me = threading.current_thread()
        lock, get, finished = self._lock, self._queue.get, self._finished
        while (work := get()) is not None:
            with lock:
                if work.dropped:
                    continue
                work.thread = me
            error: BaseException | None = None
            try:
                result = work.fn()
            except StopIteration as exc:  # a future refuses it, as a coroutine would
                result, error = None, RuntimeError("the task raised StopIteration")
                error.__cause__ = exc
            except BaseException as exc:  # handed to whoever awaits the future
                result, error = None, exc
            with lock:
                work.thread = None
                finished.append((work, result, error))
                wake = not self._settle_due
                self._settle_due = True
                leave = me in self._abandoned
                self._abandoned.discard(me)
            if wake:
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._settle)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
            if leave:
                return

    def _settle(self) -> None:
        """On the loop: hand every finished call's result to its future."""
        with self._lock:
            self._settle_due = False
            finished = [*self._finished]
            self._finished.clear()
        for work, result, error in finished:
            future = work.future
            if future.done():  # its waiter was cancelled (a timeout, a stop)
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
