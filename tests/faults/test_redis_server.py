"""The Redis server misbehaves under draining workers and a running enqueuer. All on the suite's
throwaway server (never a shared one): it is shut down and restarted, filled up, has its
clients killed and is given an evicting policy. Every scenario ends with the checker (nothing
acknowledged lost, no job run twice but those in flight at a fault, none stuck) and with the
keyspace check (every job whole, every index agreeing; see redis_server.store_problems).

1. `SHUTDOWN NOSAVE` (and SIGKILL) with AOF on, `appendfsync everysec`: Redis promises to lose
   at most about a second of acknowledged writes, and then only if the machine crashes before
   the AOF reaches the disk; a process that stops or crashes loses nothing the kernel has. So
   acknowledged jobs may be lost only within AOF_WINDOW_S before the fault; how many were, and
   how long before the fault the first of them was acknowledged, go to the report.
2. The same with neither AOF nor RDB: everything is lost, by design (the store comes back
   empty, and job ids start over). The workers must come through it: none exits or hangs, a
   worker started afterwards starts, and new jobs all get done. What was lost is recorded.
3. `maxmemory` reached under `noeviction`: enqueue raises BackendUnavailable, nothing is half
   written, and the workers carry on by themselves once memory frees.
4. CLIENT KILL of a worker's (and of the leader's) connections mid-drain, again and again: the
   worker keeps going, nothing is lost.
5. An evicting `maxmemory-policy` is refused at start, naming `noeviction`.
6. 100 threads in 4 processes enqueue at once: every call succeeds.
"""

from __future__ import annotations

import logging
import time

import pytest

import conveyor
from acceptance.conftest import WorkerProcess
from conveyor.errors import BackendUnavailable, ConfigurationError

from .checker import stored_jobs
from .harness import LEASE_S, RESCUE_FRACTION, Scenario, poll_until
from .journal import Journal, parse_journal
from .redis_server import RedisServer
from .test_enqueue_storm import errors_by_type, stored_count, storm, wait_storm

#: The scenarios run on the throwaway Redis server (the journal helpers' tests need none).
on_redis = pytest.mark.parametrize("backend", ["redis"])

#: A backlog, three workers, and an enqueuer adding about 400 jobs a second.
BACKLOG = 1_000
CONCURRENCY = 10
#: How long before a fault an acknowledged job may have been written and still be lost with
#: `appendfsync everysec`: Redis's "one second", which becomes two when an fsync is slow (the
#: write itself is then postponed up to 2 s).
AOF_WINDOW_S = 2.0
#: A server-wide fault counts from its end: the workers find their connections broken at the
#: next call, connect again (backing off) and the leader leads again before it rescues.
SERVER_SLACK_S = 3.0
#: After a failed write, conveyor backs off up to 5 s before it tries again (claims and
#: outcomes alike), so the first write after memory frees may come that late; 1 s more for a
#: loaded machine (as test_disk_full.py's).
FULL_SLACK_S = 5.0 + 1.0 - LEASE_S * (1 + RESCUE_FRACTION)
#: How long the server stays full.
FULL_S = 3.0
#: Room left above the memory in use when the limit is set: filled within a second or two (and
#: then the limit drops as far below it).
HEADROOM_BYTES = 512 * 1024
#: A killed connection is made again at the next call: as for kill -9 (test_kill.py).
CLIENT_KILL_SLACK_S = 1.5
CLIENT_KILLS = 6
#: After an empty restart, how long the workers get to let go of the jobs they held (their
#: bodies end, their leases are found gone) before new jobs, whose ids start over, come.
SETTLE_S = 2.0
#: 600 small jobs after the empty restart take a couple of seconds to drain.
AFTER_EMPTY_RESTART_S = 20.0


def server_of(scenario: Scenario) -> RedisServer:
    assert scenario.redis is not None
    return scenario.redis


def drain_under_way(scenario: Scenario) -> list[WorkerProcess]:
    """Three workers busy with a backlog and an enqueuer adding jobs until the test stops it
    (`after_the_fault`), with some of the work done."""
    scenario.open()
    scenario.enqueue(BACKLOG, task="work", ms=20, first=1_000_000)
    workers = scenario.start_workers(3, concurrency=CONCURRENCY)
    scenario.start_enqueuer(1_000_000, batch=10, pause=0.02, ms=20)
    scenario.wait_ended(BACKLOG // 4)
    return workers


def after_the_fault(scenario: Scenario) -> None:
    """Let the enqueuer go on a little past the fault, then stop it and drain."""
    time.sleep(1.0)
    scenario.stop_enqueuers()
    scenario.drain()


# -- journal surgery ---------------------------------------------------------------------------
# A restart that loses jobs lets their ids be given again: the journal then holds two jobs under
# one id. These keep the judged journal to one job per id.


def _line_time(fields: list[str]) -> float:
    return float(fields[3] if fields[0] in ("enq", "err") else fields[4])


def forget(text: str, ids: set[int], before: float) -> str:
    """The journal with the lines of jobs `ids` from before `before` (and the ends of runs
    begun then) moved to the job's negative id: the job that was lost, apart from the one
    that got its id afterwards."""
    out, renamed = [], set()
    for line in text.splitlines():
        fields = line.split(" ")
        if fields[0] in ("enq", "start", "end", "raise") and int(fields[1]) in ids:
            key = (fields[1], fields[2], fields[3])  # job, attempt, pid of a run
            if fields[0] in ("enq", "start") and _line_time(fields) < before:
                if fields[0] == "start":
                    renamed.add(key)
                fields[1] = f"-{fields[1]}"
            elif fields[0] in ("end", "raise") and key in renamed:
                renamed.discard(key)
                fields[1] = f"-{fields[1]}"
        out.append(" ".join(fields))
    return "\n".join(out) + "\n"


def since(text: str, cut: float) -> str:
    """The journal from `cut` on: acknowledgements, errors and runs begun after it."""
    out, kept = [], set()
    for line in text.splitlines():
        fields = line.split(" ")
        kind = fields[0]
        if kind in ("end", "raise"):
            key = (fields[1], fields[2], fields[3])
            if key in kept:
                kept.discard(key)
                out.append(line)
        elif kind in ("enq", "start", "err") and _line_time(fields) > cut:
            if kind == "start":
                kept.add((fields[1], fields[2], fields[3]))
            out.append(line)
        elif kind == "ready":
            out.append(line)
    return "\n".join(out) + "\n"


def acked_twice(journal: Journal) -> set[int]:
    """Ids acknowledged more than once: given to a second job after the first was lost (these
    scenarios enqueue without unique keys, so nothing else acknowledges an id twice)."""
    return {
        job_id
        for job_id, lines in journal.lines.items()
        if sum(1 for line in lines if line.startswith("enq ")) > 1
    }


# -- 1. SHUTDOWN NOSAVE with AOF everysec ------------------------------------------------------


@on_redis
@pytest.mark.parametrize("how", ["shutdown-nosave", "kill"])
def test_redis_restart_with_aof_everysec_loses_at_most_a_second(
    scenario: Scenario, how: str
) -> None:
    server = server_of(scenario)
    server.configure(appendonly="yes", appendfsync="everysec")
    workers = drain_under_way(scenario)
    before = scenario.running_jobs() or {}

    with server.client() as client:
        keys_before = client.dbsize()
    started = time.monotonic()
    server.restart(how)
    ended = time.monotonic()
    with server.client() as client:
        scenario.extra["keys_before"], scenario.extra["keys_after"] = keys_before, client.dbsize()
    what = "SHUTDOWN NOSAVE" if how == "shutdown-nosave" else "SIGKILL"
    scenario.fault(
        f"redis {what} and restart (AOF everysec)",
        workers,
        started,
        ended=ended,
        server_wide=True,
        jobs=before,
    )
    scenario.extra["restart_s"] = round(ended - started, 2)

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after the Redis restart")

    # Lost: acknowledged before the fault and gone, or whose id another job has now.
    text = scenario.journal_path.read_text(errors="replace")
    journal = parse_journal(text)
    stored = stored_jobs(scenario.app)
    reused = {j for j in acked_twice(journal) if journal.enqueued[j].at < started}
    missing = set(journal.enqueued) - set(stored)
    lost_at = {j: journal.enqueued[j].at for j in reused | missing}
    window = max((started - at for at in lost_at.values()), default=0.0)
    outside = sorted(j for j, at in lost_at.items() if at < started - AOF_WINDOW_S)
    # Outcomes lost: a run that ended before the fault, and its job ran again after it.
    redone = [
        runs[0].ended
        for job_id, runs in journal.runs.items()
        if job_id not in reused
        and runs[0].ended is not None
        and runs[0].ended < started
        and not runs[0].raised
        and any(r.started > started for r in runs[1:])
    ]
    scenario.extra.update(
        # what was at stake: jobs acknowledged within a second before the fault
        aof_at_risk=sum(1 for e in journal.enqueued.values() if started - 1.0 <= e.at < started),
        aof_lost=len(lost_at),
        aof_ids_reused=len(reused),
        aof_window_s=round(window, 3),
        aof_outcomes_lost=len(redone),
        aof_outcome_window_s=round(max((started - e for e in redone), default=0.0), 3),
    )
    if outside:
        scenario.problems.append(
            f"{len(outside)} jobs acknowledged more than {AOF_WINDOW_S}s before the {what} "
            f"were lost, e.g. {[(j, round(started - lost_at[j], 2)) for j in outside[:5]]} "
            "(job, seconds before the fault)"
        )
    # The jobs lost within the window are forgiven (not the rest of the check): their ids are
    # taken apart from the jobs that got them since.
    judged = parse_journal(forget(text, reused, started))
    scenario.not_due.update(-j if j in reused else j for j in lost_at)
    scenario.check(slack=SERVER_SLACK_S, journal=judged)


# -- 2. a restart without persistence ----------------------------------------------------------


@on_redis
def test_redis_restart_without_persistence_loses_everything_and_workers_go_on(
    scenario: Scenario,
) -> None:
    server = server_of(scenario)
    workers = drain_under_way(scenario)
    # The enqueuer stops first: an enqueue acknowledged just around the restart could not be
    # told apart (stored before it and lost, or after it and kept).
    scenario.stop_enqueuers()
    for enqueuer in scenario.enqueuers:
        enqueuer.proc.wait(30)

    started = time.monotonic()
    server.restart("shutdown-nosave")
    ended = time.monotonic()
    scenario.fault(
        "redis SHUTDOWN NOSAVE and restart (nothing on disk)",
        workers,
        started,
        ended=ended,
        server_wide=True,
        jobs={},  # gone with the rest: nothing to rescue
    )

    # What was lost, by design: every job; those not done yet never will be.
    journal = scenario.journal()
    done = {j for j, runs in journal.runs.items() if any(r.ended and not r.raised for r in runs)}
    acknowledged = set(journal.enqueued)
    scenario.extra.update(
        restart_s=round(ended - started, 2),
        records_lost=len(acknowledged),
        unfinished_lost=len(acknowledged - done),
    )
    with server.client() as client:
        scenario.extra["keys_after_restart"] = client.dbsize()

    # The workers let go of what they held; then a worker that starts now, new jobs, and an
    # enqueuer again. Job ids start over: the judged journal begins here.
    time.sleep(SETTLE_S)
    cut = time.monotonic()
    late = scenario.start_worker(concurrency=CONCURRENCY)
    try:
        scenario.wait_started([late])
    except AssertionError as exc:
        scenario.problems.append(f"a worker started after the empty restart did not start: {exc}")
    try:
        scenario.enqueue(300, task="work", ms=5, first=2_000_000)
    except conveyor.ConveyorError as exc:
        scenario.problems.append(
            f"enqueue after the empty restart raised {type(exc).__name__}: {exc}"
        )
    (scenario.root / "stop-enqueuer").unlink()
    scenario.start_enqueuer(300, batch=10, pause=0.02, ms=5, first=3_000_000)
    scenario.drain(timeout=AFTER_EMPTY_RESTART_S)
    scenario.expect_alive([*workers, late], "after the empty restart")
    judged = parse_journal(since(scenario.journal_path.read_text(errors="replace"), cut))
    scenario.extra["jobs_after_restart"] = len(judged.enqueued)
    if len(judged.enqueued) < 600:
        scenario.problems.append(
            f"only {len(judged.enqueued)} of the 600 jobs enqueued after the restart were "
            "acknowledged"
        )
    scenario.check(slack=SERVER_SLACK_S, journal=judged)


# -- 3. maxmemory ------------------------------------------------------------------------------


@on_redis
def test_redis_maxmemory_reached_refuses_enqueue_and_workers_go_on(scenario: Scenario) -> None:
    server = server_of(scenario)
    workers = drain_under_way(scenario)
    before = scenario.running_jobs() or {}

    limit = server.used_memory() + HEADROOM_BYTES
    set_at = time.monotonic()
    server.configure(maxmemory=str(limit))
    scenario.extra["maxmemory"] = limit
    refused = poll_until(lambda: any(e.at >= set_at for e in scenario.journal().errors), 30)
    try:
        if not refused:
            scenario.give_up(f"the enqueuer was not refused within 30s of maxmemory {limit}")
        started = min(e.at for e in scenario.journal().errors if e.at >= set_at)
        scenario.extra["filled_s"] = round(started - set_at, 2)
        # Full, it stays full: right at the limit, a write that frees a buffer lets a small
        # one in now and then; below it, none.
        server.configure(maxmemory=str(server.used_memory() - HEADROOM_BYTES))
        # The victims: jobs running while full (reads are still served), their outcomes refused.
        before = scenario.running_jobs() or before
        try:
            scenario.tasks.work.enqueue(-1, 0)
            scenario.problems.append("enqueue returned while Redis was out of memory")
        except BackendUnavailable as exc:
            scenario.extra["full_error"] = str(exc)[:100]
        except Exception as exc:
            scenario.problems.append(
                f"enqueue on a full Redis raised {type(exc).__module__}."
                f"{type(exc).__qualname__}: {exc} (not BackendUnavailable)"
            )
        # The keyspace while full: no job half written by a script refused midway.
        broken = scenario.keyspace_problems()
        if broken:
            scenario.problems.append("while full:\n  " + "\n  ".join(broken))
        time.sleep(max(0.0, started + FULL_S - time.monotonic()))
        scenario.expect_alive(workers, "while Redis was out of memory")
    finally:
        server.configure(maxmemory="0")
    scenario.fault(
        "redis maxmemory reached (noeviction)",
        workers,
        started,
        ended=time.monotonic(),
        server_wide=True,
        jobs=before,
    )

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after Redis had memory again")
    scenario.extra["enqueue_refused"] = len(
        [e for e in scenario.journal().errors if e.at >= set_at]
    )
    scenario.check(slack=FULL_SLACK_S)


# -- 4. CLIENT KILL ----------------------------------------------------------------------------


@on_redis
def test_redis_client_kill_of_a_workers_connections_mid_drain(scenario: Scenario) -> None:
    server = server_of(scenario)
    workers = drain_under_way(scenario)
    leader = scenario.wait_leader()
    victim = next(w for w in workers if w is not leader)
    killed = []
    for n in range(CLIENT_KILLS):
        target = leader if n == CLIENT_KILLS // 2 else victim  # the leader once
        scenario.wait_busy(target)
        at = time.monotonic()
        running = scenario.running_jobs([target.pid])
        count = server.kill_clients_of(target.pid)
        killed.append(count)
        scenario.fault("CLIENT KILL of its connections", [target], at, jobs=running)
        if not count:
            scenario.problems.append(
                f"no connection of worker {target.pid} was found to kill (CLIENT LIST by "
                "local port, from /proc)"
            )
        time.sleep(0.4)
    scenario.extra["connections_killed"] = sum(killed)

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after its connections were killed")
    scenario.check(slack=CLIENT_KILL_SLACK_S)


# -- 4b. another client's long script ----------------------------------------------------------

#: How long another client's script holds the server, past its busy-reply threshold.
BUSY_S = 1.5
BUSY_THRESHOLD_MS = 200
#: A script that does nothing but hold the server (it reads the clock until the time is up).
HOLD_SCRIPT = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
    t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


@on_redis
def test_redis_another_clients_long_script_is_an_outage_workers_ride_out(
    scenario: Scenario,
) -> None:
    """While another client's script holds the server past `busy-reply-threshold`, every other
    command is answered BUSY: conveyor takes that for an outage (enqueue raises
    BackendUnavailable, workers back off), and the work goes on once the script ends."""
    server = server_of(scenario)
    server.configure(busy_reply_threshold=str(BUSY_THRESHOLD_MS))
    workers = drain_under_way(scenario)
    at = time.monotonic()
    fault = scenario.fault(
        "another client's script holds the server", workers, at, server_wide=True
    )
    with server.client(socket_timeout=BUSY_S + 10) as client:
        client.eval(HOLD_SCRIPT, 0, str(int(BUSY_S * 1_000_000)))
    fault.ended = time.monotonic()

    after_the_fault(scenario)
    scenario.expect_alive(workers, "after another client's script held the server")
    errors = errors_by_type(scenario)
    scenario.extra["enqueue_errors"] = dict(errors)
    if set(errors) - {f"{BackendUnavailable.__module__}.{BackendUnavailable.__qualname__}"}:
        scenario.problems.append(f"enqueue failed with other than BackendUnavailable: {errors}")
    # The outcomes and starts that waited out the hold are each recorded at their own time
    # all the same: the checker judges every stored start and end against the journal's.
    scenario.check(slack=BUSY_S + CLIENT_KILL_SLACK_S)


# -- 5. an evicting policy ---------------------------------------------------------------------


@on_redis
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_redis_evicting_policy_is_refused_at_start(scenario: Scenario, policy: str) -> None:
    server = server_of(scenario)
    scenario.open()
    server.configure(maxmemory_policy=policy)

    def refusal(what: str, call: object) -> None:
        assert callable(call)
        try:
            call()
        except ConfigurationError as exc:
            if "noeviction" not in str(exc):
                scenario.problems.append(f"{what}: the refusal does not name noeviction: {exc}")
            scenario.extra.setdefault("refusal", str(exc)[:120])
            return
        except Exception as exc:
            scenario.problems.append(
                f"{what} raised {type(exc).__qualname__}: {exc} (not ConfigurationError)"
            )
            return
        scenario.problems.append(f"{what} was not refused under maxmemory-policy {policy}")

    url, prefix = scenario.project.url, scenario.prefix
    assert prefix is not None
    fresh = conveyor.App(url, redis_prefix=prefix)
    fresh.task(name="work")(lambda n, ms=0: n)
    refusal("a new App's first enqueue", lambda: fresh.tasks["work"].enqueue(1))
    fresh.close()
    # An App whose first call is `migrate`: refused too, and so is its work after that.
    migrated = conveyor.App(url, redis_prefix=f"{prefix}_m")
    migrated.task(name="work")(lambda n, ms=0: n)
    refusal("migrate() on a new store", migrated.migrate)
    refusal("enqueue after migrate() was refused", lambda: migrated.tasks["work"].enqueue(2))
    migrated.close()

    worker = scenario.start_worker()
    try:
        code: int | None = worker.proc.wait(30)
    except Exception:
        code = None
        worker.kill()
    scenario.extra["worker_exit"] = code
    if code == 0 or code is None:
        scenario.problems.append(
            f"a worker on a server with maxmemory-policy {policy} "
            f"{'kept running' if code is None else 'exited 0'}\n{worker.tail(10)}"
        )
    elif "noeviction" not in worker.log_text():
        scenario.problems.append(
            f"the worker's refusal does not name noeviction\n{worker.tail(10)}"
        )
    with server.client() as client:
        stored = client.keys(f"{{{prefix}}}:job:*")
    if stored:
        scenario.problems.append(f"{len(stored)} jobs were stored on an evicting server")
    scenario.conclude(jobs=0)


@on_redis
def test_redis_without_persistence_is_named_once_and_with_aof_not(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that keeps nothing on disk is worked with, and said so once a process (a
    warning that names the loss and the docs); with AOF on, nothing is said."""
    server = server_of(scenario)
    scenario.open()
    prefix = scenario.prefix
    assert prefix is not None
    # database numbers of this test's own: each process warns once per server URL
    volatile, durable = server.url[:-2] + "/11", server.url[:-2] + "/12"
    with caplog.at_level(logging.WARNING, logger="conveyor.redis"):
        for _ in range(2):
            app = conveyor.App(volatile, redis_prefix=prefix)
            app.task(name="work")(lambda n, ms=0: n)
            app.tasks["work"].enqueue(1)
            app.close()
        warned = [
            r.getMessage() for r in caplog.records if "keeps nothing on disk" in r.getMessage()
        ]
        server.configure(appendonly="yes")
        app = conveyor.App(durable, redis_prefix=prefix)
        app.task(name="work")(lambda n, ms=0: n)
        app.tasks["work"].enqueue(2)
        app.close()
    after = [r.getMessage() for r in caplog.records if "keeps nothing on disk" in r.getMessage()]
    if len(warned) != 1 or "docs/redis.md" not in warned[0]:
        scenario.problems.append(f"without persistence, warned {len(warned)} times: {warned}")
    if len(after) != len(warned):
        scenario.problems.append(f"with AOF on, warned again: {after[len(warned) :]}")
    scenario.conclude(jobs=0)


# -- 6. many enqueuers at once -----------------------------------------------------------------


@on_redis
def test_redis_1000_concurrent_enqueuers_all_succeed(scenario: Scenario) -> None:
    """1,000 enqueuers (8 processes x 125 threads x 5 calls, the threads of a process sharing
    its App): every call succeeds (Redis serves them one at a time, each enqueue one script)."""
    processes, threads, calls = 8, 125, 5
    scenario.open()
    started = time.monotonic()
    most = [0]

    def sample() -> bool:
        most[0] = max(most[0], int(server_of(scenario).info("clients")["connected_clients"]))
        return False

    procs = storm(scenario, processes, threads, calls, "once")
    poll_until(lambda: sample() or all(p.poll() is not None for p in procs), 90)
    wait_storm(scenario, procs, timeout=90)
    scenario.extra["storm_s"] = round(time.monotonic() - started, 1)
    scenario.extra["server_connections_max"] = most[0]

    journal = scenario.journal()
    errors = errors_by_type(scenario)
    if errors:
        first = journal.errors[0]
        scenario.problems.append(
            f"{sum(errors.values())} of {processes * threads * calls} enqueue calls failed "
            f"({dict(errors)}), the first: {first.type}: {first.message}"
        )
    stored = stored_count(scenario)
    if not stored == len(journal.enqueued) == journal.acks == processes * threads * calls:
        scenario.problems.append(
            f"{journal.acks} calls acknowledged, {len(journal.enqueued)} distinct jobs, "
            f"{stored} stored"
        )
    scenario.start_workers(2, concurrency=20)
    scenario.drain()
    scenario.check(slack=0.0)


# -- the journal helpers -----------------------------------------------------------------------

JOURNAL = """\
enq 1 100 1.0
enq 2 100 1.1
start 1 1 200 1.5
start 2 1 200 1.6
end 1 1 200 1.7
enq 1 100 5.0
start 1 1 200 5.5
end 2 1 200 5.6
end 1 1 200 5.8
"""


def test_redis_journal_helpers_keep_one_job_per_id() -> None:
    """Job 1 was lost at the restart (t=3) and its id given again at t=5; job 2 was running
    through it."""
    journal = parse_journal(JOURNAL)
    assert acked_twice(journal) == {1}
    forgotten = parse_journal(forget(JOURNAL, {1}, before=3.0))
    assert set(forgotten.enqueued) == {-1, 1, 2}
    assert [(r.attempt, r.started, r.ended) for r in forgotten.runs[-1]] == [(1, 1.5, 1.7)]
    assert [(r.attempt, r.started, r.ended) for r in forgotten.runs[1]] == [(1, 5.5, 5.8)]
    assert forgotten.runs[2][0].ended == 5.6
    cut = parse_journal(since(JOURNAL, 3.0))
    assert set(cut.enqueued) == {1} and cut.enqueued[1].at == 5.0
    assert set(cut.runs) == {1} and cut.runs[1][0].ended == 5.8
