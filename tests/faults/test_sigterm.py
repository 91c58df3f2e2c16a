"""Scenario 2: SIGTERM, and a second SIGTERM, to a worker mid-drain, on SQLite and PostgreSQL.

The signalled worker stops claiming, lets its running jobs finish within `--grace`, hands back
what is still running (a second signal: at once) and exits by itself. Besides the drain, each
victim holds a few `held` jobs (queue "held", served by the victim only) that run until the
test releases them: they are sure to be in flight, so the hand-back is exercised. They run
again, on a worker started for the "held" queue, once released.
"""

from __future__ import annotations

import signal
import time

from acceptance.conftest import WorkerProcess

from .harness import Scenario

#: Exiting takes the hand-back write, deregistering and the process's own exit: a few hundred
#: milliseconds normally, seconds on a loaded 2-core machine with several workers draining.
SHUTDOWN_SLACK_S = 3.0
#: The victims' jobs finish or are handed back within the grace; the slack is for the writes.
SIGTERM_SLACK_S = 1.5
HELD_JOBS = 3
JOBS = 1_500


def exit_within(scenario: Scenario, worker: WorkerProcess, since: float, limit: float) -> None:
    """The worker must exit by itself (code 0) within `limit` seconds of `since`."""
    remaining = max(0.1, since + limit - time.monotonic())
    try:
        code = worker.proc.wait(remaining)
    except Exception:
        code = None
    took = time.monotonic() - since
    scenario.extra["exit_s"] = round(took, 2)
    scenario.extra["exit_bound_s"] = limit
    if code != 0:
        scenario.problems.append(
            f"worker {worker.pid} {'did not exit' if code is None else f'exited {code}'} "
            f"within {limit:.1f}s of the signal (waited {took:.1f}s)\n{worker.tail(20)}"
        )
        worker.kill()


def start(scenario: Scenario, grace: float) -> WorkerProcess:
    """Two plain workers and the victim, which alone also serves "held"; the drain under way
    and the victim running its held jobs."""
    scenario.open()
    held = scenario.enqueue(HELD_JOBS, task="held", first=JOBS)  # first: claimed first
    scenario.enqueue(JOBS // 2, task="work", ms=20)
    scenario.enqueue(JOBS // 2, task="work_sync", ms=20, first=JOBS // 2)
    scenario.start_workers(2, "--queues", "default")
    victim = scenario.start_worker("--queues", "default,held", "--grace", str(grace))
    scenario.wait_started([victim])
    scenario.wait_ended(JOBS // 4)
    scenario.wait_busy(victim, at_least=HELD_JOBS + 1, job_ids=held)
    return victim


def finish(scenario: Scenario) -> None:
    """Release the held jobs, let a worker for "held" run them again, drain and check."""
    scenario.release()
    scenario.start_worker("--queues", "held")
    scenario.drain()
    scenario.check(slack=SIGTERM_SLACK_S)


def test_sigterm_mid_drain_exits_within_the_grace(scenario: Scenario) -> None:
    grace = 1.0
    victim = start(scenario, grace)

    signalled = time.monotonic()
    victim.send(signal.SIGTERM)
    scenario.fault("SIGTERM", [victim], signalled)
    exit_within(scenario, victim, signalled, grace + SHUTDOWN_SLACK_S)
    finish(scenario)


def test_second_sigterm_hands_back_at_once(scenario: Scenario) -> None:
    grace = 600.0  # only the second signal can make it exit in time
    victim = start(scenario, grace)

    victim.send(signal.SIGTERM)
    scenario.fault("SIGTERM", [victim], time.monotonic())
    victim.wait_for_event("worker.stopping", timeout=10)
    second = time.monotonic()
    victim.send(signal.SIGTERM)
    scenario.fault("second SIGTERM", [victim], second)
    exit_within(scenario, victim, second, SHUTDOWN_SLACK_S)
    finish(scenario)
