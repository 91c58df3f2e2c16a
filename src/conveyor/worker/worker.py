"""The fetch loop, the slots, the heartbeat and the shutdown of one worker process.

A worker keeps going whatever the store does: an error that means the store cannot serve now
(`BackendUnavailable`) makes it back off and try again — logged once when the outage starts
and once when it ends — and it never exits for it, not even when the store is down as it
starts. It keeps its leases honestly: it claims nothing while its last heartbeat that reached
the store is older than half a lease, and it stops (as a cancel would) every job whose lease
it could not renew in time or that the store says was taken from it, so a worker cut off from
the store does not run on as a zombie while the job runs again elsewhere."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor import views
from conveyor.context import Context
from conveyor.errors import BackendUnavailable, ConfigurationError, ValidationError, describe
from conveyor.job import Job, JobState, WorkerInfo
from conveyor.limits import check_count
from conveyor.logging import Outage, get_logger
from conveyor.services import circuits
from conveyor.services.base import Service
from conveyor.services.elector import Elector
from conveyor.services.maintainer import Maintainer
from conveyor.services.pruner import Pruner
from conveyor.services.rescuer import Rescuer
from conveyor.services.scheduler import Scheduler
from conveyor.services.watch import Watch
from conveyor.task import check_queue
from conveyor.worker.completer import Completer
from conveyor.worker.executor import CANCELLED, LEASE_LOST, SHUTDOWN, Executor, Finished
from conveyor.worker.threads import TaskThreads

if TYPE_CHECKING:
    from conveyor.app import App
    from conveyor.backends.faces import Backend

log = get_logger("conveyor.worker")

#: The longest an idle worker waits before looking again, whatever the wake-up says.
IDLE_RECHECK_S = 1.0
#: How long a cancelled task gets to end before its job is handed back without it.
ABANDON_AFTER_S = 2.0
#: How often the leader looks whether an open circuit is due a probe.
PROBE_ROUND_S = 1.0
#: How often the leader checks the alert rules on queues and workers.
WATCH_ROUND_S = 15.0
CLAIM_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: A worker's name (`--name`): its id is the name and a random suffix, `render-1:3fa2b9c1`.
WORKER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,100}")
#: After the grace period (and a cancelled task's ABANDON_AFTER_S), how long the outcomes still
#: unwritten get to reach the store before the worker exits without them (their leases run
#: out and the leader rescues the jobs: nothing is lost).
WRITE_AFTER_GRACE_S = 5.0
#: How long each last call to the store on the way out (resign, deregister, close) may take.
GOODBYE_S = 2.0
#: The weight of the newest figure in the moving averages of job and claim times.
SMOOTHING = 0.2
#: By default a worker claims ahead at most this many jobs per slot (see `Worker.prefetch`).
PREFETCH_PER_SLOT = 20
#: A worker starts no job claimed ahead, and claims nothing, while more outcomes than this many
#: per slot wait to be written, or the oldest has waited longer than UNWRITTEN_FOR_S: it never
#: runs far ahead of what the store knows of its work.
UNWRITTEN_PER_SLOT = 20
UNWRITTEN_FOR_S = 0.1
#: After a claim failed, how many heartbeats look for jobs it may have claimed all the same (a
#: claim cut off by a timeout while the server went on): a late one shows at the next beats.
LOOKS_AFTER_A_FAILED_CLAIM = 3
#: The note of a job handed back because its circuit opened before it began.
CIRCUIT_OPENED = "its circuit opened before it began: handed back"


def check_worker_name(name: str) -> str:
    if not isinstance(name, str) or not WORKER_NAME.fullmatch(name):
        raise ValidationError(
            f"bad worker name {describe(name)}: use 1-100 characters of A-Z a-z 0-9 _ . @ -"
        )
    return name


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _interval(lease: float, fraction: float) -> float:
    return min(max(lease * fraction, 0.05), 10.0)


@dataclass(slots=True)
class Prefetched:
    """A job claimed ahead of a free slot: leased to this worker, not started."""

    job: Job
    lease_ends: float


@dataclass(slots=True)
class Active:
    job: Job
    ctx: Context
    task: asyncio.Task[None]
    is_async: bool


class Heartbeat(Service):
    """Keeps the worker registered and its jobs' leases alive; picks up cancel requests. A beat
    that failed is tried again soon, not a whole interval later: the leases are running out."""

    name = "heartbeat"
    wait_first = True  # the worker beats once itself before it starts claiming

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(interval)
        self.worker = worker
        self._failing = False

    async def run_once(self) -> None:
        self._failing = True
        await self.worker.beat()
        self._failing = False

    def next_interval(self) -> float:
        return self.interval / 5 if self._failing else self.interval


class LeaseKeeper(Service):
    """Stops the jobs whose lease ran out on this worker's clock before a heartbeat could renew
    it (a hung or unreachable store), without waiting for the store to answer."""

    name = "leases"

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(interval)
        self.worker = worker

    async def run_once(self) -> None:
        self.worker.drop_lapsed_leases()


class Worker:
    """One worker process's loop. `Worker(app).run()` blocks until stopped."""

    def __init__(
        self,
        app: App,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        burst: bool = False,
        grace: float = 30.0,
        prefetch: int | None = None,
        max_jobs: int | None = None,
        name: str | None = None,
    ) -> None:
        check_count(concurrency, "concurrency")
        if name is not None:
            check_worker_name(name)
        if max_jobs is not None:
            check_count(max_jobs, "max_jobs")
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0
        ):
            raise ValidationError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if grace < 0:
            raise ValidationError(f"grace must be >= 0 seconds, got {grace!r}")
        self.app = app
        self.queues = None if queues is None else [check_queue(q) for q in queues]
        self.concurrency = concurrency
        #: at most this many jobs claimed ahead of a free slot (see `_buffer_target`)
        self.prefetch = PREFETCH_PER_SLOT * concurrency if prefetch is None else prefetch
        self.burst = burst
        self.grace = grace
        #: stop once this many jobs have begun here and ended (None: never)
        self.max_jobs = max_jobs
        #: jobs begun here (started on a slot), for `max_jobs`
        self.begun = 0
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: the name it was given, unique among live workers (None: known by its id only)
        self.name = name
        suffix = uuid.uuid4().hex[:8]
        self.id = f"{self.host}:{self.pid}:{suffix}" if name is None else f"{name}:{suffix}"
        self.started_at = app.clock.now()
        # keyed by (job id, attempt): a job re-claimed while an old attempt still runs is
        # a second entry, never confused with the first
        self._active: dict[tuple[int, int], Active] = {}
        #: jobs claimed ahead, in claim order, keyed like `_active`
        self._ready: dict[tuple[int, int], Prefetched] = {}
        #: how long a job runs and a claim takes, on average (seconds, moving averages)
        self._job_s = 0.0
        self._claim_s = 0.0
        self._stopping: asyncio.Event | None = None
        self._hand_back_now: asyncio.Event | None = None
        self.processed = 0
        #: when the last heartbeat that reached the store was sent (monotonic)
        self._beat_sent_at = -math.inf
        #: claims begun and ended (one at a time), and what the last heartbeat saw of them and
        #: of the jobs the store runs under this worker's name unknown to it (see `beat`)
        self._claims_begun = 0
        self._claims_ended = 0
        self._last_beat_claims = 0
        self._last_unknown: set[tuple[int, int]] = set()
        #: when this worker's reports last opened each circuit (monotonic)
        self._opened: dict[str, float] = {}
        #: claims that failed, how many of them the heartbeats have seen, and how many more
        #: heartbeats look for jobs run under this worker's name that it does not know
        self._claims_failed = 0
        self._failures_seen = 0
        self._looks_left = 0

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or, in burst mode, until nothing is runnable)."""
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(
                self.run_async(handle_signals=threading.current_thread() is threading.main_thread())
            )
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Idle threads of the loop's executor exit now; one inside a call to a store that
            # does not answer is not waited for.
            shutdown = loop.shutdown_default_executor()
            loop.run_until_complete(asyncio.wait([loop.create_task(shutdown)], timeout=GOODBYE_S))
        finally:
            # Not asyncio.run(): it would wait for a task that ignores its cancellation forever.
            # Such a task's job has been handed back already; the task is left behind.
            loop.close()

    async def run_async(self, handle_signals: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self._hand_back_now = asyncio.Event()
        self._give_up = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._written = asyncio.Event()
        self._beat_heard = asyncio.Event()
        self.backend: Backend = self.app.backend
        lease = self.app.settings.lease_seconds
        self._threads = TaskThreads(self.concurrency)
        self.completer = Completer(self.backend, self._on_written, self.app.clock.now)
        self._executor = Executor(self.app, self.id, self._threads, self.completer.began)
        self.heartbeat = Heartbeat(self, _interval(lease, 0.25))
        self.lease_keeper = LeaseKeeper(self, _interval(lease, 0.1))
        # The leader-only services run while this worker leads, and only then; their writes
        # carry its id, so that the store applies them only while it still names it leader.
        maintenance_round = _interval(lease, 0.33)
        self.rescuer = Rescuer(self.app, self.backend, maintenance_round, leader_id=self.id)
        self.pruner = Pruner(self.app, self.backend, maintenance_round)
        self.scheduler = Scheduler(self.app, self.backend, maintenance_round, leader_id=self.id)
        self.prober = circuits.CircuitProber(self.app, self.backend, PROBE_ROUND_S)
        self.watch = Watch(self.app, WATCH_ROUND_S)
        self.maintainer = Maintainer(
            [self.rescuer, self.pruner, self.scheduler, self.prober, self.watch]
        )
        self.elector = Elector(
            self.app,
            self.backend,
            self.id,
            maintenance_round,
            on_change=self.maintainer.leadership_changed,
        )
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        services: list[asyncio.Task[None]] = []
        try:
            if not await self._start_up():
                return  # stopped before the store could be reached
            log.info(
                "worker.started",
                worker_id=self.id,
                queues=self.queues or "*",
                concurrency=self.concurrency,
                burst=self.burst,
                backend=self.backend.url,
            )
            services = [
                loop.create_task(self.completer.run()),
                loop.create_task(self.heartbeat.run()),
                loop.create_task(self.lease_keeper.run()),
                loop.create_task(self.elector.run()),
                loop.create_task(self.maintainer.run()),
            ]
            await self._fetch_loop()
        finally:
            await self._shutdown(services)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _start_up(self) -> bool:
        """Register with the store (and declare the app's queue limits): until the store
        answers, wait and try again, as the fetch loop does. False if stopped meanwhile."""
        assert self._stopping is not None
        outage = Outage(log, "worker.store", worker_id=self.id)
        failures = 0
        while not self._stopping.is_set():
            try:
                if self.name is not None:
                    await self._check_name_is_free()
                await self.beat()
                for queue, limit in self.app.declared_queues.items():
                    await self.backend.set_queue_concurrency(queue, limit)
            except BackendUnavailable as exc:
                delay = CLAIM_RETRY_DELAYS[min(failures, len(CLAIM_RETRY_DELAYS) - 1)]
                failures += 1
                outage.failed(exc, retry_in_s=delay)
                await self._wait_any(asyncio.sleep(delay))
                continue
            outage.recovered()
            return True
        return False

    async def _check_name_is_free(self) -> None:
        """Refuse to start under the name of a live worker: one whose heartbeat is within a
        lease, unless it is a process of this host that no longer exists (killed, say, and
        restarted before its registration aged)."""
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        for other in await self.backend.list_workers():
            if other.id.rpartition(":")[0] != self.name or other.is_lost(now, lease):
                continue
            if other.host == self.host and not _process_exists(other.pid):
                continue
            raise ConfigurationError(
                f"a worker named {self.name!r} is running already ({other.id}, on {other.host}, "
                f"pid {other.pid}): worker names are unique among live workers"
            )

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming and shut down gracefully; called a second time, hand back at once."""
        assert self._stopping is not None and self._hand_back_now is not None
        if self._hand_back_now.is_set():
            log.warning("worker.give_up_writes", worker_id=self.id)
            self._give_up.set()
            return
        if self._stopping.is_set():
            log.warning("worker.hand_back_now", worker_id=self.id, running=len(self._active))
            self._hand_back_now.set()
            return
        log.info(
            "worker.stopping", worker_id=self.id, running=len(self._active), grace_s=self.grace
        )
        self._stopping.set()
        # Jobs claimed ahead go back to the queue at once, for other workers to take.
        self._hand_back_ready("claimed ahead, never begun: handed back on shutdown")
        self._slot_free.set()  # wakes a fetch loop waiting for a slot

    def stop_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self.stop)

    # -- the fetch loop ---------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        assert self._stopping is not None
        failures = 0
        outage = Outage(log, "worker.claim", worker_id=self.id)
        while not self._stopping.is_set():
            self._slot_free.clear()
            self._start_ready()
            target = self._buffer_target()
            room = self.concurrency - len(self._active) + target - len(self._ready)
            if self.max_jobs is not None:
                left = self.max_jobs - self.begun - len(self._ready)
                if left <= 0 and not self._active and not self._ready:
                    log.info("worker.max_jobs_reached", worker_id=self.id, jobs=self.begun)
                    return
                room = min(room, left)
            if room <= 0 or len(self._ready) > target // 2 or self._writes_behind():
                await self._slot_free.wait()  # stop() sets it too
                continue
            if not self._lease_is_fresh():
                await self._wait_for_heartbeat()
                continue
            try:
                done = await self._fetch(room)
            except Exception as exc:
                # The store is out of reach (or a claim failed some other way): running jobs
                # go on; claiming resumes later. The worker never exits for it.
                delay = CLAIM_RETRY_DELAYS[min(failures, len(CLAIM_RETRY_DELAYS) - 1)]
                failures += 1
                outage.failed(exc, retry_in_s=delay)
                await self._wait_any(asyncio.sleep(delay))
                continue
            failures = 0
            outage.recovered()
            if done:
                return

    def _buffer_target(self) -> int:
        """How many jobs to hold claimed ahead of the free slots: enough to keep every slot
        busy while the next claim is on its way (twice what the slots finish in one claim's
        time), within `prefetch`. None for jobs that run long beside a claim: a job held
        here waits, while another worker could run it."""
        if self._job_s <= 0.0:
            return 0
        wanted = 2.0 * self.concurrency * self._claim_s / self._job_s
        return min(self.prefetch, int(wanted))

    def _start_ready(self) -> None:
        """Start jobs claimed ahead, in claim order, while slots are free (a job the claim
        stamped begun at once; one claimed ahead only while the writes keep up)."""
        ready = self._ready
        while ready and len(self._active) < self.concurrency and not self.stopping:
            key = next(iter(ready))
            held = ready[key]
            if held.job.started_at is None and self._writes_behind():
                return  # `_on_written` starts it
            del ready[key]
            self._start(held.job, held.lease_ends)

    def _writes_behind(self) -> bool:
        """Whether the outcomes waiting to be written are too many, or too old. Short jobs
        claimed ahead run far faster than a store under load may take their outcomes: the
        finished work a crash would lose (those jobs run again) stays bounded."""
        completer = self.completer
        return (
            completer.unwritten > UNWRITTEN_PER_SLOT * self.concurrency
            or completer.unwritten_for(time.monotonic()) > UNWRITTEN_FOR_S
        )

    def _give_back(self, job: Job, note: str = "handed back on shutdown") -> None:
        """Back to the queue, the attempt not counted, with the next write of outcomes."""
        self.completer.add(Finished(job, self._executor.hand_back(job, note=note), 0.0))

    def _hand_back_ready(self, note: str, circuit: str | None = None) -> None:
        """Give the jobs claimed ahead (those behind `circuit`, if given) back to the queue,
        the attempt not counted."""
        for key, held in list(self._ready.items()):
            if circuit is None or held.job.circuit == circuit:
                del self._ready[key]
                self._give_back(held.job, note)

    def _lease_is_fresh(self) -> bool:
        """Whether the last heartbeat that reached the store is recent enough to claim on:
        within half a lease. Older, and this worker may be cut off (its leases running out
        unseen): jobs it claimed now would only be rescued and run again elsewhere."""
        age = time.monotonic() - self._beat_sent_at
        return age <= self.app.settings.lease_seconds / 2

    async def _wait_for_heartbeat(self) -> None:
        age = time.monotonic() - self._beat_sent_at
        log.warning(
            "worker.claims_paused",
            worker_id=self.id,
            last_heartbeat_s=round(age, 3),
            reason="no heartbeat reached the store for half a lease",
        )
        self._beat_heard.clear()
        await self._wait_any(self._beat_heard.wait())
        if not self.stopping:
            log.info("worker.claims_resumed", worker_id=self.id)

    async def _fetch(self, room: int) -> bool:
        """Claim up to `room` jobs and start those the free slots take (the rest wait, claimed
        ahead), or wait for work; True when a burst is over."""
        assert self._stopping is not None
        self._written.clear()
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        asked = time.monotonic()
        self._claims_begun += 1
        try:
            free = max(0, min(room, self.concurrency - len(self._active) - len(self._ready)))
            jobs = await self.backend.claim(
                self.id, self.queues, free, now + lease, now, ahead=room - free
            )
        except BaseException:
            self._claims_failed += 1  # the server may have carried it out all the same
            raise
        finally:
            self._claims_ended += 1
        took = time.monotonic() - asked
        self._claim_s += SMOOTHING * (took - self._claim_s) if self._claim_s else took
        if self._stopping.is_set():
            # Stopped while the claim was in flight: these never start.
            for job in jobs:
                self._give_back(job)
            return True
        for job in jobs:
            self._ready[job.id, job.attempt] = Prefetched(job, asked + lease)
        for name, at in self._opened.items():
            if at >= asked:  # claimed before the store saw the circuit this worker opened
                self._hand_back_ready(CIRCUIT_OPENED, circuit=name)
        self._start_ready()
        if len(jobs) == room:
            return False
        if jobs:
            await asyncio.sleep(0)  # the jobs just started begin before the questions below
        now = self.app.clock.now()
        due_in = await self.backend.after_short_claim(self.queues, now)
        last_look = (
            self.burst and not self._active and not self._ready and not self.completer.pending
        )
        if last_look and self._written.is_set():
            return False  # outcomes landed after the claim: they may have released jobs
        # Queued jobs no claim took: held back by a limit (runnable once a slot frees or a
        # rate window opens) or being taken by another worker. Asked when the worker found
        # nothing (a partial claim means the next wake-up is near anyway).
        held_in = await self.backend.held_back(self.queues, now) if last_look or not jobs else None
        if last_look and held_in is None:
            return due_in is None or due_in > 0
        wait = min(
            IDLE_RECHECK_S,
            math.inf if due_in is None else max(due_in, 0.0),
            math.inf if held_in is None else held_in,
        )
        await self._wait_any(
            self.backend.wait_for_change(wait), self._slot_free.wait(), self._written.wait()
        )
        return False

    async def _wait_any(self, *waits: Awaitable[Any]) -> None:
        """Wait for the first of `waits`, or for a stop request."""
        assert self._stopping is not None
        tasks = [asyncio.ensure_future(w) for w in (*waits, self._stopping.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            # ended before the worker goes on: none is left pending when its loop closes
            await asyncio.wait(tasks)

    def _start(self, job: Job, lease_ends: float) -> None:
        """Run a claimed job; its lease lasts until `lease_ends` (monotonic: the store stamped
        it no earlier than the claim was sent)."""
        job.app = self.app
        self.begun += 1
        ctx = Context(job, self.id, self.backend, self._loop, self.app.clock.now)
        ctx.lease_ends = lease_ends
        task_def = self.app.tasks.get(job.task)
        runner = self._loop.create_task(self._execute(job, ctx))
        runner.add_done_callback(lambda _: self._never_ran(job, ctx))
        self._active[job.id, job.attempt] = Active(
            job, ctx, runner, task_def is not None and task_def.is_async
        )

    def _never_ran(self, job: Job, ctx: Context) -> None:
        """A runner cancelled before its first step (its lease lapsed, or a stop came, the
        moment it was claimed) never enters `_execute`, whose `finally` gives every job its
        outcome and its slot back: do that here, or the job would stay `running` under this
        worker, its lease renewed by every heartbeat, until the worker stops."""
        if self._active.pop((job.id, job.attempt), None) is None:
            return  # `_execute` ran and dealt with it
        self._slot_free.set()
        outcome = (
            self._executor.hand_back(job, note="never started: handed back")
            if ctx.cancel_reason is None
            else self._executor.not_started(job, ctx)
        )
        self.completer.add(Finished(job, outcome, 0.0))
        self._start_ready()

    async def _execute(self, job: Job, ctx: Context) -> None:
        key = (job.id, job.attempt)
        try:
            finished = await self._executor.execute(job, ctx)
            run = finished.duration
            self._job_s += SMOOTHING * (run - self._job_s) if self._job_s else run
            if key not in self._active:
                return  # the shutdown has already handed the job back
            task = self.app.tasks.get(job.task)
            try:
                if task is not None and task.circuit is not None:
                    # Before the outcome is written and the slot frees: the next claim sees a
                    # circuit this opened, and a job seen retrying has been counted.
                    report = circuits.report(self.app, self.backend, task.circuit, finished.outcome)
                    if await asyncio.shield(report):
                        self._opened[task.circuit.name] = time.monotonic()
                        self._hand_back_ready(CIRCUIT_OPENED, circuit=task.circuit.name)
            finally:
                self.completer.add(finished)
        finally:
            self._active.pop(key, None)
            self._start_ready()
            self._slot_free.set()

    def cancel_running(self, job_id: int) -> None:
        for key in [k for k in self._ready if k[0] == job_id]:
            held = self._ready.pop(key)
            log.info("job.cancel_requested", job_id=job_id, task=held.job.task)
            outcome = self._executor.cancelled_before_start(held.job)
            self.completer.add(Finished(held.job, outcome, 0.0))
        for active in [a for (id_, _), a in self._active.items() if id_ == job_id]:
            log.info("job.cancel_requested", job_id=job_id, task=active.job.task)
            self._stop_job(active, CANCELLED)

    def _stop_job(self, active: Active, reason: str) -> None:
        """Ask a running job to stop: its task sees `ctx.cancelled`; an async one is cancelled
        (a sync one runs until it looks, or returns)."""
        active.ctx.request_cancel(reason)
        if active.is_async:
            active.task.cancel()

    def _lose_lease(self, active: Active, why: str) -> None:
        if active.ctx.cancel_reason in (CANCELLED, LEASE_LOST):
            return
        self._log_lease_lost(active.job, why)
        self._stop_job(active, LEASE_LOST)

    def _log_lease_lost(self, job: Job, why: str) -> None:
        log.warning(
            "job.lease_lost",
            job_id=job.id,
            task=job.task,
            attempt=job.attempt,
            worker_id=self.id,
            reason=why,
        )

    def drop_lapsed_leases(self) -> None:
        """Stop every job whose lease has run out on this worker's clock (no heartbeat renewed
        it in time): the leader may be rescuing it already. One claimed ahead is handed back
        (it never began; the hand-back applies only if the store has not taken it)."""
        now = time.monotonic()
        for key, held in list(self._ready.items()):
            if now >= held.lease_ends:
                del self._ready[key]
                self._give_back(held.job, "lease lost before it began: handed back")
        for active in list(self._active.values()):
            if active.ctx.lease_lapsed():
                self._lose_lease(active, "no heartbeat renewed the lease in time")

    # -- heartbeat and outcomes -------------------------------------------------------------

    async def beat(self) -> None:
        now = self.app.clock.now()
        lease = self.app.settings.lease_seconds
        asked = time.monotonic()
        # Every claim begun before the last heartbeat has ended by now: its jobs are ours.
        settled = self._claims_ended >= self._last_beat_claims
        claims_begun = self._claims_begun
        mine = list(self._active)
        ahead = list(self._ready)
        running = sorted({*mine, *ahead, *self.completer_pending()})
        info = WorkerInfo(
            id=self.id,
            host=self.host,
            pid=self.pid,
            queues=self.queues,
            concurrency=self.concurrency,
            started_at=self.started_at,
            last_beat=now,
            running=sorted({job_id for job_id, _ in running}),
        )
        if self._claims_failed != self._failures_seen:
            self._failures_seen = self._claims_failed
            self._looks_left = LOOKS_AFTER_A_FAILED_CLAIM
        look = self._looks_left > 0
        beat = await self.backend.heartbeat(info, running, now + lease, look=look)
        if look:  # and on while it finds any
            self._looks_left = max(self._looks_left - 1, 2 if beat.unknown else 0)
        self._beat_sent_at = asked
        self._beat_heard.set()
        for key in mine:
            active = self._active.get(key)
            if active is None:
                continue  # finished meanwhile
            if key in beat.extended:
                active.ctx.lease_ends = max(active.ctx.lease_ends, asked + lease)
            else:
                self._lose_lease(active, "the store gave the job to another worker")
        for key in ahead:
            held = self._ready.get(key)
            if held is None:
                continue  # started or handed back meanwhile
            if key in beat.extended:
                held.lease_ends = max(held.lease_ends, asked + lease)
            else:
                del self._ready[key]
                why = "the store gave the job to another worker before it began"
                self._log_lease_lost(held.job, why)
        for job_id in beat.cancel:
            self.cancel_running(job_id)
        # Running under this worker's name, unknown to it at this heartbeat and at the one
        # before, with every claim begun before that one ended since: they came from a claim
        # whose answer never reached this worker (cut off by a timeout while the server went
        # on). Give them back now, the attempt not counted, rather than let them wait out their
        # lease. (Unknown at one heartbeat only, they may be a claim's answer still on its way.)
        orphans = beat.unknown & self._last_unknown if settled else set()
        self._last_unknown, self._last_beat_claims = beat.unknown, claims_begun
        if orphans:
            await self._hand_back_unknown(orphans)

    async def _hand_back_unknown(self, unknown: set[tuple[int, int]]) -> None:
        log.warning(
            "worker.unknown_claims",
            worker_id=self.id,
            jobs=sorted(i for i, _ in unknown),
            reason="claimed for this worker by a claim whose answer never arrived",
        )
        for job_id, attempt in sorted(unknown):
            job = await self.backend.get_job(job_id)
            if job is None or (job.state, job.worker_id, job.attempt) != (
                JobState.RUNNING,
                self.id,
                attempt,
            ):
                continue
            self._give_back(job, "claimed too late: handed back")

    def completer_pending(self) -> list[tuple[int, int]]:
        completer = getattr(self, "completer", None)
        return [] if completer is None else completer.pending

    def _on_written(self, batch: list[Finished], applied: list[int], given_up: set[int]) -> None:
        """After a write of `batch`: the outcomes `applied` are the jobs' now; the store
        refused those `given_up` (the completer said so); the rest found their attempt no
        longer running here."""
        self.processed += len(batch)
        self._written.set()  # a retry may be due now, or a burst may be over
        self._start_ready()  # jobs claimed ahead may have waited for the writes
        self._slot_free.set()
        written = set(applied)
        for finished in batch:
            if finished.job.id in written:
                _log_outcome(finished)
                if finished.outcome.state is JobState.DEAD:
                    task = self.app.tasks.get(finished.job.task)
                    if task is not None and task.alert_on_dead:
                        self.app.alerts.job_dead(finished.job, finished.outcome.error)
            elif finished.job.id not in given_up:
                log.warning(
                    "job.outcome_discarded",
                    job_id=finished.job.id,
                    task=finished.job.task,
                    attempt=finished.job.attempt,
                    outcome=finished.outcome.state.value,
                    reason="the attempt was no longer running here (rescued or cancelled)",
                )

    # -- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, services: list[asyncio.Task[None]]) -> None:
        """Let running jobs finish within the grace period, hand back the rest, write the
        outcomes, say goodbye to the store. Bounded whatever the store does: the grace period,
        ABANDON_AFTER_S, WRITE_AFTER_GRACE_S and a few GOODBYE_S calls at most."""
        assert self._hand_back_now is not None
        if self._active and not self._hand_back_now.is_set():
            running = [a.task for a in self._active.values()]
            hand_back = asyncio.ensure_future(self._hand_back_now.wait())
            await _wait_all_or(running, hand_back, self.grace)
        leftover = list(self._active.values())
        for active in leftover:
            active.ctx.request_cancel(SHUTDOWN)
            active.task.cancel()
        if leftover:
            await asyncio.wait([a.task for a in leftover], timeout=ABANDON_AFTER_S)
        for active in list(self._active.values()):
            # A task that swallowed its cancellation: hand its job back without it.
            log.warning("job.ignored_cancellation", job_id=active.job.id, task=active.job.task)
            self._active.pop((active.job.id, active.job.attempt))
            self._give_back(active.job)
        self.completer.close()
        if services:
            interrupt = asyncio.ensure_future(self._give_up.wait())
            await _wait_all_or([services[0]], interrupt, timeout=WRITE_AFTER_GRACE_S)
            if not services[0].done():
                # The store does not take them (or a third signal said not to wait): the
                # unwritten jobs' leases run out and the leader rescues them. Nothing is lost.
                log.error("outcomes.unwritten", worker_id=self.id, count=self.completer.unwritten)
        for service in (self.heartbeat, self.lease_keeper, self.elector, self.maintainer):
            service.stop()
        if services:
            # A service in the middle of a call to a hung store is not waited for.
            await asyncio.wait(services, timeout=GOODBYE_S)
            for task in services:
                task.cancel()
        await self._goodbye("resign", self.elector.resign())
        await self._goodbye("deregister", self.backend.deregister_worker(self.id))
        await self._goodbye("release", self.backend.release())
        self._threads.shutdown()
        log.info(
            "worker.stopped", worker_id=self.id, processed=self.processed, handed_back=len(leftover)
        )

    async def _goodbye(self, what: str, call: Awaitable[None]) -> None:
        """One last call to the store, given GOODBYE_S at most; its failure is only logged."""
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait([task], timeout=GOODBYE_S)
        if not done:
            task.cancel()
            log.warning(f"worker.{what}_failed", worker_id=self.id, error="no answer in time")
            return
        error = task.exception()
        if error is not None:
            level = log.warning if isinstance(error, BackendUnavailable) else log.error
            level(f"worker.{what}_failed", worker_id=self.id, error=str(error))


async def _wait_all_or(
    tasks: list[asyncio.Task[None]], interrupt: asyncio.Future[Any], timeout: float | None
) -> None:
    """Wait until all `tasks` are done, `interrupt` fires, or `timeout` passes."""
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    try:
        await asyncio.wait([everything, interrupt], timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        everything.cancel()
        interrupt.cancel()


def _log_outcome(finished: Finished) -> None:
    job, outcome = finished.job, finished.outcome
    fields: dict[str, Any] = {
        "job_id": job.id,
        "task": job.task,
        "queue": job.queue,
        "attempt": job.attempt,
        "duration_ms": round(finished.duration * 1000, 3),
    }
    if outcome.state is JobState.SUCCEEDED:
        log.info("job.succeeded", **fields)
    elif outcome.state in (JobState.RETRYING, JobState.DEAD):
        if outcome.state is JobState.RETRYING:
            assert outcome.run_at is not None
            fields["delay_s"] = round(outcome.run_at - outcome.at, 3)
        error = outcome.error
        fields["error_type"] = error and error["type"]
        # what the App's redaction hid of the arguments stays out of the log line too
        fields["error"] = error and views.shown_text(job, error["message"])
        if outcome.state is JobState.RETRYING:
            log.warning("job.retry_scheduled", **fields)
        else:
            log.error("job.dead", **fields, reason=views.shown_text(job, outcome.note))
    elif outcome.state is JobState.CANCELLED:
        log.info("job.cancelled", **fields)
    else:
        log.info("job.handed_back", **fields)
