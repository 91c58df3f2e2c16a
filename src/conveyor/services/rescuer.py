"""Rescue jobs whose worker was lost: when a lease runs out, the attempt counts as failed with
"worker lost", and the job is retried or dead-lettered like any other failure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.faces import Backend
from conveyor.job import JobState, Outcome, error_record
from conveyor.logging import get_logger
from conveyor.retry import RetryPolicy, decide
from conveyor.services.base import Service

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.services")

BATCH = 500
#: A rescue applies only if the job's lease is still the one found expired (never renewed
#: since): earlier than what was seen plus this (less than any renewal adds).
SEEN_LEASE_SLACK_S = 0.001
#: How the history names a job handed back because its worker was lost before it began.
LOST_BEFORE_BEGIN = "worker lost before it began"


class Rescuer(Service):
    """On the leader: every round, rescue the jobs of the workers lost since the last."""

    name = "rescuer"

    def __init__(
        self, app: App, backend: Backend, interval: float, leader_id: str | None = None
    ) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend
        #: the leader's id: a rescue applies only while the store still names it leader
        self.leader_id = leader_id

    async def run_once(self) -> None:
        await rescue_expired_leases(self.app, self.backend, leader=self.leader_id)


class WorkerLost(Exception):
    """The worker running the job stopped heartbeating before the job finished."""


async def rescue_expired_leases(app: App, backend: Backend, leader: str | None = None) -> int:
    """Fail every running job whose worker is lost; returns how many were rescued. With
    `leader`, each write applies only while that leader still leads."""
    now = app.clock.now()
    rescued = 0
    while expired := await backend.find_expired(now, BATCH):
        outcomes = []
        unbegun = [job.id for job in expired if job.started_at is None]
        # Handed back uncounted once already: a task that kills its worker before its start
        # is written would otherwise come back uncounted for ever. The second time, it counts.
        lost_before = await backend.noted(unbegun, LOST_BEFORE_BEGIN) if unbegun else set()
        for job in expired:
            # the lease found expired, not a time: clocks may disagree, a lease cannot
            seen = (job.lease_until or now) + SEEN_LEASE_SLACK_S
            if job.started_at is None and job.id not in lost_before:
                # Claimed ahead, never begun: back to the queue, the attempt not counted.
                note = f"{LOST_BEFORE_BEGIN}: {job.worker_id}"
                outcomes.append(
                    Outcome(
                        job.id,
                        job.worker_id or "",
                        job.attempt,
                        JobState.QUEUED,
                        now,
                        note=note,
                        lease_expired_before=seen,
                        leader=leader,
                    )
                )
                continue
            task = app.tasks.get(job.task)
            error = WorkerLost("worker lost")
            # A lost worker is never the task's own error: retried whatever retry_on says.
            policy = RetryPolicy(backoff=task.retry.backoff if task else app.default_backoff)
            decision = decide(policy, error, job.attempt, job.max_attempts)
            outcomes.append(
                Outcome(
                    job_id=job.id,
                    worker_id=job.worker_id or "",
                    attempt=job.attempt,
                    state=decision.state,
                    at=now,
                    error=error_record(
                        "WorkerLost", "worker lost", None, now, job.worker_id, job.attempt
                    ),
                    run_at=now + decision.delay,
                    note=f"worker lost: {job.worker_id}",
                    lease_expired_before=seen,
                    leader=leader,
                )
            )
        applied = set(await backend.complete(outcomes))
        for job, outcome in zip(expired, outcomes, strict=True):
            if job.id in applied:
                log.warning(
                    "lease.rescued",
                    job_id=job.id,
                    task=job.task,
                    queue=job.queue,
                    worker_id=job.worker_id,
                    attempt=job.attempt,
                    state=outcome.state.value,
                )
        rescued += len(applied)
        if len(expired) < BATCH or not applied:
            break
    return rescued
