"""conveyor beside the queues a user would pick instead, measured side by side in one run:
PgQueuer on PostgreSQL, huey (SqliteHuey) on SQLite, and on Redis Dramatiq, huey (RedisHuey),
SAQ, RQ, arq and Celery; each through its own public API and its own worker command, at its
defaults, on the same workloads (enqueue one by one, bulk enqueue, drain, enqueue-to-start
latency), with a raw loop on the same store beside them (on SQLite and PostgreSQL the one of
`python -m benchmarks`, on Redis `benchmarks.raw_redis`).

The peers live in a virtualenv of their own, pinned in `requirements.txt` here:
`make bench-peers` builds it and runs `python -m benchmarks.peers`; see docs/benchmarks.md.
"""
