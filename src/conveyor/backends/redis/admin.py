"""The Redis backend's reads for people (lists, history, statistics) and its bulk changes.

Lists, statistics and bulk changes walk the indexes (`P:ix:<state>`, `P:ixq:<queue>`,
`P:finished`), never the keyspace, in bounded chunks: each script call looks at READ_CHUNK
(a read) or WRITE_CHUNK (a change) jobs at most and says where the next call goes on, so no
call holds Redis for long. A bulk change is atomic chunk by chunk (a job is never half
changed), not as a whole; its count and ids add up over every chunk. The scripts are
`lua/admin_*.lua`, their helpers `lua/lib_admin.lua`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.backends.base import JobFilter
from conveyor.backends.plan import Call
from conveyor.backends.redis.core import RedisCore
from conveyor.backends.redis.rows import ids_arg, job_of, text_arg
from conveyor.backends.redis.scripts import Cmd, RedisPlan, Script
from conveyor.job import (
    CANCELLABLE_STATES,
    FINISHED_STATES,
    JOB_COLUMNS,
    RETRYABLE_STATES,
    UNFINISHED_STATES,
    DeadGroup,
    FinishedCount,
    HistoryEntry,
    Job,
    JobState,
    WorkerInfo,
)

#: Jobs a script call looks at, at most, when it only reads them.
READ_CHUNK = 1000
#: Jobs a script call looks at, at most, when it may change each of them.
WRITE_CHUNK = 500


class AdminOperations(RedisCore):
    """Listing, statistics, cancelling, retrying and purging."""

    # -- listing ----------------------------------------------------------------------------

    def list_jobs(self, where: JobFilter, limit: int) -> Call[list[Job]]:
        return Call(self._list_jobs_plan(where, limit))

    def _list_jobs_plan(self, where: JobFilter, limit: int) -> RedisPlan[list[Job]]:
        if _matches_nothing(where):
            return []
        jobs: list[Job] = []
        below = where.before_id
        while len(jobs) < limit:
            ids = _ids_below(where.ids, below)
            if ids is not None and not ids:
                break
            args = (
                _filter_arg(where, where.states),
                ids_arg(ids or ()),
                text_arg(below),
                text_arg(where.after_id),
                limit - len(jobs),
                READ_CHUNK,
            )
            rows, cursor = yield Script("admin_list_jobs", args)
            jobs += [job_of(r) for r in rows]
            if cursor is None:
                break
            below = int(cursor)
        return jobs

    def job_history(self, job_id: int) -> Call[list[HistoryEntry]]:
        return Call(self._history_plan(job_id))

    def _history_plan(self, job_id: int) -> RedisPlan[list[HistoryEntry]]:
        (created_at, entered), entries = yield [
            Cmd(("HMGET", self.key("job", job_id), "created_at", "entered")),
            Cmd(("LRANGE", self.key("hist", job_id), 0, -1)),
        ]
        rows = [json.loads(entry) for entry in entries]
        if entered is not None:  # the state it was stored in, kept with the job (lib.lua)
            rows.insert(0, (created_at, None, entered, None, None))
        return [
            HistoryEntry(
                job_id=job_id,
                at=float(at),
                from_state=None if from_state is None else JobState(from_state),
                to_state=JobState(to_state),
                worker_id=worker,
                note=note,
            )
            for at, from_state, to_state, worker, note in rows
        ]

    def noted(self, ids: Sequence[int], prefix: str) -> Call[set[int]]:
        return Call(self._noted_plan(ids, prefix))

    def _noted_plan(self, ids: Sequence[int], prefix: str) -> RedisPlan[set[int]]:
        found: set[int] = set()
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            found.update((yield Script("admin_noted", (ids_arg(chunk), prefix))))
        return found

    def find_unique(self, key: str) -> Call[Job | None]:
        return Call(self._find_unique_plan(key))

    def _find_unique_plan(self, key: str) -> RedisPlan[Job | None]:
        holder = yield Cmd(("GET", self.key("uniq", key)))
        if holder is None:
            return None
        row = yield Cmd(("HMGET", self.key("job", holder), *JOB_COLUMNS))
        if row[0] is None:
            return None
        job = job_of(row)
        return job if job.state in UNFINISHED_STATES else None

    # -- statistics -------------------------------------------------------------------------

    def queue_stats(
        self, states: Iterable[JobState] | None
    ) -> Call[dict[str, dict[JobState, int]]]:
        wanted = None if states is None else set(states)
        return Call(self._queue_stats_plan(wanted))

    def _queue_stats_plan(
        self, wanted: set[JobState] | None
    ) -> RedisPlan[dict[str, dict[JobState, int]]]:
        counts = yield Cmd(("HGETALL", self.key("counts")))
        stats: dict[str, dict[JobState, int]] = {}
        for field, value in counts.items():
            # `<state>:<queue>`: a state has no colon, a queue may
            name, _, queue = field.partition(":")
            state, n = JobState(name), int(value)
            if n > 0 and (wanted is None or state in wanted):
                stats.setdefault(queue, {})[state] = n
        return stats

    def dead_groups(self, queue: str | None) -> Call[list[DeadGroup]]:
        return Call(self._dead_groups_plan(queue))

    def _dead_groups_plan(self, queue: str | None) -> RedisPlan[list[DeadGroup]]:
        where = _filter_arg(JobFilter(queue=queue), frozenset({JobState.DEAD}))
        # (task, error type) -> [count, newest id, newest finished_at]
        groups: dict[tuple[str, str | None], list[Any]] = {}
        below: int | None = None
        while True:
            found, cursor = yield Script("admin_dead_groups", (where, text_arg(below), READ_CHUNK))
            for task, kind, n, newest_id, newest_at in found:
                group = groups.setdefault((task, kind), [0, 0, float("-inf")])
                group[0] += int(n)
                group[1] = max(group[1], int(newest_id))
                group[2] = max(group[2], float(newest_at))
            if cursor is None:
                break
            below = int(cursor)
        listed = [DeadGroup(task, kind, n, i, at) for (task, kind), (n, i, at) in groups.items()]
        # biggest first, then by task and type (no type first, as SQLite orders NULL)
        listed.sort(key=lambda g: (-g.count, g.task, g.error_type is not None, g.error_type or ""))
        return listed

    def finished_counts(self, since: float, bucket: int) -> Call[list[FinishedCount]]:
        return Call(self._finished_counts_plan(since, bucket))

    def _finished_counts_plan(self, since: float, bucket: int) -> RedisPlan[list[FinishedCount]]:
        counts: dict[tuple[str, str, str], int] = {}
        skip = ""
        while True:
            args = (repr(float(since)), bucket, skip, READ_CHUNK)
            rows, cursor = yield Script("admin_finished_counts", args)
            for queue, state, start, n in rows:
                counts[queue, state, start] = counts.get((queue, state, start), 0) + int(n)
            if cursor is None:
                break
            skip = cursor
        found = [
            FinishedCount(queue, JobState(state), float(start), n)
            for (queue, state, start), n in counts.items()
        ]
        found.sort(key=lambda c: (c.bucket, c.queue, c.state.value))
        return found

    def queued_since(self) -> Call[dict[str, float]]:
        return Call(self._queued_since_plan())

    def _queued_since_plan(self) -> RedisPlan[dict[str, float]]:
        flat = yield Script("admin_queued_since")
        return {flat[i]: float(flat[i + 1]) for i in range(0, len(flat), 2)}

    def backlog(self, queue: str, now: float) -> Call[tuple[int, float | None]]:
        return Call(self._backlog_plan(queue, now))

    def _backlog_plan(self, queue: str, now: float) -> RedisPlan[tuple[int, float | None]]:
        depth, age = yield Script("admin_backlog", (queue,), now=now)
        return int(depth), None if age is None else max(float(age), 0.0)

    # -- workers ----------------------------------------------------------------------------

    def list_workers(self) -> Call[list[WorkerInfo]]:
        return Call(self._list_workers_plan())

    def _list_workers_plan(self) -> RedisPlan[list[WorkerInfo]]:
        now, records, beats = yield Script("admin_workers")
        beat_of = {beats[i]: float(beats[i + 1]) for i in range(0, len(beats), 2)}
        workers = []
        for i in range(0, len(records), 2):
            worker_id, record = records[i], json.loads(records[i + 1])
            beat = beat_of.get(worker_id)
            workers.append(
                WorkerInfo(
                    id=worker_id,
                    host=record["host"],
                    pid=int(record["pid"]),
                    queues=record["queues"],
                    concurrency=int(record["concurrency"]),
                    started_at=float(record["started_at"]),
                    last_beat=float(record["last_beat"]),
                    running=list(record["running"]),
                    beat_age=None if beat is None else float(now) - beat,
                )
            )
        workers.sort(key=lambda w: (w.started_at, w.id))
        return workers

    def prune_workers(self, older_than: float, now: float) -> Call[int]:
        return Call(self._prune_workers_plan(older_than, now))

    def _prune_workers_plan(self, older_than: float, now: float) -> RedisPlan[int]:
        return int((yield Script("admin_prune_workers", (repr(float(older_than)),), now=now)))

    # -- steering ---------------------------------------------------------------------------

    def cancel_job(self, job_id: int, now: float, note: str) -> Call[Job | None]:
        return Call(self._cancel_job_plan(job_id, now, note))

    def _cancel_job_plan(self, job_id: int, now: float, note: str) -> RedisPlan[Job | None]:
        row = yield Script("admin_cancel_job", (job_id, note), now=now)
        return None if row is None else job_of(row)

    def cancel_jobs(self, where: JobFilter, now: float, note: str) -> Call[int]:
        return Call(self._bulk_plan("admin_cancel_jobs", where, CANCELLABLE_STATES, now, note))

    def retry_jobs(self, where: JobFilter, now: float, note: str) -> Call[list[int]]:
        return Call(self._bulk_plan("admin_retry_jobs", where, RETRYABLE_STATES, now, note))

    def _bulk_plan(
        self, script: str, where: JobFilter, allowed: frozenset[JobState], now: float, note: str
    ) -> RedisPlan[Any]:
        """Change the matching jobs (of the states in `allowed` only) a chunk at a time, newest
        first (which the unique-key rule of a retry relies on); the count, or the ids, over
        every chunk."""
        counted = script == "admin_cancel_jobs"
        changed: list[int] = []
        count = 0
        states = _states_within(where, allowed)
        below: int | None = None
        while states:
            ids = _ids_below(where.ids, below)
            if ids is not None and not ids:
                break
            args = (
                _filter_arg(where, states),
                ids_arg(ids or ()),
                text_arg(below),
                WRITE_CHUNK,
                note,
            )
            done, cursor = yield Script(script, args, now=now)
            if counted:
                count += int(done)
            else:
                changed += [int(i) for i in done]
            if cursor is None:
                break
            below = int(cursor)
        return count if counted else changed

    def purge(self, where: JobFilter, older_than: float, now: float) -> Call[int]:
        return Call(self._purge_plan(where, older_than, now))

    def _purge_plan(self, where: JobFilter, older_than: float, now: float) -> RedisPlan[int]:
        states = _states_within(where, FINISHED_STATES)
        count = 0
        # with ids, the cursor is the id to go on below; else how many old ones the calls
        # before kept (the next call skips them)
        cursor: str | None = ""
        while states and cursor is not None:
            ids = _ids_below(where.ids, int(cursor) if cursor else None)
            if ids is not None and not ids:
                break
            age = repr(float(older_than))
            args = (_filter_arg(where, states), ids_arg(ids or ()), cursor, WRITE_CHUNK, age)
            purged, cursor = yield Script("admin_purge", args, now=now)
            count += int(purged)
        return count


def _matches_nothing(where: JobFilter) -> bool:
    """Whether the filter names no state or no id it could match (then no script runs: the
    scripts read an empty list as "any")."""
    return (where.ids is not None and not where.ids) or (
        where.states is not None and not where.states
    )


def _states_within(where: JobFilter, allowed: frozenset[JobState]) -> frozenset[JobState]:
    """The filter's states that a change may move a job from (none: nothing to do). Any other
    would write a transition `job.TRANSITIONS` does not allow, or delete a job still to run."""
    return allowed if where.states is None else where.states & allowed


def _filter_arg(where: JobFilter, states: frozenset[JobState] | None) -> str:
    """The filter as the admin scripts take it (see `admin_filter` in `lua/lib_admin.lua`),
    with `states` for its states; the ids and the id bounds go apart."""
    fields: dict[str, Any] = {
        "states": None if states is None else sorted(s.value for s in states),
        "queue": where.queue,
        "task": where.task,
        "error_type": where.error_type,
        "contains": None if where.contains is None else where.contains.lower(),
    }
    return json.dumps({name: value for name, value in fields.items() if value is not None})


def _ids_below(ids: Sequence[int] | None, below: int | None) -> list[int] | None:
    """The filter's ids still to look at (below `below`), newest first; None for any id."""
    if ids is None:
        return None
    return sorted({i for i in ids if below is None or i < below}, reverse=True)
