"""Scenario 10: wall clocks off by an hour (libfaketime), on SQLite and PostgreSQL.

(a) One worker whose clock is an hour ahead (or behind) works beside two normal ones.
(b) Every worker's clock jumps an hour forward (or back) at once, mid-drain: the workers read
    their offset from a file (FAKETIME_TIMESTAMP_FILE, re-read on every call with
    FAKETIME_NO_CACHE=1), which the test rewrites.

The monotonic clock is left alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as in a real clock jump,
so the journal's times stay comparable. Nobody is a fault victim here: every worker is alive
and well, so a job taken from one (an early restart, or any second run) is wrong. And a delayed
job must never start earlier than its run_at minus the size of the jump. On PostgreSQL conveyor
takes its time from the server, so all of this must hold there.
"""

from __future__ import annotations

import os
import time

import pytest

from .conftest import require_faketime
from .harness import Scenario

JUMP_S = 3600
JOBS = 2_000
#: Fewer for the jump: with FAKETIME_NO_CACHE every clock read re-reads the offset file, which
#: slows the faked workers to a tenth of their speed.
JUMP_JOBS = 800
#: Delays of the delayed jobs: a short one, due during the run, and one so far ahead that even
#: a clock an hour fast must not see it due (it never starts during the test).
SHORT_DELAY_S = 3.0
FAR_DELAY_S = 1.5 * JUMP_S
#: No process is a victim: there is nothing to bound, the slack is unused.
NO_VICTIM_SLACK_S = 0.0
#: The lease here. Nothing is rescued on purpose, so it need not be short; and faked clocks
#: slow the workers (every clock read re-reads the offset), so the suite's 2 s lease would leave
#: a loaded machine too little room to renew in time, and a late heartbeat is not what is tested.
CLOCK_LEASE_S = 5.0


def enqueue_delayed(scenario: Scenario, short_must_run: bool) -> dict[int, float]:
    """Delayed jobs; returns, per job, the earliest monotonic time it may start (its run_at
    minus the jump, on the test's clock). Far ones, and short ones when a backward jump may
    hold them back for the hour, are not expected to run during the test."""
    earliest: dict[int, float] = {}
    for delay in (SHORT_DELAY_S, FAR_DELAY_S):
        before = time.monotonic()
        ids = scenario.enqueue(5, task="work", first=int(delay) * 10, delay=delay)
        earliest.update({job_id: before + delay - JUMP_S for job_id in ids})
        if delay == FAR_DELAY_S or not short_must_run:
            scenario.not_due.update(ids)
    return earliest


def delayed_started_early(scenario: Scenario, earliest: dict[int, float]) -> None:
    runs = scenario.journal().runs
    early = [
        f"job {job_id} started {earliest[job_id] - r.started:.1f}s before its run_at minus "
        f"{JUMP_S}s"
        for job_id in earliest
        for r in runs.get(job_id, [])
        if r.started < earliest[job_id]
    ]
    scenario.extra["delayed_early"] = len(early)
    if early:
        scenario.problems.append("DELAYED JOBS STARTED EARLY:\n  " + "\n  ".join(early[:10]))


@pytest.mark.parametrize("offset", ["+3600", "-3600"], ids=["ahead", "behind"])
def test_one_worker_with_its_clock_an_hour_off(scenario: Scenario, offset: str) -> None:
    require_faketime()
    scenario.lease = CLOCK_LEASE_S
    scenario.open()
    earliest = enqueue_delayed(scenario, short_must_run=True)
    scenario.enqueue(JOBS, task="work", ms=30)

    skewed_env = scenario.faketime_env(offset=offset)
    if offset.startswith("+"):
        # Ahead: it starts first and leads, so it is the one deciding which leases ran out.
        skewed = scenario.start_worker(env=skewed_env)
        scenario.wait_leader([skewed])
        scenario.start_workers(2)
    else:
        # Behind: a normal worker leads and judges the leases the skewed one writes.
        scenario.start_workers(2)
        scenario.wait_leader()
        skewed = scenario.start_worker(env=skewed_env)
        scenario.wait_started([skewed])
    scenario.fault(f"clock {offset}s", [], time.monotonic(), jobs={})

    scenario.drain()
    delayed_started_early(scenario, earliest)
    scenario.extra["skewed_ran"] = sum(
        1 for runs in scenario.journal().runs.values() for r in runs if r.pid == skewed.pid
    )
    scenario.check(slack=NO_VICTIM_SLACK_S)


@pytest.mark.parametrize("offset", ["+3600", "-3600"], ids=["forward", "back"])
def test_every_clock_jumps_an_hour_at_once(scenario: Scenario, offset: str) -> None:
    require_faketime()
    scenario.lease = CLOCK_LEASE_S
    scenario.open()
    rc_file = scenario.root / "faketime.rc"
    rc_file.write_text("+0\n")
    earliest = enqueue_delayed(scenario, short_must_run=offset.startswith("+"))
    scenario.enqueue(JUMP_JOBS, task="work", ms=30)
    scenario.start_workers(3, env=scenario.faketime_env(rc_file=rc_file))
    scenario.wait_leader()
    scenario.wait_ended(JUMP_JOBS // 5)

    jumped = time.monotonic()
    staged = rc_file.with_suffix(".new")
    staged.write_text(f"{offset}\n")
    os.replace(staged, rc_file)  # every worker sees the new offset at its next clock read
    scenario.fault(f"every clock jumps {offset}s", [], jumped, jobs={})

    scenario.drain()
    delayed_started_early(scenario, earliest)
    scenario.check(slack=NO_VICTIM_SLACK_S)
