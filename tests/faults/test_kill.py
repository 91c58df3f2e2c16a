"""Scenario 1: kill -9 of workers mid-drain, on SQLite and PostgreSQL.

A worker killed with SIGKILL leaves its jobs `running` under a lease nobody renews; the leader
(another worker, or a new leader if the killed one led) rescues them once the lease runs out
and they run again elsewhere. Nothing acknowledged is lost, only jobs in flight in the killed
worker run twice, and they stay `running` no longer than a lease and a rescue round.
"""

from __future__ import annotations

import random
import time

from acceptance.conftest import WorkerProcess

from .harness import Scenario

#: A killed worker's jobs: its last heartbeat extended their leases by one lease; the leader's
#: next round after that rescues them. The slack covers the monitor's 50 ms polls, the rescue
#: write itself, and a loaded 2-core machine running several Python processes at once.
KILL_SLACK_S = 1.5


def test_kill9_of_one_worker_mid_drain(scenario: Scenario) -> None:
    scenario.open()
    jobs = 1_000
    scenario.enqueue(jobs // 2, task="work", ms=10)
    scenario.enqueue(jobs // 2, task="work_sync", ms=10, first=jobs // 2)
    victim, _survivor = scenario.start_workers(2)

    scenario.wait_ended(jobs // 4)
    scenario.wait_busy(victim)
    scenario.kill9(victim)

    scenario.drain()
    scenario.check(slack=KILL_SLACK_S)


def test_kill9_again_and_again(scenario: Scenario) -> None:
    """The same worker slot killed, restarted and killed again, five times over: each new
    process is killed once it has jobs in flight."""
    scenario.open()
    scenario.enqueue(10_000, task="work", ms=20, batch=2_000)
    workers = scenario.start_workers(3)
    victim = workers[0]
    pause = random.Random(5)
    for _ in range(5):
        scenario.wait_busy(victim, at_least=3)
        time.sleep(pause.uniform(0.0, 0.3))
        scenario.kill9(victim)
        victim = scenario.start_worker()
        scenario.wait_started([victim])

    scenario.drain()
    scenario.check(slack=KILL_SLACK_S)


def busy_worker(
    scenario: Scenario, workers: list[WorkerProcess], pick: random.Random
) -> WorkerProcess:
    """One of the workers with jobs in flight now (a replacement may still be starting)."""
    deadline = time.monotonic() + 10
    while True:
        pids = scenario.busy_pids()
        busy = [w for w in workers if w.pid in pids]
        if busy or time.monotonic() > deadline:
            return pick.choice(busy or workers)
        time.sleep(0.02)


def test_four_workers_race_on_20000_jobs_with_kill9s(scenario: Scenario) -> None:
    scenario.open()
    jobs, kills = 20_000, 4
    scenario.enqueue(jobs, task="work", batch=2_000)
    workers = scenario.start_workers(4, concurrency=20)
    pick = random.Random(20_000)
    for k in range(kills):
        scenario.wait_ended((k + 1) * jobs // (kills + 2), timeout=90)
        victim = busy_worker(scenario, workers, pick)
        scenario.kill9(victim)
        workers.remove(victim)
        workers.append(scenario.start_worker(concurrency=20))  # not waited for: the race goes on

    scenario.drain(timeout=90)
    scenario.check(slack=KILL_SLACK_S)


KILLS_ITS_WORKER = """
@app.task(name="kills_its_worker", pass_context=True, max_attempts=3, backoff=conveyor.fixed(0))
def kills_its_worker(ctx, n, ms):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    _os.kill(_os.getpid(), 9)
"""
KILLER_ATTEMPTS = 3


def test_a_task_that_kills_its_worker_ends_dead(scenario: Scenario) -> None:
    """A task that kills its own worker process at once (os._exit, a segfault, the OOM killer),
    among short jobs a worker claims ahead of its slots. Each death counts an attempt (one
    death before the job's start reached the store may go uncounted, once), so the job ends
    dead after its attempts instead of killing worker after worker, and the work around it
    goes on."""
    scenario.open(KILLS_ITS_WORKER)
    scenario.enqueue(500, task="work", ms=1)
    [killer] = scenario.enqueue(1, task="kills_its_worker", first=500)
    scenario.enqueue(500, task="work", ms=1, first=501)

    deaths = 0
    worker = scenario.start_worker()
    deadline = time.monotonic() + 120
    while scenario.app.get_job(killer).state.value != "dead":
        if time.monotonic() > deadline or deaths > KILLER_ATTEMPTS + 1:
            scenario.give_up(
                f"the job that kills its worker is {scenario.app.get_job(killer).state.value} "
                f"after {deaths} deaths (it has {KILLER_ATTEMPTS} attempts)"
            )
        if worker.proc.poll() is not None:
            scenario.fault("killed by its task", [worker], time.monotonic())
            deaths += 1
            worker = scenario.start_worker()
        time.sleep(0.05)

    scenario.drain()
    job = scenario.app.get_job(killer)
    runs = len(scenario.journal().runs[killer])
    scenario.extra.update(deaths=deaths, killer_runs=runs, killer_attempt=job.attempt)
    if job.attempt != KILLER_ATTEMPTS or runs > KILLER_ATTEMPTS + 1:
        scenario.problems.append(
            f"the job that kills its worker ran {runs} times and ended dead at attempt "
            f"{job.attempt}: each death must count (at most one uncounted)"
        )
    scenario.check(slack=KILL_SLACK_S)
