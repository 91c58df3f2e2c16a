"""The two faces of every backend, written once: `Store` runs each operation blocking (the sync
API, the CLI, the web server), `Backend` runs it on the event loop (workers and services).

Both carry the same list of operations, `Operations`' (a unit test holds them to it); each
method is the operation's call, run by the backend's engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.backends.base import (
    Beat,
    Engine,
    JobFilter,
    Subscription,
    SyncSubscription,
)
from conveyor.circuit import Action, CircuitEvent, CircuitInfo
from conveyor.clock import Clock
from conveyor.cron import TickRecord
from conveyor.events import Cursor, Event
from conveyor.job import (
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    NewJob,
    Outcome,
    Start,
    WorkerInfo,
)


class Store:
    """Every operation as a blocking call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ops = engine.ops

    def latest_version(self) -> int:
        return self.ops.latest_version

    def close(self) -> None:
        self.engine.close()

    def subscribe(self) -> SyncSubscription:
        return self.engine.subscribe_blocking()

    def migrate(self, down_to: int | None = None) -> list[int]:
        return self.engine.run(self.ops.migrate(down_to))

    def schema_version(self) -> int:
        return self.engine.run(self.ops.schema_version())

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        return self.engine.run(self.ops.enqueue(jobs, connection)) if jobs else []

    def get_job(self, job_id: int) -> Job | None:
        return self.engine.run(self.ops.get_job(job_id))

    def list_jobs(self, where: JobFilter, limit: int = 100) -> list[Job]:
        return self.engine.run(self.ops.list_jobs(where, limit))

    def job_history(self, job_id: int) -> list[HistoryEntry]:
        return self.engine.run(self.ops.job_history(job_id))

    def noted(self, ids: Sequence[int], prefix: str) -> set[int]:
        return self.engine.run(self.ops.noted(ids, prefix))

    def find_unique(self, key: str) -> Job | None:
        return self.engine.run(self.ops.find_unique(key))

    def queue_stats(
        self, states: Iterable[JobState] | None = None
    ) -> dict[str, dict[JobState, int]]:
        return self.engine.run(self.ops.queue_stats(states))

    def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        return self.engine.run(self.ops.dead_groups(queue))

    def finished_counts(self, since: float, bucket: int) -> list[FinishedCount]:
        return self.engine.run(self.ops.finished_counts(since, bucket))

    def queued_since(self) -> dict[str, float]:
        return self.engine.run(self.ops.queued_since())

    def list_workers(self) -> list[WorkerInfo]:
        return self.engine.run(self.ops.list_workers())

    def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        return self.engine.run(self.ops.cancel_job(job_id, now, note))

    def cancel_jobs(self, where: JobFilter, now: float, note: str) -> int:
        return self.engine.run(self.ops.cancel_jobs(where.bulk("cancel"), now, note))

    def retry_jobs(self, where: JobFilter, now: float, note: str) -> list[int]:
        return self.engine.run(self.ops.retry_jobs(where.bulk("retry"), now, note))

    def purge(self, where: JobFilter, older_than: float, now: float) -> int:
        return self.engine.run(self.ops.purge(where.bulk("purge"), older_than, now))

    def set_progress(
        self,
        job_id: int,
        worker_id: str,
        attempt: int,
        progress: float,
        stage: str | None,
        message: str | None,
        now: float,
    ) -> bool:
        call = self.ops.set_progress(job_id, worker_id, attempt, progress, stage, message, now)
        return self.engine.run(call)

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> bool:
        return self.engine.run(self.ops.set_queue_paused(queue, paused, now))

    def paused_queues(self) -> list[str]:
        return self.engine.run(self.ops.paused_queues())

    def revoke_session(self, nonce: str, until: float, now: float) -> None:
        self.engine.run(self.ops.revoke_session(nonce, until, now))

    def session_revoked(self, nonce: str) -> bool:
        return self.engine.run(self.ops.session_revoked(nonce))

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        self.engine.run(self.ops.set_queue_concurrency(queue, concurrency))

    def queue_limits(self) -> dict[str, int]:
        return self.engine.run(self.ops.queue_limits())

    def change_circuit(
        self,
        name: str,
        action: Action,
        now: float,
        *,
        threshold: int = 5,
        reason: str | None = None,
        half_open_jobs: int = 1,
    ) -> CircuitEvent | None:
        call = self.ops.change_circuit(name, action, now, threshold, reason, half_open_jobs)
        return self.engine.run(call)

    def record_probe(self, name: str, now: float) -> None:
        self.engine.run(self.ops.record_probe(name, now))

    def circuits(self) -> list[CircuitInfo]:
        return self.engine.run(self.ops.circuits())

    def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        return self.engine.run(self.ops.circuit_log(name, limit))

    def backlog(self, queue: str, now: float) -> tuple[int, float | None]:
        return self.engine.run(self.ops.backlog(queue, now))

    def claim_alert(self, key: str, every: float, now: float) -> bool:
        return self.engine.run(self.ops.claim_alert(key, every, now))

    def event_cursor(self, start: Cursor | None = None) -> Cursor:
        return self.engine.run(self.ops.event_cursor(start))

    def read_events(
        self,
        after: Cursor,
        job_id: int | None,
        queue: str | None,
        limit: int = 500,
        progress: bool = True,
    ) -> tuple[list[Event], Cursor]:
        return self.engine.run(self.ops.read_events(after, job_id, queue, limit, progress))

    def prune_progress(self, older_than: float, now: float) -> int:
        return self.engine.run(self.ops.prune_progress(older_than, now))

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int = 0,
    ) -> list[Job]:
        return self.engine.run(self.ops.claim(worker_id, queues, limit, lease_until, now, ahead))

    def complete(self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()) -> list[int]:
        if not (outcomes or starts):
            return []
        return self.engine.run(self.ops.complete(outcomes, starts))

    def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Beat:
        return self.engine.run(self.ops.heartbeat(worker, running, lease_until, look))

    def deregister_worker(self, worker_id: str) -> None:
        self.engine.run(self.ops.deregister_worker(worker_id))

    def find_expired(self, now: float, limit: int) -> list[Job]:
        return self.engine.run(self.ops.find_expired(now, limit))

    def prune_workers(self, older_than: float, now: float) -> int:
        return self.engine.run(self.ops.prune_workers(older_than, now))

    def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        return self.engine.run(self.ops.try_lead(name, holder, until, now))

    def resign(self, name: str, holder: str) -> None:
        self.engine.run(self.ops.resign(name, holder))

    def after_short_claim(self, queues: Sequence[str] | None, now: float) -> float | None:
        return self.engine.run(self.ops.after_short_claim(queues, now))

    def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        return self.engine.run(self.ops.held_back(queues, now))

    def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        return self.engine.run(self.ops.fire_periodic(name, tick, job, now, leader))

    def periodic_ticks(self) -> dict[str, TickRecord]:
        return self.engine.run(self.ops.periodic_ticks())

    def prune_ticks(self, older_than: float, now: float) -> int:
        return self.engine.run(self.ops.prune_ticks(older_than, now))


class Backend:
    """Every operation on the event loop; `sync` is the blocking face of the same backend."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ops = engine.ops
        self.url = engine.url
        self.sync = Store(engine)

    def use_clock(self, clock: Clock) -> None:
        self.engine.use_clock(clock)

    def latest_version(self) -> int:
        return self.ops.latest_version

    async def release(self) -> None:
        await self.engine.release()

    async def close(self) -> None:
        await self.engine.release()
        self.engine.close()

    async def wait_for_change(self, timeout: float) -> None:
        await self.engine.wait_for_change(timeout)

    async def subscribe(self) -> Subscription:
        return await self.engine.subscribe()

    async def migrate(self, down_to: int | None = None) -> list[int]:
        return await self.engine.arun(self.ops.migrate(down_to))

    async def schema_version(self) -> int:
        return await self.engine.arun(self.ops.schema_version())

    async def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Job]:
        return await self.engine.arun(self.ops.enqueue(jobs, connection)) if jobs else []

    async def get_job(self, job_id: int) -> Job | None:
        return await self.engine.arun(self.ops.get_job(job_id))

    async def list_jobs(self, where: JobFilter, limit: int = 100) -> list[Job]:
        return await self.engine.arun(self.ops.list_jobs(where, limit))

    async def job_history(self, job_id: int) -> list[HistoryEntry]:
        return await self.engine.arun(self.ops.job_history(job_id))

    async def noted(self, ids: Sequence[int], prefix: str) -> set[int]:
        return await self.engine.arun(self.ops.noted(ids, prefix))

    async def find_unique(self, key: str) -> Job | None:
        return await self.engine.arun(self.ops.find_unique(key))

    async def queue_stats(
        self, states: Iterable[JobState] | None = None
    ) -> dict[str, dict[JobState, int]]:
        return await self.engine.arun(self.ops.queue_stats(states))

    async def dead_groups(self, queue: str | None = None) -> list[DeadGroup]:
        return await self.engine.arun(self.ops.dead_groups(queue))

    async def finished_counts(self, since: float, bucket: int) -> list[FinishedCount]:
        return await self.engine.arun(self.ops.finished_counts(since, bucket))

    async def queued_since(self) -> dict[str, float]:
        return await self.engine.arun(self.ops.queued_since())

    async def list_workers(self) -> list[WorkerInfo]:
        return await self.engine.arun(self.ops.list_workers())

    async def cancel_job(self, job_id: int, now: float, note: str) -> Job | None:
        return await self.engine.arun(self.ops.cancel_job(job_id, now, note))

    async def cancel_jobs(self, where: JobFilter, now: float, note: str) -> int:
        return await self.engine.arun(self.ops.cancel_jobs(where.bulk("cancel"), now, note))

    async def retry_jobs(self, where: JobFilter, now: float, note: str) -> list[int]:
        return await self.engine.arun(self.ops.retry_jobs(where.bulk("retry"), now, note))

    async def purge(self, where: JobFilter, older_than: float, now: float) -> int:
        return await self.engine.arun(self.ops.purge(where.bulk("purge"), older_than, now))

    async def set_progress(
        self,
        job_id: int,
        worker_id: str,
        attempt: int,
        progress: float,
        stage: str | None,
        message: str | None,
        now: float,
    ) -> bool:
        call = self.ops.set_progress(job_id, worker_id, attempt, progress, stage, message, now)
        return await self.engine.arun(call)

    async def set_queue_paused(self, queue: str, paused: bool, now: float) -> bool:
        return await self.engine.arun(self.ops.set_queue_paused(queue, paused, now))

    async def paused_queues(self) -> list[str]:
        return await self.engine.arun(self.ops.paused_queues())

    async def revoke_session(self, nonce: str, until: float, now: float) -> None:
        await self.engine.arun(self.ops.revoke_session(nonce, until, now))

    async def session_revoked(self, nonce: str) -> bool:
        return await self.engine.arun(self.ops.session_revoked(nonce))

    async def set_queue_concurrency(self, queue: str, concurrency: int | None) -> None:
        await self.engine.arun(self.ops.set_queue_concurrency(queue, concurrency))

    async def queue_limits(self) -> dict[str, int]:
        return await self.engine.arun(self.ops.queue_limits())

    async def change_circuit(
        self,
        name: str,
        action: Action,
        now: float,
        *,
        threshold: int = 5,
        reason: str | None = None,
        half_open_jobs: int = 1,
    ) -> CircuitEvent | None:
        call = self.ops.change_circuit(name, action, now, threshold, reason, half_open_jobs)
        return await self.engine.arun(call)

    async def record_probe(self, name: str, now: float) -> None:
        await self.engine.arun(self.ops.record_probe(name, now))

    async def circuits(self) -> list[CircuitInfo]:
        return await self.engine.arun(self.ops.circuits())

    async def circuit_log(self, name: str | None = None, limit: int = 100) -> list[CircuitEvent]:
        return await self.engine.arun(self.ops.circuit_log(name, limit))

    async def backlog(self, queue: str, now: float) -> tuple[int, float | None]:
        return await self.engine.arun(self.ops.backlog(queue, now))

    async def claim_alert(self, key: str, every: float, now: float) -> bool:
        return await self.engine.arun(self.ops.claim_alert(key, every, now))

    async def event_cursor(self, start: Cursor | None = None) -> Cursor:
        return await self.engine.arun(self.ops.event_cursor(start))

    async def read_events(
        self,
        after: Cursor,
        job_id: int | None,
        queue: str | None,
        limit: int = 500,
        progress: bool = True,
    ) -> tuple[list[Event], Cursor]:
        call = self.ops.read_events(after, job_id, queue, limit, progress)
        return await self.engine.arun(call)

    async def prune_progress(self, older_than: float, now: float) -> int:
        return await self.engine.arun(self.ops.prune_progress(older_than, now))

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int = 0,
    ) -> list[Job]:
        call = self.ops.claim(worker_id, queues, limit, lease_until, now, ahead)
        return await self.engine.arun(call)

    async def complete(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> list[int]:
        if not (outcomes or starts):
            return []
        return await self.engine.arun(self.ops.complete(outcomes, starts))

    async def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Beat:
        return await self.engine.arun(self.ops.heartbeat(worker, running, lease_until, look))

    async def deregister_worker(self, worker_id: str) -> None:
        await self.engine.arun(self.ops.deregister_worker(worker_id))

    async def find_expired(self, now: float, limit: int) -> list[Job]:
        return await self.engine.arun(self.ops.find_expired(now, limit))

    async def prune_workers(self, older_than: float, now: float) -> int:
        return await self.engine.arun(self.ops.prune_workers(older_than, now))

    async def try_lead(self, name: str, holder: str, until: float, now: float) -> bool:
        return await self.engine.try_lead(name, holder, until, now)

    async def resign(self, name: str, holder: str) -> None:
        await self.engine.resign(name, holder)

    async def after_short_claim(self, queues: Sequence[str] | None, now: float) -> float | None:
        return await self.engine.arun(self.ops.after_short_claim(queues, now))

    async def held_back(self, queues: Sequence[str] | None, now: float) -> float | None:
        return await self.engine.arun(self.ops.held_back(queues, now))

    async def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None = None
    ) -> Job | None:
        return await self.engine.arun(self.ops.fire_periodic(name, tick, job, now, leader))

    async def periodic_ticks(self) -> dict[str, TickRecord]:
        return await self.engine.arun(self.ops.periodic_ticks())

    async def prune_ticks(self, older_than: float, now: float) -> int:
        return await self.engine.arun(self.ops.prune_ticks(older_than, now))
