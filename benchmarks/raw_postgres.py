"""The raw psycopg loop: conveyor's claim/complete work on PostgreSQL with nothing around it.

One synchronous psycopg 3 connection in autocommit mode (every statement is its own
transaction), a table of the same shape as conveyor's jobs table with the same partial index on
runnable jobs, in a schema of its own that is dropped afterwards. The claim is one statement, a
`FOR UPDATE SKIP LOCKED` CTE feeding `UPDATE ... RETURNING`; the completion of the batch is a
second one. No history, NOTIFY, heartbeats or Python layer: this is the practical limit a
queue on this PostgreSQL and this machine can approach.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.common import Rate, drop_schema, postgres_url, schema_name
from conveyor.backends.sql import Queries

TASK = "bench.noop"
WORKER_ID = "raw-loop"
#: Rows per statement when a drain's queue is filled before the clock starts.
FILL_BATCH = 10_000

_QUERIES = Queries.load("benchmarks", "raw_postgres.sql")


class Statements:
    """The loop's statements with `{schema}` filled in: `q.claim`."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    def __getattr__(self, name: str) -> str:
        statement: str = getattr(_QUERIES, name)
        return statement.replace("{schema}", self.schema)


@contextlib.contextmanager
def _table(url: str | None, workload: str) -> Iterator[tuple[Any, Statements]]:
    """A connection and the statements of a fresh schema holding an empty jobs table."""
    import psycopg  # imported here: the SQLite benchmarks run without psycopg installed

    url = url or postgres_url()
    schema = schema_name(f"raw_{workload}")
    q = Statements(schema)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(q.create_schema)
            conn.execute(q.create_table)
            conn.execute(q.create_runnable_index)
            yield conn, q
    finally:
        drop_schema(url, schema)


def _fill(conn: Any, q: Statements, jobs: int) -> None:
    for first in range(0, jobs, FILL_BATCH):
        args = [json.dumps([i]) for i in range(first, min(first + FILL_BATCH, jobs))]
        conn.execute(q.insert_many, {"task": TASK, "args": args})


def insert(jobs: int, per_transaction: int = 1, url: str | None = None) -> Rate:
    """Insert `jobs` queued jobs, `per_transaction` at a time: one `INSERT ... RETURNING id`
    per job, or one `INSERT ... SELECT FROM unnest(%s::text[])` per batch."""
    with _table(url, f"insert_{per_transaction}") as (conn, q):
        started = time.perf_counter()
        if per_transaction == 1:
            for i in range(jobs):
                conn.execute(q.insert_one, {"task": TASK, "args": json.dumps([i])}).fetchone()
        else:
            for first in range(0, jobs, per_transaction):
                last = min(first + per_transaction, jobs)
                args = [json.dumps([i]) for i in range(first, last)]
                conn.execute(q.insert_many, {"task": TASK, "args": args})
        seconds = time.perf_counter() - started
        _expect(conn, q, {"queued": jobs})
    return Rate(jobs, seconds)


def drain(jobs: int, per_transaction: int, url: str | None = None) -> Rate:
    """Claim and complete `jobs` pre-inserted jobs, `per_transaction` per claim: one claim
    statement, then one completion statement for the batch, until nothing is runnable."""
    with _table(url, f"drain_{per_transaction}") as (conn, q):
        _fill(conn, q, jobs)
        claim = {"worker_id": WORKER_ID, "limit": per_transaction}
        started = time.perf_counter()
        done = 0
        while True:
            # args and kwargs are json columns: psycopg decodes them, as a worker must
            rows = conn.execute(q.claim, claim).fetchall()
            if not rows:
                break
            conn.execute(q.complete, {"ids": [r[0] for r in rows], "worker_id": WORKER_ID})
            done += len(rows)
        seconds = time.perf_counter() - started
        _expect(conn, q, {"succeeded": jobs})
    return Rate(done, seconds)


def _expect(conn: Any, q: Statements, counts: dict[str, int]) -> None:
    found = dict(conn.execute(q.count_by_state).fetchall())
    if found != counts:
        raise RuntimeError(f"raw psycopg loop: expected {counts}, found {found}")
