"""Scenario 3: SIGSTOP, on SQLite and PostgreSQL.

A worker frozen past its lease loses its jobs to the leader's rescue; they run elsewhere. When
it is continued, its task bodies finish, and it must not store their outcomes: the attempts
are no longer its own (fenced = 0). A frozen LEADER must not keep the cluster from rescuing:
while it is stopped another worker is killed, and that worker's jobs must still be rescued in
time, by a new leader.

On SQLite a worker may be stopped inside a write transaction, holding the database's one write
lock: then every process waits for it and nothing can be rescued until it runs again. The
harness sees that and records the stop as a store outage for all (see Scenario.sigstop).
"""

from __future__ import annotations

import signal
import time

from .harness import Scenario

#: As for kill -9 (test_kill.py): lease, rescue round, polls and a loaded machine. On SQLite a
#: frozen leader's leadership lease runs out in the same time as the jobs' leases, so a new
#: leader's first round rescues them.
STOP_SLACK_S = 1.5
JOBS = 2_000


def test_sigstop_past_the_lease_is_fenced(scenario: Scenario) -> None:
    scenario.open()
    scenario.enqueue(JOBS // 2, task="work", ms=30)
    scenario.enqueue(JOBS // 2, task="work_sync", ms=30, first=JOBS // 2)
    workers = scenario.start_workers(3)
    leader = scenario.wait_leader()
    victim = next(w for w in workers if w is not leader)
    scenario.wait_ended(JOBS // 5)
    scenario.wait_busy(victim, at_least=3)

    fault = scenario.sigstop(victim)
    time.sleep(2 * scenario.lease + 1)  # the fault lasts: well past the lease
    victim.send(signal.SIGCONT)
    fault.ended = time.monotonic()

    scenario.drain()
    scenario.expect_alive([victim], "after SIGCONT")
    discarded = victim.events("job.outcome_discarded")
    scenario.extra["outcomes_discarded"] = len(discarded)
    scenario.check(slack=STOP_SLACK_S)


def test_sigstopped_leader_does_not_block_rescue(scenario: Scenario) -> None:
    scenario.open()
    scenario.enqueue(JOBS, task="work", ms=30)
    workers = scenario.start_workers(3)
    leader = scenario.wait_leader()
    others = [w for w in workers if w is not leader]
    scenario.wait_ended(JOBS // 5)
    scenario.wait_busy(others[0], at_least=3)

    stopped_at = time.time()
    frozen = scenario.sigstop(leader, "SIGSTOP of the leader")
    time.sleep(0.5)
    killed = scenario.kill9(others[0])
    # Frozen for the killed worker's bound and a little more: its jobs must be rescued by
    # someone else meanwhile.
    time.sleep(max(0.0, killed.at + scenario.bound(STOP_SLACK_S) + 1 - time.monotonic()))
    moved = bool(scenario.elected_since(stopped_at, other_than=leader))
    leader.send(signal.SIGCONT)
    frozen.ended = time.monotonic()
    scenario.extra["leader_moved"] = moved
    if frozen.server_wide:
        # Stopped holding SQLite's write lock (see Scenario.sigstop): nobody could take the
        # lead or rescue meanwhile; the killed worker's jobs count from the lock's release.
        killed.ended, killed.from_end = frozen.ended, True
    elif not moved:
        scenario.problems.append(
            f"leadership stayed with the frozen worker {leader.pid} for "
            f"{frozen.ended - frozen.started:.1f}s (no other worker logged leader.elected)"
        )
    scenario.drain()
    scenario.expect_alive([leader], "after SIGCONT")
    scenario.check(slack=STOP_SLACK_S)
