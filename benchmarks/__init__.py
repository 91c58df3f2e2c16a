"""conveyor's benchmarks: enqueue, drain and enqueue-to-start latency on SQLite and PostgreSQL,
each measured in one run beside a raw loop doing the same claim/complete work with nothing
around it (`sqlite3`, or one `psycopg` connection): the practical limit on that store.

Run `python -m benchmarks` (SQLite, or `make bench`), `python -m benchmarks --backend postgres`
or `--backend sqlite,postgres`; `python -m benchmarks --help` lists the options.
"""
