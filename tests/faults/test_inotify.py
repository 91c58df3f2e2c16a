"""Scenario 13: every inotify instance the user may have is taken.

Idle SQLite waiters wake on the kernel's report of a write to the WAL (inotify). A user has a
fixed number of inotify instances across all their processes (`fs.inotify.max_user_instances`,
128 by default), and other programs take them too. With every one of them held by the test,
workers must start all the same, drain the jobs, and pick up a job enqueued once they are idle
(they look at the database every few milliseconds instead); nothing is lost or run twice.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from .harness import Scenario, poll_until

JOBS = 2_000
#: More than any kernel's default limit; the test fails if it could take them all.
MOST_INSTANCES = 100_000


@pytest.fixture
def every_inotify_instance() -> Iterator[int]:
    """Hold every inotify instance this user may still have; how many it took."""
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    from inotify_simple import INotify

    held: list[Any] = []
    try:
        while len(held) < MOST_INSTANCES:
            try:
                held.append(INotify())
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        else:
            pytest.fail(f"took {MOST_INSTANCES} inotify instances and found no limit")
        yield len(held)
    finally:
        for instance in held:
            instance.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_workers_run_without_an_inotify_instance_to_take(
    every_inotify_instance: int, scenario: Scenario
) -> None:
    scenario.extra["instances_held"] = every_inotify_instance
    scenario.open()
    scenario.enqueue(JOBS, task="work")
    scenario.start_workers(2)
    scenario.drain()
    # Idle now: a job enqueued one at a time still reaches them.
    [last] = scenario.enqueue(1, task="work", first=JOBS)
    if not poll_until(lambda: scenario.unfinished() == 0, 10):
        scenario.problems.append(f"job {last}, enqueued to idle workers, did not run in 10 s")
    logs = scenario.logs()
    if "sqlite.polling" not in logs:
        scenario.problems.append("no worker said it looks instead of waiting for reports")
    scenario.check(slack=0.0)
