"""Bytes a job takes in Redis, queued and finished: `python -m benchmarks.redis_memory`.

Enqueues jobs with two small arguments under a fresh key prefix, sums `MEMORY USAGE` over every
key of the prefix (so other users of the server do not count), drains them with one worker and
sums again; the prefix's keys are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

import redis

import conveyor
from benchmarks.common import drop_prefix

DEFAULT_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def usage(client: Any, prefix: str) -> int:
    """Bytes the keys under `prefix` take (`client`: redis-py's stubs mix sync and async)."""
    pattern = f"{{{prefix}}}:*"
    return sum(client.memory_usage(k, samples=0) or 0 for k in client.scan_iter(pattern, 1000))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_memory")
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    prefix = f"bench_memory_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    app = conveyor.App(args.redis_url, redis_prefix=prefix)

    @app.task(name="resize")
    def resize(image_id: int, width: int) -> None:
        return None

    try:
        for start in range(0, args.jobs, 1_000):
            resize.enqueue_many([(i, 640) for i in range(start, min(start + 1_000, args.jobs))])
        queued = usage(client, prefix)
        app.run_worker(burst=True)
        finished = usage(client, prefix)
        print(f"queued:   {queued / args.jobs:,.0f} bytes a job")
        print(f"finished: {finished / args.jobs:,.0f} bytes a job (with its history and events)")
    finally:
        app.close()
        drop_prefix(args.redis_url, prefix)
        client.close()


if __name__ == "__main__":
    main()
