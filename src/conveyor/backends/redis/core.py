"""What every part of the Redis backend's operations shares: the keys, the clock, and the
arguments and replies of `enqueue_jobs` (lib.lua), which enqueue and a cron tick both run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from conveyor.backends.base import Operations, dependency_depths
from conveyor.backends.redis.rows import job_of, text_arg
from conveyor.backends.redis.scripts import Cmd, RedisPlan, Script
from conveyor.errors import ValidationError
from conveyor.job import Job, NewJob


class RedisCore(Operations):
    """The keys of one store, and the steps that store jobs."""

    #: `{name}`: every key of the store begins with it (one hash slot)
    prefix: str
    #: whether "now" is the server's clock (else the App's: a test's)
    server_time: bool

    def key(self, *parts: Any) -> str:
        return ":".join((self.prefix, *(str(p) for p in parts)))

    def _enqueue_args(self, jobs: Sequence[NewJob]) -> RedisPlan[list[Any]]:
        """The arguments `enqueue_jobs` (lib.lua) takes for these jobs: how many, 19 fields a
        job, then each job's dependency depth (checked here: too deep is refused)."""
        depths = [0] * len(jobs)
        if any(j.waits for j in jobs):
            named = sorted({d for j in jobs for d in j.depends_on})
            found = yield [Cmd(("HMGET", self.key("job", d), "id", "depth")) for d in named]
            known = {d: int(depth or 0) for d, (i, depth) in zip(named, found, strict=True) if i}
            depths = dependency_depths(jobs, known)
        args: list[Any] = [len(jobs)]
        for job in jobs:
            deps = [str(d) for d in job.depends_on] + [f"#{p}" for p in job.depends_on_batch]
            args += (
                job.queue,
                job.task,
                job.args,
                job.kwargs,
                job.meta,
                job.priority,
                job.max_attempts,
                repr(job.run_at),
                repr(job.created_at),
                text_arg(job.unique_key),
                text_arg(job.finished_since),
                text_arg(job.on_dependency_failure),
                text_arg(job.concurrency_key),
                text_arg(job.concurrency_max),
                text_arg(job.rate_key),
                text_arg(job.rate_max),
                text_arg(job.rate_period),
                text_arg(job.circuit),
                ",".join(deps),
            )
        return args + depths

    def _refusing_missing(self, step: Script) -> RedisPlan[Any]:
        """Run a script that stores jobs; a dependency that does not exist (any more: it may
        have been purged since the depths were read) is a ValidationError."""
        try:
            return (yield step)
        except ResponseError as exc:
            text = str(exc)
            if "conveyor:missing:" not in text:
                raise
            missing = text.split("conveyor:missing:", 1)[1].split()[0]
            raise ValidationError(
                f"depends_on names no such job: {missing.replace(',', ', ')}"
            ) from None

    def _stored(self, jobs: Sequence[NewJob], reply: Any) -> list[Job]:
        """The jobs as `enqueue_jobs` stored them (or found them holding their unique keys)."""
        at, out = reply
        server_now = float(at) if self.server_time else None
        stored_jobs: list[Job] = []
        for job, item in zip(jobs, out, strict=True):
            if isinstance(item, int):  # stored as given
                made = job.stored_as(item)
                if server_now is not None:  # stored as of the server's clock
                    made.run_at = server_now + (job.run_at - job.created_at)
                    made.created_at = server_now
            else:
                made = job_of(item[2])
                made.deduplicated = bool(item[1])
            stored_jobs.append(made)
        return stored_jobs
