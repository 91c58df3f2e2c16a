"""The app `conveyor worker benchmarks.peers.conveyor_app:app` loads in the peer comparison.

Its database comes from `CONVEYOR_DATABASE_URL` (and on PostgreSQL its schema from
`CONVEYOR_POSTGRES_SCHEMA`, on Redis its key prefix from `CONVEYOR_REDIS_PREFIX`), set by the
workload that starts the worker.
"""

from __future__ import annotations

from benchmarks.peers.conveyor_side import make_peers_app

app = make_peers_app()
