"""The settings `arq benchmarks.peers.arq_app.WorkerSettings` loads in the peer comparison: the
functions, and the Redis database `CONVEYOR_BENCH_REDIS_URL` names (set by the workload that
starts the worker); everything else at arq's defaults."""

from __future__ import annotations

import os

from benchmarks.peers.arq_side import FUNCTIONS, redis_settings
from benchmarks.peers.harness import REDIS_ENV


class WorkerSettings:
    functions = FUNCTIONS
    redis_settings = redis_settings(os.environ[REDIS_ENV])
