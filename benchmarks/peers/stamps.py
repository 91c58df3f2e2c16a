"""The tasks of the peer comparison that need nothing but the standard library: a no-op and the
latency workload's stamp. RQ's default worker forks a work horse for every job, which imports
the job's module anew each time: this one imports `os` and `time` only."""

from __future__ import annotations

import os
import time

#: The file a stamping task appends "<job number> <start time>" lines to (set for the worker).
STAMPS_ENV = "CONVEYOR_BENCH_STAMPS"


def noop(i: int = 0) -> None:
    """Does nothing: the cost measured is the queue's, not the task's."""


def stamp(i: int) -> None:
    """The latency task: note when it started (the machine's clock), nothing else."""
    started = time.time()
    with open(os.environ[STAMPS_ENV], "a", encoding="utf-8") as out:
        out.write(f"{i} {started!r}\n")


async def astamp(i: int) -> None:
    """The same, as a coroutine."""
    stamp(i)
