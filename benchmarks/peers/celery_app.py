"""The app `celery -A benchmarks.peers.celery_app worker` loads in the peer comparison: its
broker is the Redis database `CONVEYOR_BENCH_REDIS_URL` names, set by the workload that starts
the worker."""

from __future__ import annotations

from benchmarks.peers.celery_side import app_from_environment

app = app_from_environment()
