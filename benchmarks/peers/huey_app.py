"""The huey `huey_consumer benchmarks.peers.huey_app.huey` runs in the peer comparison: a
RedisHuey on the database `CONVEYOR_BENCH_REDIS_URL` names, else a SqliteHuey on the file
`CONVEYOR_BENCH_HUEY_DB` names; the workload that starts it sets one of them."""

from __future__ import annotations

import os

from benchmarks.peers.harness import REDIS_ENV
from benchmarks.peers.huey_side import DB_ENV, make_huey, make_redis_huey

huey = (
    make_redis_huey(os.environ[REDIS_ENV])
    if REDIS_ENV in os.environ
    else make_huey(os.environ[DB_ENV])
).huey
