"""Scenarios 4-7: the PostgreSQL server misbehaves under draining workers and a running
enqueuer. All on the suite's throwaway cluster (never a shared server): the faults stop server
processes, restart the server, make it read-only and exhaust its connections.

4. Hung backends: the server processes serving one worker's connections (found by their
   application_name, `conveyor:<worker pid>`) are stopped for 20 s, each at a moment it is not
   running a statement (a hung connection; see `stop_at_rest`). Only that worker's jobs in
   flight may run twice, it must not claim batch after batch that then get rescued, and it must
   not exit. The same for the leader's backends: leadership moves, rescues go on. Victim jobs
   whose rows a stopped server process holds locked (it was writing them when it stopped)
   cannot be changed by anyone until it runs again: their bound counts from the hang's end.
5. `pg_ctl restart -m immediate` mid-drain: nothing lost, no worker exits, the drain completes.
6. Read-only for a few seconds: enqueue raises BackendUnavailable (never a psycopg error), no
   worker exits, and the work goes on by itself afterwards.
7. max_connections exhausted by the test for a few seconds: workers stay up, work resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg
import pytest

import conveyor
from acceptance.conftest import WorkerProcess

from .checker import Fault, stored_jobs
from .cluster import Cluster
from .harness import LEASE_S, RESCUE_FRACTION, Scenario, poll_until, wait_stopped

pytestmark = pytest.mark.parametrize("backend", ["postgres"])

#: How long the hung backends stay stopped (the brief's ~20 s: many leases).
HANG_S = 20.0
#: The hung worker's jobs are rescued by the others once their leases run out; when the leader
#: hangs, a new leader must first take over (its leadership lease runs out in the same time),
#: so a rescue round more than for kill -9 (test_kill.py's 1.5 s).
HANG_SLACK_S = 1.5 + RESCUE_FRACTION * LEASE_S
#: One claim may have been on its way when the connections hung: at most one batch (the
#: worker's concurrency) may be claimed and then rescued; "dozens" is the bug.
CONCURRENCY = 10
#: A server-wide fault counts from its end: the workers find their connections broken at the
#: next statement, make new ones (with the pool's backoff) and the leader takes the lead
#: again before rescuing; seconds on a loaded 2-core machine.
SERVER_SLACK_S = 3.0
READ_ONLY_S = 4.0
HOLD_CONNECTIONS_S = 4.0


def cluster_of(scenario: Scenario) -> Cluster:
    assert scenario.cluster is not None
    return scenario.cluster


def drain_under_way(scenario: Scenario) -> list[WorkerProcess]:
    """Three workers busy with a backlog, and an enqueuer adding jobs (about 400 a second)
    until the test stops it (`after_the_fault`), with some of the work done."""
    scenario.open()
    scenario.enqueue(1_500, task="work", ms=20, first=1_000_000)
    workers = scenario.start_workers(3, concurrency=CONCURRENCY)
    scenario.start_enqueuer(1_000_000, batch=10, pause=0.02, ms=20)
    scenario.wait_ended(300)
    return workers


def after_the_fault(scenario: Scenario) -> None:
    """Let the enqueuer go on a little past the fault, then stop it and drain."""
    time.sleep(1.0)
    scenario.stop_enqueuers()
    scenario.drain()


# -- 4. hung backends --------------------------------------------------------------------------


def locked_rows(scenario: Scenario, ids: Iterable[int]) -> set[int]:
    """Which of these jobs' rows a transaction holds locked now (looked at twice, 50 ms apart:
    a lock held both times belongs to a stopped server process, not a passing write)."""
    found: list[set[int]] = []
    for _ in range(2):
        with cluster_of(scenario).connect(autocommit=False) as conn:
            rows = conn.execute(
                f'SELECT id FROM "{scenario.schema}".jobs WHERE id = ANY(%(ids)s) '
                "FOR SHARE SKIP LOCKED",
                {"ids": list(ids)},
            ).fetchall()
            conn.rollback()
        found.append(set(ids) - {int(r[0]) for r in rows})
        time.sleep(0.05)
    return found[0] & found[1]


def hung_sessions(cluster: Cluster, pids: list[int]) -> list[str]:
    """What each stopped server process was doing (pg_stat_activity is shared memory: it can
    be read while they are stopped): a transaction left open holds its locks meanwhile."""
    rows = cluster.sql(
        "SELECT state, xact_start IS NOT NULL, left(query, 60) FROM pg_stat_activity "
        "WHERE pid = ANY(%(pids)s) ORDER BY pid",
        {"pids": pids},
    )
    return [
        f"{state}{' (in a transaction)' if xact else ''}: {query}" for state, xact, query in rows
    ]


#: Tries to catch a server process at rest (see `stop_at_rest`).
REST_TRIES = 500
#: How long one look at a stopped server process may wait for that process itself (see
#: `stop_at_rest`) before it is let go and caught again.
LOOK_WAIT_S = 1.0


def stop_at_rest(cluster: Cluster, pid: int) -> bool:
    """SIGSTOP server process `pid` at a moment it is not in the middle of running a statement
    (idle, waiting for its client, or waiting for a row lock) and not committing: what a hung
    connection does to it. A process frozen mid-statement may hold one of PostgreSQL's internal
    page locks, and one frozen while committing a transaction that notified holds the server's
    one notification lock; every session needing either then waits with no timeout: the whole
    server hangs, a fault of another kind. False if it was never caught at rest (it is left
    running).

    The look at it reads shared memory the stopped process may have been writing when it
    stopped: its activity entry (a reader waits until the writer is done) or a partition of the
    lock table (a reader waits for the writer's lock). Such a look waits for the stopped
    process, which waits for the look: after LOOK_WAIT_S the process is let go, and caught
    again."""
    let_go = threading.Event()

    def resume() -> None:
        let_go.set()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    with cluster.connect() as conn, contextlib.suppress(ProcessLookupError):  # gone: no hang
        for _ in range(REST_TRIES):
            os.kill(pid, signal.SIGSTOP)
            wait_stopped([pid])
            let_go.clear()
            watchdog = threading.Timer(LOOK_WAIT_S, resume)
            watchdog.start()
            try:
                row = conn.execute(
                    "SELECT a.state, a.wait_event_type, EXISTS ("
                    "  SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.granted"
                    "  AND l.locktype = 'object' AND l.classid = 'pg_database'::regclass"
                    "  AND l.objid = 0) "
                    "FROM pg_stat_activity a WHERE a.pid = %(pid)s",
                    {"pid": pid},
                ).fetchone()
            finally:
                watchdog.cancel()
                watchdog.join()
            if let_go.is_set():
                continue  # let go while looked at: caught again
            if row is None or (not row[2] and (row[0] != "active" or row[1] in ("Lock", "Client"))):
                return True
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.001)
        return False
    return True


def hang_backends(scenario: Scenario, victim: WorkerProcess, what: str) -> list[Fault]:
    """SIGSTOP the server processes of `victim`'s connections for HANG_S, then SIGCONT.

    Victim jobs whose rows a stopped server process holds locked (it was writing their
    outcome when it stopped) cannot be changed by anyone, no rescuer and no kill, until that
    process runs again: their bound counts from the end of the hang (a fault of their own)."""
    cluster = cluster_of(scenario)
    name = f"conveyor:{victim.pid}"
    pids = cluster.backend_pids(name)
    if not pids:
        scenario.give_up(
            f"no server backend has application_name {name!r}, so the {what}'s connections "
            f"cannot be told apart (application names seen: {cluster.application_names()}); "
            "conveyor must set application_name to conveyor:<os.getpid()> on every connection"
        )
    scenario.wait_busy(victim, at_least=3)
    try:
        scenario.extra["never_caught_at_rest"] = sum(not stop_at_rest(cluster, pid) for pid in pids)
        started = time.monotonic()
        running = scenario.running_jobs([victim.pid]) or {}
        locked = locked_rows(scenario, running)
        free = {j: a for j, a in running.items() if j not in locked}
        held = {j: a for j, a in running.items() if j in locked}
        faults = [
            scenario.fault(f"hung server backends ({what})", [victim], started, jobs=free),
            scenario.fault(
                f"rows locked by the hung backends ({what})",
                [victim],
                started,
                jobs=held,
                from_end=True,
            ),
        ]
        scenario.extra["hung_backends"] = len(pids)
        scenario.extra["hung_sessions"] = hung_sessions(cluster, pids)
        scenario.extra["locked_by_hung_backends"] = len(locked)
        time.sleep(max(0.0, started + HANG_S - time.monotonic()))
        scenario.expect_alive(scenario.workers, "while its server backends hung")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    for fault in faults:
        fault.ended = time.monotonic()
    return faults


def claimed_then_rescued(scenario: Scenario, victim: WorkerProcess, faults: list[Fault]) -> None:
    """The hung worker must stop claiming: jobs it claimed after its connections hung and
    that the leader then had to rescue from it, beyond one batch, are a problem."""
    worker_id = scenario.worker_id(victim)
    jobs: dict[int, Any] = stored_jobs(scenario.app)
    rescued = sorted(
        job_id
        for job_id, job in jobs.items()
        if not any(job_id in fault.jobs for fault in faults)
        and any(e.get("type") == "WorkerLost" and e.get("worker") == worker_id for e in job.errors)
    )
    fault = faults[0]
    assert fault.ended is not None
    during = [
        r
        for runs in scenario.journal().runs.values()
        for r in runs
        if fault.started < r.started < fault.ended
    ]
    started_in_hang = [r for r in during if r.pid == victim.pid]
    scenario.extra["victim_started_during_hang"] = len(started_in_hang)
    # How much work the healthy workers got done meanwhile (reported, not judged).
    scenario.extra["others_started_during_hang"] = len(during) - len(started_in_hang)
    scenario.extra["claimed_then_rescued"] = len(rescued)
    if len(rescued) > CONCURRENCY:
        scenario.problems.append(
            f"worker {victim.pid} kept claiming while its connections hung: {len(rescued)} jobs "
            f"not in flight when the hang began were claimed for it and then rescued from it "
            f"(e.g. {rescued[:10]}); it started {len(started_in_hang)} jobs during the hang"
        )


@pytest.mark.timeout(180)
def test_hung_backends_of_a_worker(scenario: Scenario) -> None:
    workers = drain_under_way(scenario)
    leader = scenario.wait_leader()
    victim = next(w for w in workers if w is not leader)

    faults = hang_backends(scenario, victim, "worker")

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after its server backends hung")
    claimed_then_rescued(scenario, victim, faults)
    scenario.check(slack=HANG_SLACK_S)


@pytest.mark.timeout(180)
def test_hung_backends_of_the_leader(scenario: Scenario) -> None:
    workers = drain_under_way(scenario)
    leader = scenario.wait_leader()

    hung_at = time.time()
    faults = hang_backends(scenario, leader, "leader")

    moved = bool(scenario.elected_since(hung_at, other_than=leader))
    scenario.extra["leader_moved"] = moved
    if not moved:
        scenario.problems.append(
            f"leadership stayed with worker {leader.pid} while its server "
            f"backends hung for {HANG_S:.0f}s"
        )
    after_the_fault(scenario)
    scenario.expect_alive(workers, "after the leader's server backends hung")
    claimed_then_rescued(scenario, leader, faults)
    scenario.check(slack=HANG_SLACK_S)


# -- 5. restart --------------------------------------------------------------------------------


def test_server_restart_immediate_mid_drain(scenario: Scenario) -> None:
    workers = drain_under_way(scenario)
    before = scenario.running_jobs() or {}

    started = time.monotonic()
    cluster_of(scenario).restart("immediate")
    scenario.fault(
        "pg_ctl restart -m immediate",
        workers,
        started,
        ended=time.monotonic(),
        server_wide=True,
        jobs=before,
    )

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after the server restarted")
    # Each worker LISTENs again on a fresh connection (wake-ups, not polls, after a restart).
    wanted = {f"conveyor:{w.pid}" for w in workers}

    def listening() -> bool:
        rows = cluster_of(scenario).sql(
            "SELECT application_name FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
        )
        return wanted <= {name for (name,) in rows}

    if not poll_until(listening, 30):
        scenario.problems.append("not every worker LISTENs again after the restart")
    scenario.check(slack=SERVER_SLACK_S)


# -- 6. read-only ------------------------------------------------------------------------------


def set_read_only(cluster: Cluster, on: bool) -> None:
    with cluster.connect() as conn:
        if on:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


def test_read_only_server_for_a_few_seconds(scenario: Scenario) -> None:
    cluster = cluster_of(scenario)
    workers = drain_under_way(scenario)
    before = scenario.running_jobs() or {}

    started = time.monotonic()
    set_read_only(cluster, True)
    try:
        time.sleep(0.5)  # the reload reaches every session
        try:
            scenario.tasks.work.enqueue(-1, 0)
            scenario.problems.append("enqueue returned while the server was read-only")
        except conveyor.BackendUnavailable as exc:
            scenario.extra["read_only_error"] = str(exc)[:120]
        except Exception as exc:
            scenario.problems.append(
                f"enqueue on a read-only server raised {type(exc).__module__}."
                f"{type(exc).__qualname__}: {exc} (not BackendUnavailable)"
            )
        time.sleep(max(0.0, started + READ_ONLY_S - time.monotonic()))
        scenario.expect_alive(workers, "while the server was read-only")
    finally:
        set_read_only(cluster, False)
    scenario.fault(
        "read-only server", workers, started, ended=time.monotonic(), server_wide=True, jobs=before
    )

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after the server was read-only")
    refused = [e for e in scenario.journal().errors if started <= e.at]
    scenario.extra["enqueue_refused"] = len(refused)
    scenario.check(slack=SERVER_SLACK_S)


# -- 7. max_connections ------------------------------------------------------------------------


def test_max_connections_exhausted(scenario: Scenario) -> None:
    cluster = cluster_of(scenario)
    workers = drain_under_way(scenario)
    before = scenario.running_jobs() or {}

    started = time.monotonic()
    held: list[psycopg.Connection[Any]] = []
    refusal = ""
    try:
        while len(held) < 1_000:
            try:
                held.append(cluster.connect())
            except psycopg.OperationalError as exc:
                refusal = str(exc).strip().splitlines()[-1]
                break
        scenario.extra["connections_held"] = len(held)
        scenario.extra["refusal"] = refusal[:80]
        time.sleep(HOLD_CONNECTIONS_S)
        scenario.expect_alive(workers, "while the server refused connections")
    finally:
        for conn in held:
            conn.close()
    scenario.fault(
        "max_connections exhausted",
        workers,
        started,
        ended=time.monotonic(),
        server_wide=True,
        jobs=before,
    )

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after the server refused connections")
    scenario.check(slack=SERVER_SLACK_S)
