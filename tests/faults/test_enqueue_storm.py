"""Scenario 8: many concurrent enqueuers through one App per process.

- PostgreSQL, 1,000 enqueuers: 8 processes x 125 threads x 5 calls, the threads of a process
  sharing its App. Every call must succeed: callers queue for the bounded pool.
- PostgreSQL, a 7 s stall in the middle of a storm (the test holds an ACCESS EXCLUSIVE lock on
  the jobs table): callers that get BackendUnavailable retry with the same unique_key (which
  makes a retried enqueue safe). The enqueue rate must recover within ~2 s of the stall's end,
  and every key is stored once.
- SQLite, 4 processes x 25 threads: every call succeeds or raises BackendUnavailable (never
  anything else); retried with the same unique_key, every job is stored once.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from .checker import stored_jobs
from .cluster import MAX_CONNECTIONS
from .harness import Enqueuer, Scenario, poll_until
from .journal import Journal

#: One storm process: `threads` threads, each making `calls` enqueue calls (mode "once": each
#: call once; "retry": a call that raised BackendUnavailable is made again with the same
#: unique_key; "until": like retry, calls until the `stop` file appears). Every success is an
#: `enq` line, every exception an `err` line. The threads start together on the `go` file.
STORM = """
import sys
import threading
import time

import conveyor
from tasks import WORKDIR, _os, journal, now, work

threads, calls, mode, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
pid = _os.getpid()
go, stop = WORKDIR / "go", WORKDIR / "stop"


def call(key, n):
    fn = work if mode == "once" else work.configure(unique_key=key)
    return fn.enqueue(n, 0)


started = threading.Event()


def run(t):
    started.wait()
    i = 0
    while (i < calls) if mode != "until" else not stop.exists():
        key = f"{tag}-{pid}-{t}-{i}"
        while True:
            try:
                job = call(key, i)
            except Exception as exc:
                kind = type(exc)
                journal("err", f"{kind.__module__}.{kind.__qualname__}", pid, now(), exc)
                if mode != "once" and isinstance(exc, conveyor.BackendUnavailable):
                    time.sleep(0.1)
                    continue
                break
            journal("enq", job.id, pid, now())
            break
        i += 1


workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
journal("ready", pid, now())
while not go.exists():  # one thread watches for the start, the others wait without spinning
    time.sleep(0.005)
started.set()
for w in workers:
    w.join()
"""

UNAVAILABLE = "conveyor.errors.BackendUnavailable"
#: conveyor's default pool size (CONVEYOR_POSTGRES_POOL_SIZE): one App's connections at most.
POOL_SIZE = 10
#: How soon after the stall the enqueue rate must be back to half what it was before.
RECOVERY_S = 2.0
STALL_S = 7.0
#: The storm's drain by two workers has no faults: no victims, nothing to bound.
NO_FAULT_SLACK_S = 0.0


def storm(
    scenario: Scenario, processes: int, threads: int, calls: int, mode: str
) -> list[subprocess.Popen[bytes]]:
    """Start the storm processes and, once every thread of them is ready, let them go."""
    script = scenario.root / "storm.py"
    script.write_text(STORM)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    # conveyor's own connect timeout (not the scenarios' short one): no outage here but the
    # stall, and a thousand threads make a 2-core machine slow to connect.
    settings = {k: v for k, v in scenario.env().items() if k != "CONVEYOR_CONNECT_TIMEOUT"}
    environ.update(
        settings,
        PYTHONPATH=os.pathsep.join(
            p for p in (str(scenario.root), os.environ.get("PYTHONPATH", "")) if p
        ),
    )
    procs = []
    for p in range(processes):
        log_path = scenario.root / f"storm-{p}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(threads), str(calls), mode, f"s{p}"],
                cwd=scenario.root,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)
        scenario.enqueuers.append(Enqueuer(proc, log_path))  # stopped with the scenario
    if not poll_until(lambda: len(scenario.journal().ready) == processes, 60):
        scenario.give_up(f"the storm's {processes} processes did not start within 60s")
    (scenario.root / "go").write_text("")
    return procs


def wait_storm(
    scenario: Scenario, procs: list[subprocess.Popen[bytes]], timeout: float, kill: bool = False
) -> None:
    """Wait for the storm processes to end; with `kill`, end those still running after
    `timeout` (what they acknowledged is in the journal), else that is a problem."""
    deadline = time.monotonic() + timeout
    for n, proc in enumerate(procs):
        try:
            code: int | None = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            if not kill:
                scenario.problems.append(
                    f"storm process {proc.pid} still running after {timeout:.0f}s"
                )
            continue
        if code != 0:
            log = (scenario.root / f"storm-{n}.log").read_text(errors="replace")
            scenario.problems.append(f"storm process {proc.pid} exited {code}:\n{log[-2000:]}")


def stored_once(scenario: Scenario, journal: Journal) -> int:
    """Every acknowledged job is stored, and no unique key twice; returns the jobs stored."""
    jobs = stored_jobs(scenario.app)
    keys = Counter(job.unique_key for job in jobs.values() if job.unique_key)
    twice = [key for key, n in keys.items() if n > 1]
    missing = sorted(set(journal.enqueued) - set(jobs))
    if twice:
        scenario.problems.append(f"{len(twice)} unique keys stored more than once: {twice[:5]}")
    if missing:
        scenario.problems.append(f"{len(missing)} acknowledged jobs not stored: {missing[:5]}")
    return len(jobs)


class ConnectionSampler:
    """Counts the server's client connections every 0.1 s while the storm runs (on a
    connection made beforehand) and keeps the most seen."""

    def __init__(self, scenario: Scenario) -> None:
        assert scenario.cluster is not None
        self.conn = scenario.cluster.connect()
        self.most = 0
        self.most_one = 0  # the most of one application_name (one process, with conveyor's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rows = self.conn.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' GROUP BY 1"
            ).fetchall()
            self.most = max(self.most, sum(int(n) for _, n in rows))
            self.most_one = max([self.most_one, *(int(n) for _, n in rows)])

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def errors_by_type(scenario: Scenario) -> Counter[str]:
    return Counter(e.type for e in scenario.journal().errors)


def stored_count(scenario: Scenario) -> int:
    return sum(sum(states.values()) for states in scenario.app.queue_stats().values())


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.timeout(180)
def test_1000_concurrent_enqueuers_all_succeed(scenario: Scenario) -> None:
    processes, threads, calls = 8, 125, 5
    scenario.open()
    started = time.monotonic()
    with ConnectionSampler(scenario) as sampler:
        wait_storm(scenario, storm(scenario, processes, threads, calls, "once"), timeout=90)
    scenario.extra["storm_s"] = round(time.monotonic() - started, 1)
    scenario.extra["server_connections_max"] = sampler.most
    scenario.extra["one_process_connections_max"] = sampler.most_one
    if sampler.most_one > POOL_SIZE:
        scenario.problems.append(
            f"one process had {sampler.most_one} connections open at once (its App's pool holds "
            f"{POOL_SIZE}); the server saw up to {sampler.most} of its {MAX_CONNECTIONS}"
        )

    journal = scenario.journal()
    errors = errors_by_type(scenario)
    scenario.extra["enqueue_calls_failed"] = sum(errors.values())
    if errors:
        first = journal.errors[0]
        scenario.problems.append(
            f"{sum(errors.values())} of {processes * threads * calls} enqueue calls failed "
            f"({dict(errors)}), the first: {first.type}: {first.message}"
        )
    stored = stored_count(scenario)
    if stored != journal.acks or len(journal.enqueued) != journal.acks:
        scenario.problems.append(
            f"{journal.acks} calls acknowledged, {len(journal.enqueued)} "
            f"distinct jobs, {stored} stored"
        )

    scenario.start_workers(2, concurrency=20)
    scenario.drain()
    scenario.check(slack=NO_FAULT_SLACK_S)


def rate_figures(
    times: list[float], stall_began: float, stall_ended: float
) -> tuple[float, float | None, dict[str, int]]:
    """The enqueue rate per second before the stall, how long after the stall's end a 1 s
    window first reached half of it (None: never), and successes per second around it."""
    times.sort()

    def count(a: float, b: float) -> int:
        return sum(1 for t in times if a <= t < b)

    before = [count(stall_began - k - 1, stall_began - k) for k in range(2)]
    rate = statistics.median(before)
    recovered = None
    w = stall_ended
    while w + 1 <= (times[-1] if times else w):
        if count(w, w + 1) >= rate / 2:
            recovered = w + 1 - stall_ended
            break
        w += 0.1
    per_second = {
        f"{int(k - 2):+d}s": count(stall_began + k - 2, stall_began + k - 1)
        for k in range(int(STALL_S) + 8)
    }
    return rate, recovered, per_second


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.timeout(180)
def test_enqueue_rate_recovers_after_a_7s_stall(scenario: Scenario) -> None:
    processes, threads = 8, 125
    assert scenario.cluster is not None
    scenario.open()
    # Connected before the storm: 1,000 threads leave a 2-core machine little room to connect.
    with scenario.cluster.connect(autocommit=False) as lock:
        procs = storm(scenario, processes, threads, 0, "until")
        # the storm's steady rate, before the stall (a loaded machine is slow to get going)
        if not poll_until(lambda: scenario.journal().enqueued, 60):
            scenario.give_up("no enqueue of the storm succeeded within 60s")
        time.sleep(3)
        lock.execute(f'LOCK TABLE "{scenario.schema}".jobs IN ACCESS EXCLUSIVE MODE')
        stall_began = time.monotonic()
        time.sleep(STALL_S)
        lock.rollback()
    stall_ended = time.monotonic()
    time.sleep(5)
    (scenario.root / "stop").write_text("")
    wait_storm(scenario, procs, timeout=5, kill=True)

    journal = scenario.journal()
    times = [e.at for e in journal.enqueued.values()]
    rate, recovered, per_second = rate_figures(times, stall_began, stall_ended)
    errors = errors_by_type(scenario)
    early = [e for e in journal.errors if e.at < stall_began]
    if early or not rate:
        # Callers queue for the pool: before the stall every call must succeed, else there is
        # no steady rate to recover to.
        scenario.problems.append(
            f"before the stall {len(early)} enqueue calls failed (rate {rate:.0f}/s), the first:"
            f" {early[0].type}: {early[0].message}"
            if early
            else "no enqueue succeeded before the stall"
        )
    others = {k: v for k, v in errors.items() if k != UNAVAILABLE}
    if others:
        scenario.problems.append(f"enqueue raised {others} (only BackendUnavailable is expected)")
    if recovered is None or recovered > RECOVERY_S:
        scenario.problems.append(
            f"the enqueue rate ({rate:.0f}/s before the stall) did not recover to half within "
            f"{RECOVERY_S}s of the stall's end (recovered after: "
            f"{'never' if recovered is None else f'{recovered:.1f}s'}); per second from "
            f"2 s before the stall: {per_second}"
        )
    stored = stored_once(scenario, journal)
    scenario.conclude(
        jobs=len(journal.enqueued),
        stored=stored,
        enqueue_errors=sum(errors.values()),
        rate_before=rate,
        recovery_s=None if recovered is None else round(recovered, 1),
        bound_s=RECOVERY_S,
        per_second=per_second,
    )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_enqueue_storm_succeeds_or_is_unavailable(scenario: Scenario) -> None:
    processes, threads, calls = 4, 25, 5
    scenario.open()
    wait_storm(scenario, storm(scenario, processes, threads, calls, "retry"), timeout=90)

    journal = scenario.journal()
    errors = errors_by_type(scenario)
    scenario.extra["unavailable"] = errors.get(UNAVAILABLE, 0)
    expected = processes * threads * calls
    stored = stored_count(scenario)
    if not stored == len(journal.enqueued) == journal.acks == expected:
        scenario.problems.append(
            f"{expected} keys, {journal.acks} acknowledged, "
            f"{len(journal.enqueued)} distinct jobs, {stored} stored"
        )

    scenario.start_workers(2)
    scenario.drain()
    scenario.check(slack=NO_FAULT_SLACK_S)  # also fails on any error but BackendUnavailable


#: How long the storm beside the workers lasts: several leases (the scenarios' lease is 2 s).
BESIDE_WORKERS_S = 8.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_workers_keep_their_heartbeat_through_an_enqueue_storm(scenario: Scenario) -> None:
    """Two workers drain while 4 processes x 25 threads enqueue as fast as they can into the
    same file: every write waits for SQLite's one write lock. No worker may wait so long that
    its heartbeat misses half a lease (it stops claiming, `worker.claims_paused`) or its jobs
    are taken from it. With every write asking for the lock every millisecond, 100 enqueuing
    threads won nearly every turn (and most of the CPU): heartbeats waited 2 s."""
    scenario.open()
    scenario.enqueue(2_000, task="work", ms=5)
    workers = scenario.start_workers(2)
    procs = storm(scenario, 4, 25, 0, "until")
    time.sleep(BESIDE_WORKERS_S)
    (scenario.root / "stop").write_text("")
    wait_storm(scenario, procs, timeout=15, kill=True)

    paused = [e for w in workers for e in w.events("worker.claims_paused")]
    scenario.extra["claims_paused"] = len(paused)
    scenario.extra["enqueued"] = len(scenario.journal().enqueued)
    if paused:
        scenario.problems.append(
            f"workers paused their claims {len(paused)} times: a heartbeat waited more than "
            f"half a lease for the write lock (e.g. {paused[0]})"
        )
    scenario.drain()
    scenario.check(slack=NO_FAULT_SLACK_S)
