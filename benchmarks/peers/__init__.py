"""conveyor beside the queues a user would pick instead, measured side by side in one run:
PgQueuer on PostgreSQL and huey (SqliteHuey) on SQLite, each through its own public API and its
own worker command, at its defaults, on the same workloads (enqueue one by one, bulk enqueue,
drain, enqueue-to-start latency), with the raw loop of `python -m benchmarks` beside them.

The peers live in a virtualenv of their own, pinned in `requirements.txt` here:
`make bench-peers` builds it and runs `python -m benchmarks.peers`; see docs/benchmarks.md.
"""
