"""The scenario harness: one `Scenario` per test, on a SQLite file, a schema of the suite's
throwaway PostgreSQL cluster or a key prefix on its throwaway Redis server. It writes the
tasks module (tasks that journal every start and end and return "pid:attempt"), enqueues and
journals acknowledged jobs, starts workers and enqueuer processes, causes faults and records
each one with its victim jobs, waits for the drain, stops everything and runs the checker; the
figures go to the suite's report.

Processes are the acceptance harness's (`Project`, `WorkerProcess`); this adds what faults
need on top.
"""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import conveyor
from acceptance.conftest import Project, WorkerProcess, event_time
from conveyor import JobState
from conveyor.backends.base import JobFilter

from . import journal as journal_module
from .checker import Fault, Report, VictimMonitor, assert_report, check, pid_of, stored_jobs
from .cluster import Cluster
from .journal import Journal, read_journal
from .redis_server import RedisServer, store_problems

#: Short leases so that rescues happen within seconds.
LEASE_S = 2.0
#: The leader's maintenance round, in which it rescues expired leases, as a share of the lease
#: (conveyor's rescue interval).
RESCUE_FRACTION = 0.33
#: Per call a PostgreSQL worker or enqueuer waits for a connection before BackendUnavailable.
CONNECT_TIMEOUT_S = 2
#: The longest one statement may take (CONVEYOR_STATEMENT_TIMEOUT).
STATEMENT_TIMEOUT_S = 3
#: How long a drain may take before the scenario stops waiting and lets the checker report
#: what is unfinished. Generous for a 2-core machine; a passing scenario never waits this long.
DRAIN_DEADLINE_S = 60.0
POLL_S = 0.02

#: The tasks every scenario has. `work` is async, `work_sync` runs on a worker thread; both
#: journal their start and end and return "pid:attempt" (the checker's fence: the stored
#: result names the run that wrote it). Attempts are plentiful and retries quick: a job hit by
#: several faults must still get done.
BASE_TASKS = (
    journal_module.WRITER
    + """
import asyncio
import time

import conveyor

app = conveyor.App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA, redis_prefix=REDIS_PREFIX)


@app.task(name="work", pass_context=True, max_attempts=25, backoff=conveyor.fixed(0.1))
async def work(ctx, n, ms=0):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    if ms:
        await asyncio.sleep(ms / 1000)
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"


@app.task(name="work_sync", pass_context=True, max_attempts=25, backoff=conveyor.fixed(0.1))
def work_sync(ctx, n, ms=0):
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    if ms:
        time.sleep(ms / 1000)
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"


@app.task(name="held", pass_context=True, queue="held", max_attempts=25,
          backoff=conveyor.fixed(0.1))
async def held(ctx, n, ms=0):
    # Runs until the test releases it (or for `ms` at most): a job sure to be in flight.
    journal("start", ctx.job_id, ctx.attempt, _os.getpid(), now())
    deadline = time.monotonic() + (ms / 1000 if ms else 3600)
    while not (WORKDIR / "release").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    journal("end", ctx.job_id, ctx.attempt, _os.getpid(), now())
    return f"{_os.getpid()}:{ctx.attempt}"
"""
)

#: A process that enqueues `work` jobs in batches and journals each acknowledged job; an
#: enqueue that raises is journaled (`err`) and tried again (a new call: the jobs of a call
#: that failed are not acknowledged). It stops after `count` jobs, or when the file
#: `stop-enqueuer` appears. argv: count batch pause_s ms first_n.
ENQUEUER = """
import sys
import time

from tasks import WORKDIR, _os, journal, now, work

count, batch, pause, ms, first = (
    int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
)
pid = _os.getpid()
journal("ready", pid, now())
n = first
while n < first + count and not (WORKDIR / "stop-enqueuer").exists():
    size = min(batch, first + count - n)
    try:
        if size == 1:
            jobs = [work.enqueue(n, ms)]
        else:
            jobs = work.enqueue_many([(i, ms) for i in range(n, n + size)])
    except Exception as exc:
        kind = type(exc)
        journal("err", f"{kind.__module__}.{kind.__qualname__}", pid, now(), exc)
        time.sleep(0.1)
        continue
    for job in jobs:
        journal("enq", job.id, pid, now())
    n += size
    if pause:
        time.sleep(pause)
"""

#: libfaketime 0.9.10 (Debian's) breaks `time.sleep` on Python >= 3.11 when the monotonic
#: clock is left alone: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) gets a shifted
#: deadline, EINVAL (wolfcw/libfaketime#426). Faked workers import this first: when sleeping
#: fails, time.sleep waits in select() instead, which libfaketime leaves alone.
FAKETIME_SHIM = """
import os
import select
import time

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    try:
        time.sleep(0.0001)
    except OSError:
        def _sleep(seconds, _monotonic=time.monotonic, _select=select.select):
            deadline = _monotonic() + seconds
            while (remaining := deadline - _monotonic()) > 0:
                _select([], [], [], remaining)

        time.sleep = _sleep
"""


def libfaketime() -> Path | None:
    """libfaketime.so.1: where $CONVEYOR_TEST_LIBFAKETIME says (a copy not installed system-wide,
    e.g. unpacked from the Debian package with `dpkg -x`), or where Debian's `faketime` puts it."""
    given = os.environ.get("CONVEYOR_TEST_LIBFAKETIME")
    if given:
        return Path(given) if Path(given).is_file() else None
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def wait_stopped(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Until the kernel shows each process stopped (a signal is delivered a moment after it is
    sent); a process that is gone counts as stopped."""

    def stopped(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "TtXZ"
        except OSError:
            return True

    poll_until(lambda: all(stopped(pid) for pid in pids), timeout)


def running_of(app: conveyor.App) -> Callable[[set[int]], dict[int, tuple[int, int | None]]]:
    """What the victim monitor reads: which of some jobs run now, through `app`'s store (the
    ids filter reads only those jobs)."""

    def running(ids: set[int]) -> dict[int, tuple[int, int | None]]:
        where = JobFilter.of([JobState.RUNNING], ids=ids)
        jobs = app.backend.sync.list_jobs(where, len(ids))
        return {j.id: (j.attempt, pid_of(j.worker_id)) for j in jobs}

    return running


def poll_until(predicate: Callable[[], Any], timeout: float) -> bool:
    """Poll until `predicate` is truthy (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


@dataclass
class Enqueuer:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- enqueuer pid {self.proc.pid} ---\n" + "\n".join(text)


@dataclass
class Scenario:
    """One scenario's processes, faults and figures."""

    name: str
    backend: str
    project: Project
    record: Callable[[dict[str, Any]], None]
    cluster: Cluster | None = None
    redis: RedisServer | None = None
    lease: float = LEASE_S
    tasks: Any = None
    monitor: VictimMonitor | None = None
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    not_due: set[int] = field(default_factory=set)
    enqueuers: list[Enqueuer] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    #: whether every worker's wall clock is the machine's (the stored dates are checked)
    dated: bool = True
    _monitor_app: conveyor.App | None = None

    # -- set-up -----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def schema(self) -> str | None:
        return self.project.postgres_schema

    @property
    def prefix(self) -> str | None:
        """The Redis store's key prefix (its keys are `{prefix}:...`); None on SQL."""
        return self.project.redis_prefix

    @property
    def app(self) -> conveyor.App:
        return self.tasks.app  # type: ignore[no-any-return]

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.log"

    def open(self, extra_tasks: str = "") -> ModuleType:
        """Write the tasks module (the base tasks and `extra_tasks`), import it here, create
        the schema on PostgreSQL (the layout version on Redis), and start watching for
        victims."""
        self.tasks = self.project.write_tasks(BASE_TASKS + extra_tasks)
        if self.backend in ("postgres", "redis"):
            self.app.migrate()
        else:
            self.app.queue_stats()  # creates the SQLite file and its schema
        self._monitor_app = conveyor.App(
            self.project.url,
            postgres_schema=self.schema,
            redis_prefix=self.prefix,
            connect_timeout=1,
        )
        self.monitor = VictimMonitor(running_of(self._monitor_app))
        return self.tasks  # type: ignore[no-any-return]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a worker or enqueuer of this scenario gets."""
        env = {
            "CONVEYOR_LEASE_SECONDS": str(self.lease),
            "CONVEYOR_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S),
            "CONVEYOR_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT_S),
        }
        if self.schema:
            env["CONVEYOR_POSTGRES_SCHEMA"] = self.schema
        if self.prefix:
            env["CONVEYOR_REDIS_PREFIX"] = self.prefix
        env.update(extra)
        return env

    def faketime_env(
        self, offset: str | None = None, rc_file: Path | None = None
    ) -> dict[str, str]:
        """libfaketime for a worker: its wall clock shifted by `offset` ("+3600"), or by what
        `rc_file` says, read again on every call (rewrite it to jump the clock at once). The
        monotonic clock stays real, as in a real clock jump. The jobs' dates are then not
        checked against the journal's."""
        self.dated = False
        lib = libfaketime()
        assert lib is not None, "the test calls conftest.require_faketime() first"
        shim = self.root / "faketime-shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(FAKETIME_SHIM)
        env = {
            "LD_PRELOAD": str(lib),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(shim), str(self.root), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        if rc_file is not None:
            env["FAKETIME_TIMESTAMP_FILE"] = str(rc_file)
        else:
            assert offset is not None
            env["FAKETIME"] = offset
        return env

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(
        self,
        count: int,
        *,
        task: str = "work",
        ms: int = 0,
        batch: int = 500,
        first: int = 0,
        **options: Any,
    ) -> list[int]:
        """Enqueue `count` jobs of `task` from the test process and journal them."""
        fn = getattr(self.tasks, task)
        if options:
            fn = fn.configure(**options)
        ids: list[int] = []
        for start in range(first, first + count, batch):
            numbers = range(start, min(start + batch, first + count))
            jobs = fn.enqueue_many([(n, ms) for n in numbers])
            at = self.tasks.now()
            for job in jobs:
                self.tasks.journal("enq", job.id, os.getpid(), at)
            ids.extend(job.id for job in jobs)
        return ids

    def start_enqueuer(
        self, count: int, *, batch: int = 10, pause: float = 0.02, ms: int = 0, first: int = 0
    ) -> Enqueuer:
        """A process enqueuing `count` jobs while the scenario goes on (see ENQUEUER)."""
        script = self.root / "enqueuer.py"
        script.write_text(ENQUEUER)
        log_path = self.root / f"enqueuer-{len(self.enqueuers) + 1}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        environ.update(
            self.env(),
            PYTHONPATH=os.pathsep.join(
                p for p in (str(self.root), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    str(count),
                    str(batch),
                    str(pause),
                    str(ms),
                    str(first),
                ],
                cwd=self.root,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        enqueuer = Enqueuer(proc, log_path)
        self.enqueuers.append(enqueuer)
        return enqueuer

    def release(self) -> None:
        """Let every `held` job end."""
        (self.root / "release").write_text("")

    def stop_enqueuers(self) -> None:
        """Ask the enqueuer processes to stop after their current batch."""
        (self.root / "stop-enqueuer").write_text("")

    def journal(self) -> Journal:
        return read_journal(self.journal_path)

    def ended(self) -> int:
        """How many runs have ended so far (journal `end` lines)."""
        if not self.journal_path.exists():
            return 0
        with self.journal_path.open("rb") as f:
            return sum(1 for line in f if line.startswith(b"end "))

    def wait_ended(self, count: int, timeout: float = DRAIN_DEADLINE_S) -> None:
        """Until `count` runs have ended: the drain is under way."""
        if not poll_until(lambda: self.ended() >= count, timeout):
            self.give_up(
                f"only {self.ended()} runs ended after {timeout:.0f}s, waiting for {count}"
            )

    def unfinished(self) -> int | None:
        """Jobs not finished yet (scheduled ones only if due soon), or None while the store
        cannot be read."""
        try:
            # Scheduled jobs are listed before the states are counted: a job that leaves
            # `scheduled` in between is then counted twice (harmlessly), never missed.
            ids = {j.id for j in self.app.list_jobs(state="scheduled", limit=100_000)}
            scheduled = len(ids - self.not_due)
            stats: Counter[JobState] = Counter()
            for per_queue in self.app.queue_stats().values():
                stats.update(per_queue)
        except conveyor.BackendUnavailable:
            return None
        busy = (JobState.WAITING, JobState.QUEUED, JobState.RUNNING, JobState.RETRYING)
        return sum(stats[s] for s in busy) + scheduled

    def drain(self, timeout: float = DRAIN_DEADLINE_S) -> bool:
        """Wait for the enqueuers to end and every job to finish. False after `timeout`: the
        scenario goes on to the check, which reports what is unfinished."""
        deadline = time.monotonic() + timeout
        for enqueuer in self.enqueuers:
            try:
                enqueuer.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.problems.append(
                    f"enqueuer {enqueuer.proc.pid} still running after "
                    f"{timeout:.0f}s\n{enqueuer.tail()}"
                )
                return False

        def done() -> bool:
            return not self.alive() or self.unfinished() == 0

        drained = poll_until(done, deadline - time.monotonic()) and self.unfinished() == 0
        self.extra["drained"] = drained
        if not drained:
            why = "no worker is left" if not self.alive() else f"not within {timeout:.0f}s"
            self.problems.append(
                f"the drain did not finish: {why} ({self.unfinished()} jobs unfinished)"
            )
        return drained

    # -- workers ----------------------------------------------------------------------------

    def start_worker(
        self, *args: str, concurrency: int = 10, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        return self.project.start_worker("-c", str(concurrency), *args, env=self.env(**(env or {})))

    def start_workers(self, count: int, *args: str, **kwargs: Any) -> list[WorkerProcess]:
        workers = [self.start_worker(*args, **kwargs) for _ in range(count)]
        self.wait_started(workers)
        return workers

    def wait_started(self, workers: Iterable[WorkerProcess]) -> None:
        for worker in workers:
            worker.wait_for_event("worker.started")

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.project.workers

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    def worker_id(self, worker: WorkerProcess) -> str:
        return str(worker.wait_for_event("worker.started")["worker_id"])

    def leader(self) -> WorkerProcess | None:
        """The worker that logged `leader.elected` most recently (by its log's timestamp)."""
        latest: tuple[str, WorkerProcess] | None = None
        for worker in self.workers:
            for event in worker.events("leader.elected"):
                if latest is None or str(event["timestamp"]) >= latest[0]:
                    latest = (str(event["timestamp"]), worker)
        return None if latest is None else latest[1]

    def wait_leader(
        self, among: Sequence[WorkerProcess] | None = None, timeout: float = 30.0
    ) -> WorkerProcess:
        """The leader, once one of `among` (default: the live workers) has been elected."""
        found: list[WorkerProcess] = []

        def elected() -> bool:
            leader = self.leader()
            pool = self.alive() if among is None else among
            if leader is not None and leader in pool:
                found.append(leader)
                return True
            return False

        if not poll_until(elected, timeout):
            self.give_up(f"no leader among the workers after {timeout:.0f}s")
        return found[-1]

    def elected_since(self, wall: float, other_than: WorkerProcess) -> list[WorkerProcess]:
        """Workers other than `other_than` that logged `leader.elected` at or after `wall`
        (POSIX time, as the logs' timestamps)."""
        return [
            w
            for w in self.workers
            if w is not other_than
            and any(event_time(e) >= wall for e in w.events("leader.elected"))
        ]

    def stop_workers(self, grace_s: float = 30.0) -> dict[int, int | None]:
        """SIGTERM every live worker and wait for it; one that does not exit is a problem
        (and is killed). Returns exit codes by pid."""
        codes: dict[int, int | None] = {}
        alive = self.alive()
        for worker in alive:
            worker.send(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for worker in alive:
            try:
                codes[worker.pid] = worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[worker.pid] = None
                self.problems.append(
                    f"worker {worker.pid} did not exit within {grace_s:.0f}s "
                    f"of SIGTERM\n{worker.tail(15)}"
                )
                worker.kill()
        return codes

    def expect_alive(self, workers: Iterable[WorkerProcess], when: str) -> None:
        """Record a problem for each worker that has exited (they must stay up)."""
        for worker in workers:
            code = worker.proc.poll()
            if code is not None:
                self.problems.append(
                    f"worker {worker.pid} exited ({code}) {when}\n{worker.tail(15)}"
                )

    # -- faults -----------------------------------------------------------------------------

    def running_jobs(self, pids: Iterable[int] | None = None) -> dict[int, int] | None:
        """Running jobs (of workers with these pids), id -> attempt; None if unreadable."""
        wanted = None if pids is None else set(pids)
        try:
            jobs = self.app.list_jobs(state="running", limit=100_000)
        except conveyor.BackendUnavailable:
            return None
        return {j.id: j.attempt for j in jobs if wanted is None or pid_of(j.worker_id) in wanted}

    def busy_pids(self) -> set[int]:
        """Pids of the workers with jobs running, as the store says."""
        try:
            jobs = self.app.list_jobs(state="running", limit=100_000)
        except conveyor.BackendUnavailable:
            return set()
        return {pid for j in jobs if (pid := pid_of(j.worker_id)) is not None}

    def wait_busy(
        self,
        worker: WorkerProcess,
        at_least: int = 1,
        timeout: float = 30.0,
        job_ids: Iterable[int] | None = None,
    ) -> None:
        """Until the store shows `at_least` jobs running in `worker` (so a fault hits some),
        and the journal shows it running each of `job_ids`."""
        wanted = set(job_ids or ())

        def busy() -> bool:
            running = self.running_jobs([worker.pid])
            if running is None or len(running) < at_least:
                return False
            if not wanted:
                return True
            runs = self.journal().runs
            return all(any(r.pid == worker.pid for r in runs.get(j, [])) for j in wanted)

        if not poll_until(busy, timeout):
            self.give_up(
                f"worker {worker.pid} was not running {at_least} jobs {sorted(wanted)} within "
                f"{timeout:.0f}s (is there work left?)"
            )

    def fault(
        self,
        kind: str,
        victims: Iterable[WorkerProcess],
        started: float,
        *,
        ended: float | None = None,
        server_wide: bool = False,
        jobs: dict[int, int] | None = None,
        from_end: bool | None = None,
    ) -> Fault:
        """Record a fault (see checker.Fault); its victim jobs are those running in the
        victims now (or `jobs`), and the monitor watches them leave `running`."""
        pids = frozenset(w.pid for w in victims)
        found = self.running_jobs(pids) if jobs is None else jobs
        fault = Fault(kind, pids, started, ended, server_wide, dict(found or {}), from_end=from_end)
        self.faults.append(fault)
        assert self.monitor is not None
        self.monitor.watch(fault)
        return fault

    def kill9(self, worker: WorkerProcess) -> Fault:
        """SIGKILL `worker`; the fault's time is when it is dead for sure (a signal arrives a
        moment after it is sent, and the process may start a job meanwhile)."""
        worker.send(signal.SIGKILL)
        worker.proc.wait()
        return self.fault("kill -9", [worker], time.monotonic())

    def sigstop(self, worker: WorkerProcess, kind: str = "SIGSTOP") -> Fault:
        """SIGSTOP `worker`; the fault's time is when the kernel shows it stopped.

        On SQLite a process stopped inside a write transaction keeps the database's one write
        lock: every other process waits for it, and nothing (no rescue, no leadership) can
        change until it runs again. That is a store outage for all, recorded as one (every
        worker a victim, the bound counted from its end) and noted in the figures."""
        worker.send(signal.SIGSTOP)
        wait_stopped([worker.pid])
        at = time.monotonic()
        if self.backend == "sqlite" and self.write_lock_held():
            self.extra["stopped_holding_the_write_lock"] = True
            return self.fault(
                f"{kind} holding the SQLite write lock",
                self.alive(),
                at,
                server_wide=True,
                jobs=self.running_jobs(),
            )
        return self.fault(kind, [worker], at)

    def write_lock_held(self, for_s: float = 1.0) -> bool:
        """Whether some process keeps the SQLite write lock for `for_s` (a worker holds it
        for milliseconds at a time: only a stopped one holds it that long)."""
        conn = sqlite3.connect(self.project.db_path, timeout=0, isolation_level=None)
        try:
            deadline = time.monotonic() + for_s
            while time.monotonic() < deadline:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    time.sleep(0.02)
                    continue
                conn.execute("ROLLBACK")
                return False
            return True
        finally:
            conn.close()

    def bound(self, slack: float) -> float:
        """How long a victim job may stay running after its fault: its lease runs out, the
        leader's next round rescues it, plus the scenario's slack."""
        return self.lease * (1 + RESCUE_FRACTION) + slack

    # -- the end ----------------------------------------------------------------------------

    def logs(self) -> str:
        parts = [w.tail(25) for w in self.workers]
        parts += [e.tail() for e in self.enqueuers]
        if self.cluster is not None:
            parts.append(self.cluster.log_tail(10))
        if self.redis is not None:
            parts.append(self.redis.log_tail(10))
        return "\n".join(parts)

    def check(
        self,
        slack: float,
        *,
        stop: bool = True,
        stop_grace: float = 30.0,
        journal: Journal | None = None,
    ) -> Report:
        """Stop the workers (SIGTERM), then judge the journal (or `journal`: the part of it a
        scenario judges) against the store: record the figures, and fail with every problem
        found. On Redis the store's keyspace is checked too (`store_problems`: every job whole,
        every index agreeing)."""
        if stop:
            self.stop_workers(stop_grace)
        assert self.monitor is not None
        self.monitor.stop()
        journal = self.journal() if journal is None else journal
        jobs = self._read_jobs()
        report = check(
            journal,
            jobs,
            self.faults,
            self.bound(slack),
            not_due=self.not_due,
            wall_offset=time.time() - time.monotonic() if self.dated else None,
        )
        report.problems[:0] = self.problems
        if self.redis is not None:
            broken = self.keyspace_problems()
            self.extra["keyspace_problems"] = len(broken)
            if broken:
                report.problems.append(
                    "THE REDIS KEYSPACE IS INCONSISTENT:\n  " + "\n  ".join(broken)
                )
        bad_errors = sorted(
            {e.type for e in journal.errors} - {"conveyor.errors.BackendUnavailable"}
        )
        if bad_errors:
            report.problems.append(
                f"enqueue raised {bad_errors} (only BackendUnavailable is "
                f"expected): {[e for e in journal.errors if e.type in bad_errors][:3]}"
            )
        figures = {
            "scenario": self.name,
            "backend": self.backend,
            **report.figures,
            "enqueue_errors": len(journal.errors),
            "wall_s": round(time.monotonic() - self.began, 1),
            "ok": report.ok,
            **self.extra,
        }
        report.figures = figures
        self.record(figures)
        assert_report(report, self.logs)
        return report

    def conclude(self, **figures: Any) -> None:
        """For a scenario judged without the checker (no drain): record `figures` and fail
        with the problems found, if any."""
        row = {
            "scenario": self.name,
            "backend": self.backend,
            **figures,
            "wall_s": round(time.monotonic() - self.began, 1),
            "ok": not self.problems,
            **self.extra,
        }
        self.record(row)
        if self.problems:
            raise AssertionError("\n\n".join(self.problems))

    def give_up(self, message: str) -> NoReturn:
        """The scenario cannot go on: record its figures so far with `message`, and fail."""
        figures = {
            "scenario": self.name,
            "backend": self.backend,
            "jobs": len(self.journal().enqueued),
            "faults": len(self.faults),
            "wall_s": round(time.monotonic() - self.began, 1),
            "ok": False,
            "gave_up": message,
            **self.extra,
        }
        self.record(figures)
        raise AssertionError(message + "\n\n" + self.logs())

    def keyspace_problems(self) -> list[str]:
        """On Redis, what is wrong in the store's keys (see redis_server.store_problems)."""
        assert self.redis is not None and self.prefix is not None
        with self.redis.client() as client:
            return store_problems(client, self.prefix)

    def _read_jobs(self) -> dict[int, Any]:
        deadline = time.monotonic() + 30
        while True:
            try:
                return stored_jobs(self.app)
            except conveyor.BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        for enqueuer in self.enqueuers:
            if enqueuer.proc.poll() is None:
                enqueuer.proc.kill()
            enqueuer.proc.wait()
        for worker in self.workers:
            # A stopped worker cannot die of SIGKILL until it is continued.
            if worker.proc.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
        self.project.cleanup()
        if self._monitor_app is not None:
            self._monitor_app.close()
