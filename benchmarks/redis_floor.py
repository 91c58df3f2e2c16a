"""The least an atomic enqueue costs on Redis, beside what conveyor spends:
`python -m benchmarks.redis_floor`.

One by one, a round trip each:
- a raw `LPUSH` of a 200-byte text;
- an `EVALSHA` of a script that returns at once: the least any enqueue made of one script pays;
- the least atomic store (below) of one job;
- conveyor's enqueue script, its arguments built once beforehand: the round trip and the
  server's part;
- `task.enqueue`: all of it.

In bulk, 10,000 jobs a call:
- a pipeline of raw `LPUSH`es;
- one script that stores each job as conveyor must at the least, all or none: its hash (the
  fields of a queued job), its member in its lane and in the two listing indexes (one `ZADD`
  per sorted set for the whole call) and its event (`XADD`); with no Python before it;
- conveyor's enqueue script, its arguments built beforehand;
- `build_job` and the script's arguments, in Python alone;
- `task.enqueue_many`: all of it.

Rounds alternate the workloads; the medians are printed, in µs a job and jobs/s. Everything
is written under a fresh key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

import conveyor
from benchmarks.common import drop_prefix
from conveyor.backends.redis.scripts import lua
from conveyor.task import CallOptions

DEFAULT_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

#: A queued job's hash, as conveyor stores it; its lane and its two indexes; its event.
LEAST_STORE = """
local P, n = KEYS[1], tonumber(ARGV[1])
local first = redis.call('INCRBY', P .. ':next_id', n) - n
local t = redis.call('TIME')
local now = string.format('%.6f', t[1] + t[2] / 1000000)
local lane, index = {}, {}
for i = 1, n do
    local id = tostring(first + i)
    local member = string.format('%017d%016d', math.floor(now * 1000000), first + i)
    redis.call('HSET', P .. ':job:' .. id, 'id', id, 'queue', 'default', 'task', 'noop',
        'args', '[' .. id .. ']', 'kwargs', '{}', 'meta', '{}', 'priority', '5',
        'max_attempts', '3', 'attempt', '0', 'run_at', now, 'created_at', now,
        'state', 'queued', 'changed', now, 'entered', 'queued', 'lm', member)
    redis.call('XADD', P .. ':events', '*', 'j', id, 'at', now, 'f', '', 't', 'queued',
        'w', '', 'n', '', 'q', 'default', 'k', 'noop')
    lane[#lane + 1] = 5
    lane[#lane + 1] = member
    index[#index + 1] = id
    index[#index + 1] = id
end
for s = 1, #lane, 2000 do
    redis.call('ZADD', P .. ':lane', unpack(lane, s, math.min(s + 1999, #lane)))
    redis.call('ZADD', P .. ':ix:queued', unpack(index, s, math.min(s + 1999, #index)))
    redis.call('ZADD', P .. ':ixq:default', unpack(index, s, math.min(s + 1999, #index)))
end
return n
"""


def _per_job(fn: Callable[[], Any], jobs: int) -> float:
    """µs a job that `fn` took for `jobs` jobs."""
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) / jobs * 1e6


def _each(fn: Callable[[], Any], jobs: int) -> float:
    def loop() -> None:
        for _ in range(jobs):
            fn()

    return _per_job(loop, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_floor")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one", type=int, default=2_000, help="jobs one by one, a round")
    parser.add_argument("--bulk", type=int, default=10_000, help="jobs in one call")
    args = parser.parse_args()
    prefix = f"bench_floor_{uuid.uuid4().hex[:8]}"
    key = "{" + prefix + "}"
    client: Any = redis.Redis.from_url(args.redis_url)  # (redis-py's stubs mix sync and async)
    app = conveyor.App(args.redis_url, redis_prefix=prefix)

    @app.task(name="noop")
    def noop(i: int) -> None:
        return None

    engine: Any = app.backend.sync.engine
    script = lua("enqueue")

    def enqueue_args(jobs: list[Any]) -> tuple[Any, ...]:
        step = next(engine.ops._enqueue_plan(jobs))
        return tuple(engine._args(step))

    def build(count: int) -> list[Any]:
        return [noop.build_job(CallOptions(), (i,), {}) for i in range(count)]

    empty = client.script_load("return 1")
    least = client.script_load(LEAST_STORE)
    client.script_load(script.source)
    one_args = enqueue_args(build(1))
    bulk_args = enqueue_args(build(args.bulk))
    text = "x" * 200
    n, bulk = args.one, args.bulk

    def pushes() -> None:
        with client.pipeline(transaction=False) as pipe:
            for _ in range(bulk):
                pipe.lpush(f"{key}:raw", text)
            pipe.execute()

    workloads: dict[str, Callable[[], float]] = {
        "one by one: raw LPUSH": lambda: _each(lambda: client.lpush(f"{key}:raw", text), n),
        "one by one: empty script": lambda: _each(lambda: client.evalsha(empty, 1, key), n),
        "one by one: least atomic store": lambda: _each(
            lambda: client.evalsha(least, 1, key, 1), n
        ),
        "one by one: conveyor's script": lambda: _each(
            lambda: client.evalsha(script.sha, 1, *one_args), n
        ),
        "one by one: task.enqueue": lambda: _each(lambda: noop.enqueue(1), n),
        "bulk: raw LPUSH pipeline": lambda: _per_job(pushes, bulk),
        "bulk: least atomic store": lambda: _per_job(
            lambda: client.evalsha(least, 1, key, bulk), bulk
        ),
        "bulk: conveyor's script": lambda: _per_job(
            lambda: client.evalsha(script.sha, 1, *bulk_args), bulk
        ),
        "bulk: build_job + arguments": lambda: _per_job(lambda: enqueue_args(build(bulk)), bulk),
        "bulk: task.enqueue_many": lambda: _per_job(
            lambda: noop.enqueue_many([(i,) for i in range(bulk)]), bulk
        ),
    }
    taken: dict[str, list[float]] = {name: [] for name in workloads}
    try:
        for _ in range(args.rounds):
            for name, run in workloads.items():
                taken[name].append(run())
    finally:
        app.close()
        drop_prefix(args.redis_url, prefix)
        client.close()
    raw_one = statistics.median(taken["one by one: raw LPUSH"])
    raw_bulk = statistics.median(taken["bulk: raw LPUSH pipeline"])
    print(f"{'workload':32} {'µs a job':>9} {'jobs/s':>9} {'of raw':>7}")
    for name, runs in taken.items():
        us = statistics.median(runs)
        raw = raw_one if name.startswith("one") else raw_bulk
        print(f"{name:32} {us:9.1f} {1e6 / us:9,.0f} {raw / us:7.0%}")


if __name__ == "__main__":
    main()
