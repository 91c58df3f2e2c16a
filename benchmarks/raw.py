"""The raw `sqlite3` loop: conveyor's claim/complete work with nothing around it.

Same table shape, WAL and `synchronous=NORMAL` like conveyor's default, `BEGIN IMMEDIATE`
for every write, the claim as one `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`,
then the completion as a second transaction. No history, heartbeats or Python layer: this is
the practical limit a queue on this SQLite and this machine can approach.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from benchmarks.common import Rate, scratch_db
from conveyor.backends.sql import Queries

Q = Queries.load("benchmarks", "raw.sql")
TASK = "bench.noop"
WORKER_ID = "raw-loop"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def create(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    conn.execute(Q.create_table)
    conn.execute(Q.create_runnable_index)
    return conn


def insert(jobs: int, per_transaction: int = 1) -> Rate:
    """Insert `jobs` queued jobs, `per_transaction` at a time."""
    with scratch_db("raw-insert") as path:
        conn = create(path)
        try:
            started = time.perf_counter()
            for first in range(0, jobs, per_transaction):
                count = min(per_transaction, jobs - first)
                now = time.time()
                rows = [
                    {"task": TASK, "args": json.dumps([first + i]), "now": now}
                    for i in range(count)
                ]
                conn.execute("BEGIN IMMEDIATE")
                if count == 1:
                    conn.execute(Q.insert, rows[0])
                else:
                    conn.executemany(Q.insert, rows)
                conn.execute("COMMIT")
            seconds = time.perf_counter() - started
            _expect(conn, {"queued": jobs})
        finally:
            conn.close()
    return Rate(jobs, seconds)


def drain(jobs: int, per_transaction: int) -> Rate:
    """Claim and complete `jobs` pre-inserted jobs, `per_transaction` per transaction."""
    with scratch_db("raw-drain") as path:
        conn = create(path)
        try:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                Q.insert, ({"task": TASK, "args": json.dumps([i]), "now": now} for i in range(jobs))
            )
            conn.execute("COMMIT")
            started = time.perf_counter()
            done = 0
            while True:
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    Q.claim,
                    {
                        "worker_id": WORKER_ID,
                        "now": now,
                        "lease_until": now + 30,
                        "limit": per_transaction,
                    },
                ).fetchall()
                conn.execute("COMMIT")
                if not rows:
                    break
                for _id, _task, args, kwargs in rows:  # what a worker decodes before the call
                    json.loads(args)
                    json.loads(kwargs)
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    Q.complete, [{"id": r[0], "now": now, "worker_id": WORKER_ID} for r in rows]
                )
                conn.execute("COMMIT")
                done += len(rows)
            seconds = time.perf_counter() - started
            _expect(conn, {"succeeded": jobs})
        finally:
            conn.close()
    return Rate(done, seconds)


def _expect(conn: sqlite3.Connection, counts: dict[str, int]) -> None:
    found = dict(conn.execute(Q.count_by_state).fetchall())
    if found != counts:
        raise RuntimeError(f"raw loop: expected {counts}, found {found}")
