"""The app a benchmark worker subprocess loads: `conveyor worker benchmarks.worker_app:app`.

Its database comes from `CONVEYOR_DATABASE_URL` (and on PostgreSQL its schema from
`CONVEYOR_POSTGRES_SCHEMA`, on Redis its key prefix from `CONVEYOR_REDIS_PREFIX`), set by the
workload that starts the worker.
"""

from __future__ import annotations

from benchmarks.tasks import make_app

app = make_app()
