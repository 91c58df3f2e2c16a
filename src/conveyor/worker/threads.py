"""Threads for sync tasks, with a slot given back when a task overruns its timeout.

A Python thread cannot be killed. When a sync task times out, its thread is abandoned: it
finishes in its own time and then exits, and a new thread takes its place at once, so the
worker keeps its concurrency.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Work:
    """A call handed to the threads; `future` settles with its result."""

    __slots__ = ("fn", "future", "thread")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()
        self.thread: threading.Thread | None = None


class TaskThreads:
    def __init__(self, size: int, name: str = "conveyor-task") -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False
        self._serial = 0
        self._abandoned: set[threading.Thread] = set()

    def submit(self, fn: Callable[[], Any]) -> Work:
        if not self._started:
            with self._lock:
                if not self._started:
                    for _ in range(self._size):
                        self._spawn()
                    self._started = True
        work = Work(fn)
        self._queue.put(work)
        return work

    def abandon(self, work: Work) -> None:
        """Stop waiting for `work`. If it is running, its thread exits when the call returns
        and a fresh thread takes its place now."""
        if work.future.cancel():
            return  # never started
        with self._lock:
            if work.thread is not None and not work.future.done():
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
            target=self._loop, name=f"{self._name}-{self._serial}", daemon=True
        ).start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while (work := self._queue.get()) is not None:
            work.thread = me
            if not work.future.set_running_or_notify_cancel():
                continue
            try:
                result = work.fn()
            except BaseException as exc:  # handed to whoever awaits the future
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)
            with self._lock:
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    return
