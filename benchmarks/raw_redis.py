"""The raw redis-py loop: a job queue on Redis with nothing around it.

One synchronous redis-py client on one list: a job is a JSON text (its task and arguments),
pushed with LPUSH and popped from the other end, decoded as a worker must before the call. No
job hash, no acknowledgement, retries, results, heartbeats or Python layer beyond redis-py:
this is the practical limit a queue on this Redis and this machine can approach. Every workload
empties its database (FLUSHDB) before and after.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import Rate, scratch_redis

TASK = "bench.noop"
QUEUE = "bench:raw:queue"
#: Jobs per round trip when a drain's list is filled before the clock starts.
FILL_BATCH = 10_000
#: How long a BRPOP waits for a job that should be there before the drain gives up.
POP_TIMEOUT_S = 5


def _job(i: int) -> str:
    return json.dumps({"task": TASK, "args": [i]})


@contextlib.contextmanager
def _client(url: str | None) -> Iterator[Any]:
    """A client on an empty database, emptied again afterwards."""
    import redis  # imported here: the SQL benchmarks run without redis-py installed

    with scratch_redis(url) as scratch, redis.Redis.from_url(scratch) as client:
        yield client


def _push(client: Any, first: int, last: int) -> None:
    """LPUSH jobs first..last-1, one command each, in one pipeline (one round trip)."""
    with client.pipeline(transaction=False) as pipe:
        for i in range(first, last):
            pipe.lpush(QUEUE, _job(i))
        pipe.execute()


def insert(jobs: int, per_round_trip: int = 1, url: str | None = None) -> Rate:
    """Push `jobs` jobs: one LPUSH per job and round trip, or `per_round_trip` LPUSH commands
    sent together in a pipeline (no MULTI)."""
    with _client(url) as client:
        started = time.perf_counter()
        if per_round_trip == 1:
            for i in range(jobs):
                client.lpush(QUEUE, _job(i))
        else:
            for first in range(0, jobs, per_round_trip):
                _push(client, first, min(first + per_round_trip, jobs))
        seconds = time.perf_counter() - started
        _expect(client, jobs)
    return Rate(jobs, seconds)


def drain(jobs: int, per_round_trip: int, url: str | None = None) -> Rate:
    """Pop and decode `jobs` pre-pushed jobs: BRPOP one at a time, or RPOP with a count of
    `per_round_trip` until the list is empty."""
    with _client(url) as client:
        for first in range(0, jobs, FILL_BATCH):
            _push(client, first, min(first + FILL_BATCH, jobs))
        _expect(client, jobs)
        done = 0
        started = time.perf_counter()
        if per_round_trip == 1:
            for _ in range(jobs):
                popped = client.brpop([QUEUE], timeout=POP_TIMEOUT_S)
                if popped is None:
                    raise RuntimeError(f"raw redis-py loop: {jobs - done} jobs never came")
                json.loads(popped[1])  # what a worker decodes before the call
                done += 1
        else:
            while batch := client.rpop(QUEUE, per_round_trip):
                for payload in batch:
                    json.loads(payload)
                done += len(batch)
        seconds = time.perf_counter() - started
        _expect(client, 0)
    if done != jobs:
        raise RuntimeError(f"raw redis-py loop: popped {done} of {jobs} jobs")
    return Rate(done, seconds)


def _expect(client: Any, queued: int) -> None:
    found = client.llen(QUEUE)
    if found != queued:
        raise RuntimeError(f"raw redis-py loop: expected {queued} queued jobs, found {found}")
