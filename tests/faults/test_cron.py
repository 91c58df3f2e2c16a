"""Scenario 11: a cron tick fires exactly once across three workers, though the leader is killed
with kill -9 at the tick (and, on PostgreSQL, the server restarted at the tick too).

Cron ticks once a minute; rather than wait for a real minute boundary, the workers run under
libfaketime with a whole-second offset that puts their clock a few seconds before one. The test
computes the tick with the same offset. The tick's job must be enqueued once: not zero times
(the new leader must fire a tick the dead one did not), not twice (nor fire one it did).
"""

from __future__ import annotations

import math
import time

import conveyor

from .conftest import require_faketime
from .harness import RESCUE_FRACTION, Scenario

CRON_TASKS = """

@app.periodic("* * * * *", name="tick", pass_context=True, max_attempts=25,
              backoff=conveyor.fixed(0.1))
async def tick(ctx):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"
"""

#: Time for the workers to start, elect a leader and see the cron entry before the tick.
LEAD_S = 9.0
#: After the tick's job appears, how long a second firing would still have to show up: a new
#: leader's lease (on SQLite the dead leader's leadership lease must run out first) and two of
#: its rounds.
SETTLE_ROUNDS = 2
#: As for kill -9 (test_kill.py), plus the server's restart on PostgreSQL.
CRON_SLACK_S = 3.0


def tick_jobs(scenario: Scenario) -> list[conveyor.Job]:
    try:
        return scenario.app.list_jobs(task="tick", limit=100)
    except conveyor.BackendUnavailable:
        return []


def test_cron_fires_once_though_the_leader_dies_at_the_tick(scenario: Scenario) -> None:
    require_faketime()
    # The workers' clock: a minute boundary LEAD_S from now.
    target = time.time() + LEAD_S
    offset = math.ceil(target / 60) * 60 - math.floor(target)  # whole seconds, 1..60
    tick_wall = math.ceil(target / 60) * 60  # on the workers' clock
    tick_at = time.monotonic() + (tick_wall - offset - time.time())  # on the test's
    scenario.extra["tick"] = time.strftime("%H:%M:%S", time.gmtime(tick_wall))

    scenario.open(CRON_TASKS)
    workers = scenario.start_workers(3, env=scenario.faketime_env(offset=f"+{offset}"))
    leader = scenario.wait_leader()
    leader.wait_for_event("cron.started", timeout=max(1.0, tick_at - time.monotonic()))
    if time.monotonic() >= tick_at:
        scenario.give_up("the workers took longer to start than LEAD_S: the tick came first")

    time.sleep(max(0.0, tick_at - time.monotonic()))
    scenario.kill9(leader)
    if scenario.cluster is not None:
        started = time.monotonic()
        scenario.cluster.restart("immediate")
        scenario.fault(
            "pg_ctl restart -m immediate",
            [w for w in workers if w is not leader],
            started,
            ended=time.monotonic(),
            server_wide=True,
        )

    settle = scenario.lease + SETTLE_ROUNDS * scenario.lease * RESCUE_FRACTION
    deadline = time.monotonic() + 2 * scenario.lease + 15
    while not tick_jobs(scenario) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)

    fired = tick_jobs(scenario)
    scenario.extra["tick_jobs"] = len(fired)
    if len(fired) != 1:
        scenario.problems.append(
            f"the tick {scenario.extra['tick']} fired {len(fired)} times "
            f"(jobs {[(j.id, j.state.value) for j in fired]}); it must fire exactly once"
        )
    for job in fired:  # the tick's job is acknowledged once it is stored
        scenario.tasks.journal("enq", job.id, 0, scenario.tasks.now())
    scenario.drain()
    scenario.check(slack=CRON_SLACK_S)
