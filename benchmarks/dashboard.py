"""`python -m benchmarks.dashboard`: is the dashboard (and the JSON API) fast on a store of a
million jobs, and does any page load read the whole jobs table?

On each backend it fills a fresh store (a SQLite file in a temporary folder, or the PostgreSQL
schema `bench_dash`, dropped afterwards) with N jobs by direct INSERTs that mirror what conveyor
writes: a day of a busy store, most jobs succeeded, the newest 5 % a backlog still queued, a few
thousand dead of three error types, some scheduled, retrying, running and cancelled, and each
job's history. Then it loads every page in-process (FastAPI's TestClient), each beside the bare
SQL a hand-written dashboard would run for it on a plain sqlite3 / psycopg connection, and
prints the plan of every statement the pages run, flagging scans and sorts of the whole table.

    python -m benchmarks.dashboard [--jobs 1000000] [--backends sqlite,postgres] [--repeat 7]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.rows import tuple_row
from rich.console import Console
from rich.table import Table
from rich.text import Text

import conveyor
from benchmarks.common import (
    BACKENDS,
    DEFAULT_POSTGRES_URL,
    drop_schema,
    postgres_url,
    quiet_logging,
    scratch_db,
    sqlite_url,
)
from conveyor.backends.sql import Queries
from conveyor.web import create_api

Progress = Callable[[str], None]

DAY = 86_400.0
#: The PostgreSQL schema the store lives in unless told otherwise; dropped before (a leftover
#: of an interrupted run) and after.
SCHEMA = "bench_dash"
#: A server without tokens answers only to this machine.
LOCAL = "http://127.0.0.1"
#: Jobs written per INSERT transaction while filling.
FILL_BATCH = 50_000
#: A page whose median load takes longer than this is marked slow.
SLOW_MS = 100.0
#: A scan or sort covering at least this share of the jobs is "the whole table".
WHOLE = 0.5

QUEUES = ("default", "emails", "webhooks", "reports")
QUEUE_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
TASKS = ("shop.send_email", "shop.deliver_webhook", "shop.build_report")
#: The task of each queue's jobs; `default` has all three.
TASK_OF = {"emails": TASKS[0], "webhooks": TASKS[1], "reports": TASKS[2]}
#: The queue the per-queue pages filter on: the smallest, so a listing skips the most rows.
QUEUE = "reports"
#: Per task, what its dead and retrying jobs failed with: (type, message, weight).
ERRORS: dict[str, tuple[tuple[str, str, float], ...]] = {
    TASKS[0]: (
        ("TimeoutError", "smtp.example.com did not answer within 30 s", 0.7),
        ("ConnectionError", "connection refused: smtp.example.com:587", 0.3),
    ),
    TASKS[1]: (
        ("ConnectionError", "connection reset by hooks.example.com", 0.6),
        ("TimeoutError", "hooks.example.com did not answer within 10 s", 0.4),
    ),
    TASKS[2]: (
        ("ValueError", "no rows for the period", 0.8),
        ("TimeoutError", "the warehouse query ran over 300 s", 0.2),
    ),
}
#: The share of the jobs in each state but succeeded (the rest).
MIX = {
    "queued": 0.05,
    "scheduled": 0.02,
    "cancelled": 0.01,
    "dead": 0.003,
    "retrying": 0.002,
    "running": 0.0002,
}
#: Text in the arguments of a few jobs, for the search page.
NEEDLE = "needle-7f3a9c"
WORKERS = tuple(f"bench-host:{4100 + k}:w{k}" for k in range(4))

#: The jobs columns the fill writes (the others keep their defaults), in this order.
COLUMNS = (
    "queue",
    "task",
    "args",
    "kwargs",
    "priority",
    "state",
    "attempt",
    "max_attempts",
    "run_at",
    "created_at",
    "started_at",
    "finished_at",
    "lease_until",
    "worker_id",
    "progress",
    "errors",
    "state_changed_at",
    "note",
)
#: Epoch seconds in the rows; timestamptz on PostgreSQL.
TIMES = frozenset(
    {"run_at", "created_at", "started_at", "finished_at", "lease_until", "state_changed_at"}
)
#: PostgreSQL array types the fill sends each column as.
PG_ARRAY = {
    "priority": "int2",
    "attempt": "int4",
    "max_attempts": "int4",
    "progress": "float4",
    **dict.fromkeys(TIMES, "float8"),
}
PG_CAST = {"args": "::json", "kwargs": "::json", "errors": "::jsonb"}

#: Each job's history as conveyor's enqueue and its triggers would have written it: enqueued,
#: started, then finished (or failed, or cancelled before it started). Set-based, in id order.
HISTORY = (
    "INSERT INTO {history} (job_id, at, from_state, to_state, worker_id, note) "
    "SELECT id, created_at, NULL, CASE WHEN state = 'scheduled' THEN 'scheduled' "
    "ELSE 'queued' END, NULL, NULL FROM {jobs} ORDER BY id",
    "INSERT INTO {history} (job_id, at, from_state, to_state, worker_id, note) "
    "SELECT id, started_at, 'queued', 'running', worker_id, NULL FROM {jobs} "
    "WHERE started_at IS NOT NULL ORDER BY id",
    "INSERT INTO {history} (job_id, at, from_state, to_state, worker_id, note) "
    "SELECT id, state_changed_at, CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END, "
    "state, worker_id, note FROM {jobs} "
    "WHERE state IN ('succeeded', 'dead', 'cancelled', 'retrying') ORDER BY id",
)

#: What a hand-written dashboard would run for each page: `{name}`s are the dialect's.
RAW_SQL: dict[str, tuple[str, ...]] = {
    "counts": ("SELECT queue, state, count(*) FROM {jobs} GROUP BY queue, state",),
    "counts_day": (
        "SELECT queue, state, count(*) FROM {jobs} GROUP BY queue, state",
        "SELECT queue, state, {hour} AS hour, count(*) FROM {jobs} "
        "WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at >= {since} "
        "GROUP BY queue, state, hour",
    ),
    "latest": ("SELECT * FROM {jobs} ORDER BY id DESC LIMIT 50",),
    "dead": ("SELECT * FROM {jobs} WHERE state = 'dead' ORDER BY id DESC LIMIT 50",),
    "succeeded": ("SELECT * FROM {jobs} WHERE state = 'succeeded' ORDER BY id DESC LIMIT 50",),
    "queue": ("SELECT * FROM {jobs} WHERE queue = %(queue)s ORDER BY id DESC LIMIT 50",),
    "queued_in_queue": (
        "SELECT * FROM {jobs} WHERE state = 'queued' AND queue = %(queue)s "
        "ORDER BY id DESC LIMIT 50",
    ),
    "search": (
        "SELECT * FROM {jobs} WHERE {args_text} LIKE %(pattern)s ORDER BY id DESC LIMIT 50",
    ),
    "job": (
        "SELECT * FROM {jobs} WHERE id = %(id)s",
        "SELECT * FROM {history} WHERE job_id = %(id)s ORDER BY id",
    ),
    "dead_groups": (
        "SELECT task, {error_type} AS error_type, count(*) AS n, max(id), max(finished_at) "
        "FROM {jobs} WHERE state = 'dead' GROUP BY task, error_type ORDER BY n DESC",
    ),
    "dlq": (
        "SELECT task, {error_type} AS error_type, count(*) AS n, max(id), max(finished_at) "
        "FROM {jobs} WHERE state = 'dead' GROUP BY task, error_type ORDER BY n DESC",
        "SELECT * FROM {jobs} WHERE state = 'dead' ORDER BY id DESC LIMIT 50",
    ),
    "workers": ("SELECT * FROM {workers} ORDER BY started_at, id",),
}
RAW_LABELS = {
    "counts": "GROUP BY queue, state",
    "counts_day": "GROUP BY queue, state + a day finished per hour",
    "latest": "ORDER BY id DESC LIMIT 50",
    "dead": "state='dead' ORDER BY id DESC LIMIT 50",
    "succeeded": "state='succeeded' ORDER BY id DESC LIMIT 50",
    "queue": "queue=? ORDER BY id DESC LIMIT 50",
    "queued_in_queue": "state='queued' AND queue=? ... LIMIT 50",
    "search": "args LIKE '%text%' ORDER BY id DESC LIMIT 50",
    "job": "the job by id + its history",
    "dead_groups": "dead GROUP BY task, error type",
    "dlq": "dead GROUP BY task, error type + 50 dead",
    "workers": "SELECT * FROM workers",
}


# -- the jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each state goes: the newest jobs are the backlog (running, then queued); the
    others are spread over the day before at random positions, succeeded unless picked."""

    n: int
    running: int
    queued: int
    picked: dict[int, str]

    @property
    def head(self) -> int:
        return self.n - self.running - self.queued

    @property
    def backlog_s(self) -> float:
        """How long the oldest queued job has waited: the backlog's share of the day."""
        return DAY * (self.n - self.head) / self.n


def layout(n: int, rng: random.Random) -> Layout:
    running, queued = round(n * MIX["running"]), round(n * MIX["queued"])
    others = [s for s in MIX if s not in ("running", "queued")]
    counts = [round(n * MIX[s]) for s in others]
    positions = rng.sample(range(n - running - queued), sum(counts))
    picked: dict[int, str] = {}
    for state, start, count in zip(
        others, itertools.accumulate([0, *counts]), counts, strict=False
    ):
        picked.update(dict.fromkeys(positions[start : start + count], state))
    return Layout(n, running, queued, picked)


def needle_positions(n: int) -> frozenset[int]:
    """The jobs whose arguments hold NEEDLE: three among the newest 20,000, seven spread over
    the rest (a search's first page looks at the newest 200,000 ids)."""
    newest = [n - 1 - 4_000 * k for k in range(1, 4)]
    spread = [int(n * f) for f in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9)]
    return frozenset(p for p in newest + spread if 0 <= p < n)


def _pick(rng: random.Random, weights: tuple[float, ...]) -> int:
    r = rng.random()
    for i, w in enumerate(weights):
        r -= w
        if r < 0:
            return i
    return len(weights) - 1


def _arguments(task: str, i: int, needle: bool) -> tuple[str, str]:
    """args and kwargs as conveyor encodes them (compact JSON)."""
    if task == TASKS[0]:
        return f'["user{i % 50_000}@example.com","receipt"]', f'{{"order":{i}}}'
    if task == TASKS[1]:
        event = NEEDLE if needle else "order.paid"
        return f'["https://hooks.example.com/t/{i % 997}","{event}"]', f'{{"order":{i}}}'
    return f"[{i % 5_000}]", '{"format":"pdf"}'


def _errors(task: str, attempts: int, last_at: float, worker: str, rng: random.Random) -> str:
    """An `errors` list as the worker appends it: one entry per failed attempt."""
    kinds = ERRORS[task]
    kind, message, _ = kinds[_pick(rng, tuple(k[2] for k in kinds))]
    function = task.rsplit(".", 1)[1]
    trace = f'Traceback (most recent call last):\n  File "shop/tasks.py", line 42, in {function}\n'
    return json.dumps(
        [
            {
                "type": kind,
                "message": message,
                "traceback": f"{trace}{kind}: {message}",
                "at": last_at - 30.0 * (attempts - k),
                "worker": worker,
                "attempt": k,
            }
            for k in range(1, attempts + 1)
        ]
    )


def generate(n: int, now: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """N job rows (COLUMNS), oldest first: ids follow creation, as in a real store."""
    rng = random.Random(seed)
    plan = layout(n, rng)
    needles = needle_positions(n)
    head, backlog = plan.head, plan.backlog_s
    for i in range(n):
        if i in needles:
            queue, task = "webhooks", TASKS[1]
        else:
            queue = QUEUES[_pick(rng, QUEUE_WEIGHTS)]
            task = TASK_OF.get(queue) or TASKS[rng.randrange(len(TASKS))]
        args, kwargs = _arguments(task, i, i in needles)
        r = rng.random()
        priority = 3 if r < 0.1 else 8 if r < 0.15 else 5
        worker = WORKERS[i % len(WORKERS)]
        job = (queue, task, args, kwargs, priority)
        if i >= head:  # the backlog: created over its last stretch, oldest first
            created = now - backlog + (i - head) / (n - head) * backlog
            if i - head < plan.running:
                started = now - rng.uniform(1.0, 60.0)
                yield (
                    *job,
                    "running",
                    1,
                    3,
                    created,
                    created,
                    started,
                    None,
                    started + 60.0,
                    worker,
                    None,
                    "[]",
                    started,
                    None,
                )
            else:
                yield (
                    *job,
                    "queued",
                    0,
                    3,
                    created,
                    created,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "[]",
                    created,
                    None,
                )
            continue
        done = now - DAY + i / head * DAY  # finished over the day, newer ids later
        created = done - 2.5 - i / head * backlog  # waiting longer as the backlog grew
        started = done - rng.uniform(0.02, 2.0)
        state = plan.picked.get(i, "succeeded")
        if state == "succeeded":
            yield (
                *job,
                state,
                1,
                3,
                created,
                created,
                started,
                done,
                None,
                worker,
                100.0,
                "[]",
                done,
                None,
            )
        elif state == "dead":
            yield (
                *job,
                state,
                3,
                3,
                created,
                created,
                started,
                done,
                None,
                worker,
                None,
                _errors(task, 3, done, worker, rng),
                done,
                None,
            )
        elif state == "cancelled":
            yield (
                *job,
                state,
                0,
                3,
                created,
                created,
                None,
                done,
                None,
                None,
                None,
                "[]",
                done,
                "cancelled from the dashboard",
            )
        elif state == "retrying":
            yield (
                *job,
                state,
                1,
                3,
                now + rng.uniform(30.0, 900.0),
                created,
                started,
                None,
                None,
                worker,
                None,
                _errors(task, 1, done, worker, rng),
                done,
                None,
            )
        else:  # scheduled: due some time in the next day
            yield (
                *job,
                state,
                0,
                3,
                now + rng.uniform(60.0, DAY),
                created,
                None,
                None,
                None,
                None,
                None,
                "[]",
                created,
                None,
            )


def noop(*args: Any, **kwargs: Any) -> None:
    """The tasks are never run here: registered so the pages know their names."""


def make_app(url: str, **options: Any) -> conveyor.App:
    app = conveyor.App(url, **options)
    for queue, task in TASK_OF.items():
        app.task(name=task, queue=queue)(noop)
    return app


# -- the stores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One statement of conveyor's queries.sql, with the parameters a page runs it with."""

    query: str
    variant: str
    pages: str
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.query} ({self.variant})" if self.variant else self.query


@dataclass(frozen=True)
class Flag:
    text: str
    #: the table is read (or sorted) whole, or most of it
    whole: bool


@dataclass
class Plan:
    statement: Statement
    lines: list[str]
    flags: list[Flag]
    ms: float
    rows: int
    #: how much it read: SQLite's VM steps, PostgreSQL's rows read from the jobs table
    work: str
    #: PostgreSQL: the generic plan (after prepared-statement reuse) when its shape differs
    generic: Plan | None = None
    #: PostgreSQL: plans conveyor's own connections made for it in this run (generic, custom)
    used: tuple[int, int] | None = None


@dataclass
class Fill:
    seconds: dict[str, float]
    history_rows: int
    size_bytes: int


class Store(Protocol):
    """One backend's side of the benchmark: the fill, the raw baseline, the plans."""

    name: str

    def describe(self) -> str: ...
    def fill(self, n: int, now: float, progress: Progress) -> Fill: ...
    def scalar(self, query: str) -> Any: ...
    def raw(self, key: str, params: dict[str, Any]) -> int: ...
    def plan_usage(self, app: conveyor.App) -> dict[str, tuple[int, int]]: ...
    def plan(
        self, statement: Statement, table_rows: int, usage: dict[str, tuple[int, int]]
    ) -> Plan: ...
    def close(self) -> None: ...


def _batches(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    while batch := list(itertools.islice(rows, FILL_BATCH)):
        yield batch


def _sqlite_placeholders(text: str) -> str:
    """`%(name)s` placeholders (psycopg's) as `:name` (sqlite3's)."""
    return re.sub(r"%\((\w+)\)s", r":\1", text)


def _median_time(run: Callable[[], Any], times: int = 3) -> tuple[float, Any]:
    """The median of `times` runs, in ms, and the last run's result."""
    runs, result = [], None
    for _ in range(times):
        started = time.perf_counter()
        result = run()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), result


class SqliteStore:
    name = "sqlite"
    TABLES = {
        "jobs": "conveyor_jobs",
        "history": "conveyor_job_history",
        "workers": "conveyor_workers",
    }
    DIALECT = {
        **TABLES,
        "hour": "CAST(finished_at / 3600 AS INTEGER)",
        "since": "%(since)s",
        "args_text": "args",
        "error_type": "json_extract(errors, '$[#-1].type')",
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous = NORMAL")  # conveyor's default, in WAL mode
        self.q = Queries.load("conveyor.backends.sqlite", "queries.sql")
        self.raw_sql = {
            k: [_sqlite_placeholders(s.format(**self.DIALECT)) for s in v]
            for k, v in RAW_SQL.items()
        }

    def describe(self) -> str:
        return (
            f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL; no ANALYZE, as "
            "conveyor runs none)"
        )

    def fill(self, n: int, now: float, progress: Progress) -> Fill:
        conn, seconds = self.conn, {}
        insert = (
            f"INSERT INTO conveyor_jobs ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))})"
        )
        started = time.perf_counter()
        done = 0
        for batch in _batches(generate(n, now)):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, batch)
            conn.execute("COMMIT")
            done += len(batch)
            progress(f"sqlite: filling, {done:,} of {n:,} jobs")
        seconds["jobs"] = time.perf_counter() - started
        progress("sqlite: writing the history")
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for statement in HISTORY:
            conn.execute(statement.format(**self.TABLES))
        conn.executemany(
            "INSERT INTO conveyor_workers (id, host, pid, queues, concurrency, started_at, "
            "last_beat, running) VALUES (?, ?, ?, NULL, 50, ?, ?, '[]')",
            [(w, "bench-host", 4100 + k, now - 3600, now) for k, w in enumerate(WORKERS)],
        )
        conn.execute("COMMIT")
        seconds["history"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        seconds["WAL checkpoint"] = time.perf_counter() - started
        history = self.scalar("SELECT max(id) FROM {history}")
        return Fill(seconds, history, self.path.stat().st_size)

    def scalar(self, query: str) -> Any:
        return self.conn.execute(query.format(**self.TABLES)).fetchone()[0]

    def raw(self, key: str, params: dict[str, Any]) -> int:
        return sum(len(self.conn.execute(s, params).fetchall()) for s in self.raw_sql[key])

    def plan(
        self, statement: Statement, table_rows: int, usage: dict[str, tuple[int, int]]
    ) -> Plan:
        text = getattr(self.q, statement.query)
        params: tuple[Any, ...] | dict[str, Any]
        if "?" in text:
            params = tuple(statement.params.values())
        else:
            params = {
                k: json.dumps(v) if isinstance(v, list) else v for k, v in statement.params.items()
            }
        rows = self.conn.execute("EXPLAIN QUERY PLAN " + text, params).fetchall()
        depth: dict[int, int] = {0: -1}
        lines = []
        for node, parent, _, detail in rows:
            depth[node] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node] + detail)
        before = self._counters(text)
        ms, found = _median_time(lambda: self.conn.execute(text, params).fetchall())
        scanned, sorts, steps, runs = (
            a - b for a, b in zip(self._counters(text), before, strict=True)
        )
        scanned, sorts, steps = (n / max(runs, 1) for n in (scanned, sorts, steps))
        # reading a row through an index takes a few VM steps (4 at least): this many steps
        # means it read a large part of the table, whatever the plan says
        through_index = steps >= 4 * WHOLE * table_rows
        whole = scanned >= WHOLE * table_rows or through_index
        flags = []
        for line in lines:
            detail = line.strip()
            if re.match(r"SCAN (conveyor_jobs|conveyor_job_history)\b", detail):
                big = scanned >= WHOLE * table_rows
                kind = "full scan" if big else "scan stopped early (LIMIT)"
                flags.append(Flag(f"{kind}: {detail}, {scanned:,.0f} rows stepped", big))
            elif detail.startswith("USE TEMP B-TREE"):
                kind = "sort after reading most of the table" if whole else "sort of the rows found"
                flags.append(Flag(f"{kind}: {detail}", whole))
        if through_index and not any(f.text.startswith("full scan") for f in flags):
            flags.append(
                Flag(
                    f"reads much of the table through an index ({steps / table_rows:.1f}"
                    " VM steps per job)",
                    True,
                )
            )
        work = f"{scanned:,.0f} rows scanned, {sorts:.0f} sorts, {steps:,.0f} VM steps"
        return Plan(statement, lines, flags, ms, len(found), work)

    def _counters(self, text: str) -> tuple[int, int, int, int]:
        """SQLite's own counters of the cached statement (they add up over its runs): steps
        forward in full scans, sorts, virtual-machine steps, runs."""
        row = self.conn.execute(
            "SELECT sum(nscan), sum(nsort), sum(nstep), sum(run) FROM sqlite_stmt WHERE sql = ?",
            (text,),
        ).fetchone()
        return (row[0] or 0, row[1] or 0, row[2] or 0, row[3] or 0) if row else (0, 0, 0, 0)

    def plan_usage(self, app: conveyor.App) -> dict[str, tuple[int, int]]:
        return {}  # SQLite plans each statement once, with its parameters bound

    def close(self) -> None:
        self.conn.close()


class PostgresStore:
    name = "postgres"

    def __init__(self, url: str, schema: str) -> None:
        self.schema = schema
        self.conn = psycopg.connect(url, autocommit=True)
        self.q = Queries.load("conveyor.backends.postgres", "queries.sql").substitute(schema=schema)
        self.tables = {
            "jobs": f"{schema}.jobs",
            "history": f"{schema}.job_history",
            "workers": f"{schema}.workers",
        }
        dialect = {
            **self.tables,
            "hour": "date_trunc('hour', finished_at)",
            "since": "to_timestamp(%(since)s)",
            "args_text": "args::text",
            "error_type": "errors -> -1 ->> 'type'",
        }
        self.raw_sql = {
            k: [s.format(**dialect).replace(" LIKE ", " ILIKE ") for s in v]
            for k, v in RAW_SQL.items()
        }

    def describe(self) -> str:
        shown = {}
        for name in (
            "server_version",
            "shared_buffers",
            "work_mem",
            "max_parallel_workers_per_gather",
            "jit",
        ):
            row = self.conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            shown[name] = row[0] if row else "?"
        version = shown.pop("server_version")
        settings = ", ".join(f"{k}={v}" for k, v in shown.items())
        return (
            f"PostgreSQL {version} ({settings}); schema {self.schema}, VACUUM ANALYZE "
            "after the fill (as autovacuum would)"
        )

    def fill(self, n: int, now: float, progress: Progress) -> Fill:
        conn, seconds = self.conn, {}
        columns = ", ".join(COLUMNS)
        arrays = ", ".join(f"%s::{PG_ARRAY.get(c, 'text')}[]" for c in COLUMNS)
        values = ", ".join(
            f"to_timestamp({c})" if c in TIMES else c + PG_CAST.get(c, "") for c in COLUMNS
        )
        insert = (
            f"INSERT INTO {self.schema}.jobs ({columns}) SELECT {values} "
            f"FROM unnest({arrays}) AS t({columns})"
        )
        started = time.perf_counter()
        done = 0
        for batch in _batches(generate(n, now)):
            with conn.transaction():
                conn.execute(insert, [list(c) for c in zip(*batch, strict=True)])
            done += len(batch)
            progress(f"postgres: filling, {done:,} of {n:,} jobs")
        seconds["jobs"] = time.perf_counter() - started
        progress("postgres: writing the history")
        started = time.perf_counter()
        with conn.transaction():
            for statement in HISTORY:
                conn.execute(statement.format(**self.tables))
            for k, w in enumerate(WORKERS):
                conn.execute(
                    f"INSERT INTO {self.schema}.workers (id, host, pid, queues, concurrency, "
                    "started_at, last_beat, running) VALUES (%s, 'bench-host', %s, NULL, 50, "
                    "to_timestamp(%s), to_timestamp(%s), '[]')",
                    (w, 4100 + k, now - 3600, now),
                )
        seconds["history"] = time.perf_counter() - started
        progress("postgres: VACUUM ANALYZE")
        started = time.perf_counter()
        conn.execute(f"VACUUM (ANALYZE) {self.schema}.jobs, {self.schema}.job_history")
        seconds["VACUUM ANALYZE"] = time.perf_counter() - started
        size = self.conn.execute(
            f"SELECT pg_total_relation_size('{self.schema}.jobs') "
            f"+ pg_total_relation_size('{self.schema}.job_history')"
        ).fetchone()
        history = self.scalar("SELECT max(id) FROM {history}")
        return Fill(seconds, history, int(size[0]) if size else 0)

    def scalar(self, query: str) -> Any:
        row = self.conn.execute(query.format(**self.tables)).fetchone()
        return row[0] if row else None

    def raw(self, key: str, params: dict[str, Any]) -> int:
        found = 0
        for statement in self.raw_sql[key]:
            found += len(
                self.conn.execute(statement, params if "%(" in statement else None).fetchall()
            )
        return found

    def plan_usage(self, app: conveyor.App) -> dict[str, tuple[int, int]]:
        """How often conveyor's own connections planned each statement generically and custom
        in this run (psycopg prepares a statement after 5 runs on a connection; PostgreSQL then
        tries 5 custom plans before it may settle on the generic one). Reads conveyor's pool,
        an internal: best effort, empty if it is not there."""
        pool = getattr(app.backend, "pool", None)
        if pool is None:
            return {}
        connections = pool()
        usage: dict[str, tuple[int, int]] = {}
        with contextlib.ExitStack() as stack:
            size = connections.get_stats().get("pool_size", 1)
            for _ in range(size):  # every connection it has, at once
                conn = stack.enter_context(connections.connection())
                cur = conn.cursor(row_factory=tuple_row)
                query = "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
                for text, generic, custom in cur.execute(query):
                    key = " ".join(text.split())
                    had = usage.get(key, (0, 0))
                    usage[key] = (had[0] + generic, had[1] + custom)
        return usage

    def plan(
        self, statement: Statement, table_rows: int, usage: dict[str, tuple[int, int]]
    ) -> Plan:
        """The custom plan (parameters known, as for psycopg's first runs of a statement) and,
        when its shape differs, the generic one (what PostgreSQL may use once psycopg has
        prepared the statement: after 5 runs on a connection, then 5 more)."""
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = re.sub(r"%\((\w+)\)s", number, getattr(self.q, statement.query)).replace("%%", "%")
        self.conn.execute(f"PREPARE bench_plan AS {text}")
        execute = sql.SQL("EXECUTE bench_plan")
        if names:
            values = sql.SQL(", ").join(sql.Literal(statement.params[n]) for n in names)
            execute = sql.SQL("EXECUTE bench_plan ({})").format(values)
        try:
            custom = self._explain(statement, execute, "force_custom_plan", table_rows)
            self.conn.execute("SET plan_cache_mode = force_generic_plan")
            [[doc]] = self.conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + execute).fetchall()
            if _shape(doc[0]["Plan"]) != custom.shape:
                custom.plan.generic = self._explain(
                    statement, execute, "force_generic_plan", table_rows
                ).plan
        finally:
            self.conn.execute("RESET plan_cache_mode")
            self.conn.execute("DEALLOCATE bench_plan")
        custom.plan.used = usage.get(" ".join(text.split()), (0, 0))
        return custom.plan

    def close(self) -> None:
        self.conn.close()

    def _explain(
        self, statement: Statement, execute: sql.Composable, mode: str, table_rows: int
    ) -> _Explained:
        self.conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.SQL(mode)))
        explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + execute
        [[doc]] = self.conn.execute(explain).fetchall()
        explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + execute
        lines = [r[0] for r in self.conn.execute(explain).fetchall()]
        root = doc[0]["Plan"]
        flags: list[str] = []
        read = _rows_read(root, flags, table_rows)
        share = read / max(table_rows, 1)
        plan = Plan(
            statement,
            lines,
            flags,
            float(doc[0]["Execution Time"]),
            int(root["Actual Rows"]),
            f"{read:,} job rows read ({share:.1%})",
        )
        return _Explained(plan, _shape(root))


@dataclass
class _Explained:
    plan: Plan
    shape: tuple[Any, ...]


def _shape(node: dict[str, Any]) -> tuple[Any, ...]:
    return (
        node["Node Type"],
        node.get("Relation Name"),
        node.get("Index Name"),
        tuple(_shape(c) for c in node.get("Plans", ())),
    )


def _rows_read(node: dict[str, Any], flags: list[Flag], table_rows: int) -> int:
    """Rows this node and those under it read from the jobs table; flags whole-table scans
    and sorts on the way."""
    kind = node["Node Type"]
    children = node.get("Plans", ())
    read = sum(_rows_read(c, flags, table_rows) for c in children)
    loops = node.get("Actual Loops", 1)
    if node.get("Relation Name") == "jobs":
        here = (
            node.get("Actual Rows", 0)
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        ) * loops
        read += here
        where = f"{kind} on jobs" + (f" using {node['Index Name']}" if "Index Name" in node else "")
        whole = here >= WHOLE * table_rows
        if kind.endswith("Seq Scan"):
            text = "full scan" if whole else "sequential scan, stopped early"
            flags.append(Flag(f"{text}: {where}, {here:,} rows read", whole))
        elif whole:
            flags.append(Flag(f"reads most of the table: {where}, {here:,} rows read", True))
    if kind in ("Sort", "Incremental Sort"):
        into = sum(c.get("Actual Rows", 0) * c.get("Actual Loops", 1) for c in children)
        whole = into >= WHOLE * table_rows
        text = "sort of most of the table" if whole else "sort"
        flags.append(Flag(f"{text}: {into:,} rows ({node.get('Sort Method', '?')})", whole))
    return int(read)


# -- the pages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    path: str
    #: the RAW_SQL baseline it is compared with
    raw: str
    #: reads the shared overview snapshot: timed cold (snapshot forgotten) and warm
    snapshot: bool = False
    #: which of its figures the ratio to the raw baseline uses
    versus: str = "warm"
    label: str = ""
    extra: bool = False

    @property
    def shown(self) -> str:
        return self.label or self.path


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000


@dataclass
class PageResult:
    page: Page
    cold: Runs = field(default_factory=Runs)
    warm: Runs = field(default_factory=Runs)
    raw: Runs = field(default_factory=Runs)

    @property
    def compared(self) -> Runs:
        return self.cold if self.page.versus == "cold" else self.warm

    @property
    def ratio(self) -> float:
        """conveyor / raw, per run (both measured side by side), then the median."""
        pairs = zip(self.compared.seconds, self.raw.seconds, strict=True)
        return statistics.median(c / r for c, r in pairs if r > 0)


@dataclass(frozen=True)
class Facts:
    jobs: int
    states: dict[str, int]
    newest_id: int
    dead_id: int


def pages(facts: Facts) -> list[Page]:
    q, job = QUEUE, facts.dead_id
    return [
        Page("/", "counts_day", label="/ (first load after start)", versus="cold"),
        Page("/", "counts", snapshot=True, versus="cold"),
        Page("/queues", "counts", snapshot=True, versus="cold"),
        Page("/jobs", "latest", snapshot=True),
        Page("/jobs?state=dead", "dead", snapshot=True),
        Page("/jobs?state=succeeded", "succeeded", snapshot=True, extra=True),
        Page(f"/jobs?queue={q}", "queue", snapshot=True),
        Page(f"/jobs?state=queued&queue={q}", "queued_in_queue", snapshot=True),
        Page(f"/jobs?search={NEEDLE}", "search", snapshot=True),
        Page(f"/jobs/{job}", "job"),
        Page("/dlq", "dlq"),
        Page("/workers", "workers"),
        Page("/api/jobs", "latest"),
        Page("/api/overview", "counts", snapshot=True, versus="cold"),
        Page("/api/dlq/groups", "dead_groups"),
        Page("/metrics", "counts"),
    ]


def statements(facts: Facts, now: float) -> list[Statement]:
    listing: dict[str, Any] = {
        "queue": None,
        "task": None,
        "error_type": None,
        "before_id": None,
        "after_id": None,
        "contains": None,
        "limit": 50,
    }
    day = math.floor((now - DAY) / 3600) * 3600
    settled = math.floor((now - 120) / 60) * 60
    snapshot = "the snapshot: /, /queues, /jobs*, /api/overview"
    return [
        Statement("list_jobs", "", "/jobs, /api/jobs", listing),
        Statement(
            "list_jobs", f"queue={QUEUE}", f"/jobs?queue={QUEUE}", {**listing, "queue": QUEUE}
        ),
        Statement(
            "list_jobs",
            "a window of ids narrowed by text, limit 500",
            "/jobs?search=",
            {
                **listing,
                "before_id": facts.newest_id + 1,
                "after_id": facts.newest_id - 200_000,
                "contains": NEEDLE,
                "limit": 500,
            },
        ),
        Statement(
            "list_jobs_in_states", "dead", "/jobs?state=dead, /dlq", {"states": ["dead"], **listing}
        ),
        Statement(
            "list_jobs_in_states",
            "succeeded",
            "/jobs?state=succeeded",
            {"states": ["succeeded"], **listing},
        ),
        Statement(
            "list_jobs_in_states",
            f"queued, queue={QUEUE}",
            f"/jobs?state=queued&queue={QUEUE}",
            {"states": ["queued"], **listing, "queue": QUEUE},
        ),
        Statement("queue_stats", "", f"{snapshot}; /metrics (every scrape)", {}),
        Statement("queued_since", "", snapshot, {}),
        Statement(
            "finished_counts",
            "a day",
            "the first snapshot after a start",
            {"since": day, "bucket": 60},
        ),
        Statement(
            "finished_counts",
            "since 2 min ago",
            "every later snapshot",
            {"since": settled, "bucket": 60},
        ),
        Statement("dead_groups", "", "/dlq, /api/dlq/groups", {"queue": None}),
        Statement("get_job", "", "/jobs/<id>, /api/jobs/<id>", {"id": facts.dead_id}),
        Statement("job_history", "", "/jobs/<id>, /api/jobs/<id>", {"id": facts.dead_id}),
    ]


def _get(client: TestClient, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return seconds


def _raw(store: Store, key: str, params: dict[str, Any]) -> float:
    started = time.perf_counter()
    store.raw(key, params)
    return time.perf_counter() - started


def time_pages(
    app: conveyor.App, store: Store, facts: Facts, repeat: int, progress: Progress
) -> tuple[list[PageResult], int]:
    """Every page `repeat` times, round-robin, each load beside its raw baseline; the number of
    jobs a search found."""
    params = {
        "queue": QUEUE,
        "id": facts.dead_id,
        "pattern": f"%{NEEDLE}%",
        "since": math.floor((time.time() - DAY) / 3600) * 3600,
    }
    results = [PageResult(p) for p in pages(facts)]
    first, rest = results[0], results[1:]
    for run in range(repeat):  # a fresh server: nothing cached, a day of throughput to read
        progress(f"{store.name}: first load after start, {run + 1} of {repeat}")
        with TestClient(create_api(app, None), base_url=LOCAL) as client:
            first.cold.seconds.append(_get(client, "/"))
        first.raw.seconds.append(_raw(store, first.page.raw, params))
    api = create_api(app, None)
    stats = api.state.stats
    with TestClient(api, base_url=LOCAL) as client:
        for result in rest:  # warm-up: templates, the throughput cache, prepared statements
            _get(client, result.page.path)
        found = len(client.get(f"/api/jobs?search={NEEDLE}").json()["jobs"])
        for run in range(repeat):
            progress(f"{store.name}: page loads, round {run + 1} of {repeat}")
            for result in rest:
                path = result.page.path
                if result.page.snapshot:
                    stats.forget()
                    result.cold.seconds.append(_get(client, path))
                stats.snapshot()  # fresh: the load below reads it from memory
                result.warm.seconds.append(_get(client, path))
                result.raw.seconds.append(_raw(store, result.page.raw, params))
    return results, found


@dataclass
class Report:
    backend: str
    description: str
    jobs: int
    repeat: int
    fill: Fill
    facts: Facts
    pages: list[PageResult]
    plans: list[Plan]
    search_found: int
    search_raw: int


def run(
    backend: str, jobs: int, repeat: int, postgres: str | None, schema: str, progress: Progress
) -> Report:
    if backend == "sqlite":
        with scratch_db("dashboard") as path:
            app = make_app(sqlite_url(path))
            try:
                app.migrate()
                store = SqliteStore(path)
                try:
                    return measure(app, store, jobs, repeat, progress)
                finally:
                    store.close()
            finally:
                app.close()
    url = postgres or postgres_url()
    drop_schema(url, schema)
    try:
        app = make_app(url, postgres_schema=schema)
        try:
            app.migrate()
            pg = PostgresStore(url, schema)
            try:
                return measure(app, pg, jobs, repeat, progress)
            finally:
                pg.close()
        finally:
            app.close()
    finally:
        drop_schema(url, schema)


def measure(app: conveyor.App, store: Store, jobs: int, repeat: int, progress: Progress) -> Report:
    now = time.time()
    fill = store.fill(jobs, now, progress)
    totals: dict[str, int] = {}
    for per_queue in app.queue_stats().values():
        for state, n in per_queue.items():
            totals[state.value] = totals.get(state.value, 0) + n
    facts = Facts(
        jobs=sum(totals.values()),
        states=totals,
        newest_id=int(store.scalar("SELECT max(id) FROM {jobs}")),
        dead_id=int(store.scalar("SELECT max(id) FROM {jobs} WHERE state = 'dead'")),
    )
    if facts.jobs != jobs:
        raise RuntimeError(f"{store.name}: expected {jobs:,} jobs, found {facts.jobs:,}")
    results, found = time_pages(app, store, facts, repeat, progress)
    search_raw = store.raw("search", {"pattern": f"%{NEEDLE}%"})
    progress(f"{store.name}: query plans")
    usage = store.plan_usage(app)
    plans = [store.plan(s, facts.jobs, usage) for s in statements(facts, time.time())]
    return Report(
        store.name, store.describe(), jobs, repeat, fill, facts, results, plans, found, search_raw
    )


# -- the report ---------------------------------------------------------------------------------


def _figure(runs: Runs) -> Text:
    if not runs.seconds:
        return Text("·", style="dim")
    ms = [s * 1000 for s in runs.seconds]
    text = Text(f"{runs.median_ms:,.1f}", style="red" if runs.median_ms > SLOW_MS else "")
    if len(ms) > 1:
        text.append(f"\n{min(ms):,.1f}-{max(ms):,.1f}", style="dim")
    return text


def pages_table(report: Report) -> Table:
    table = Table(
        title=f"Page loads, ms: median of {report.repeat} (min-max below), {report.jobs:,} jobs",
        title_justify="left",
    )
    table.add_column("page")
    table.add_column("cold", justify="right")
    table.add_column("warm", justify="right")
    table.add_column("raw SQL", justify="right")
    table.add_column("raw baseline")
    table.add_column("ratio", justify="right")
    table.add_column("")
    for r in report.pages:
        name = Text(r.page.shown)
        if r.page.extra:
            name.append("\n(extra page)", style="dim")
        slow = [
            k
            for k, runs in (("cold", r.cold), ("warm", r.warm))
            if runs.seconds and runs.median_ms > SLOW_MS
        ]
        verdict = Text(f"slow ({', '.join(slow)})" if slow else "", style="red")
        ratio = Text(f"{r.ratio:,.1f}x")
        ratio.append(f"\nof {r.page.versus}", style="dim")
        table.add_row(
            name,
            _figure(r.cold),
            _figure(r.warm),
            _figure(r.raw),
            Text(RAW_LABELS[r.page.raw], style="dim"),
            ratio,
            verdict,
        )
    return table


def plans_table(report: Report) -> Table:
    table = Table(title="Statements the pages run (on this store)", title_justify="left")
    table.add_column("statement")
    table.add_column("pages")
    table.add_column("ms", justify="right")
    table.add_column("rows", justify="right")
    table.add_column("read")
    table.add_column("whole table?")
    for plan in report.plans:
        flags = [f.text for f in plan.flags if f.whole]
        generic = plan.generic
        verdict = Text("\n".join(flags) or "no", style="red" if flags else "green")
        if generic is not None:
            worse = [f.text for f in generic.flags if f.whole]
            verdict.append(
                f"\ngeneric plan: {'; '.join(worse) or 'no'}", style="red" if worse else "dim"
            )
        if plan.used is not None:
            verdict.append(
                f"\nconveyor's connections: {plan.used[0]} generic, {plan.used[1]} custom plans",
                style="dim",
            )
        table.add_row(
            plan.statement.label,
            Text(plan.statement.pages, style="dim"),
            f"{plan.ms:,.1f}",
            f"{plan.rows:,}",
            plan.work,
            verdict,
        )
    return table


def print_plans(report: Report, console: Console) -> None:
    for plan in report.plans:
        for which, shown in (("", plan), ("generic plan of ", plan.generic)):
            if shown is None:
                continue
            console.rule(
                f"{which}{plan.statement.label}: {plan.statement.pages}", align="left", style="dim"
            )
            console.print("\n".join(shown.lines), markup=False, highlight=False)
            for flag in shown.flags:
                mark, style = ("WHOLE TABLE", "bold red") if flag.whole else ("note", "yellow")
                console.print(
                    f"  -> {mark}: {flag.text}", style=style, markup=False, highlight=False
                )


def print_report(report: Report, console: Console) -> None:
    fill, facts = report.fill, report.facts
    total = sum(fill.seconds.values())
    phases = ", ".join(f"{k} {v:,.1f} s" for k, v in fill.seconds.items())
    mix = ", ".join(f"{s} {n:,}" for s, n in sorted(facts.states.items(), key=lambda i: -i[1]))
    console.print(f"[bold]Dashboard on {report.backend}[/bold]: {report.description}")
    console.print(
        f"fill: {report.jobs:,} jobs + {fill.history_rows:,} history rows in {total:,.1f} s "
        f"({phases}; {report.jobs / fill.seconds['jobs']:,.0f} jobs/s), "
        f"{fill.size_bytes / 2**20:,.0f} MiB",
        highlight=False,
    )
    console.print(f"jobs: {mix}", highlight=False)
    holding = len(needle_positions(report.jobs))
    console.print(
        f"search: {holding} jobs hold '{NEEDLE}'; conveyor's search found {report.search_found} "
        f"on its first page (the newest 200,000 ids), the raw LIKE {report.search_raw}",
        highlight=False,
    )
    console.print()
    console.print(pages_table(report))
    console.print(
        "[dim]cold: the overview snapshot forgotten before each load (api.state.stats.forget()); "
        "warm: a fresh snapshot in memory; pages that do not read it have one figure (warm). "
        "First load after start: a new create_api each time (nothing cached: a day of "
        "throughput read, templates compiled). raw SQL: the baseline on a plain connection, "
        "measured right after each load; ratio: per run, then the median.[/dim]"
    )
    console.print()
    console.print(plans_table(report))
    console.print(
        "[dim]whole table: on PostgreSQL a scan that read at least half the jobs rows (EXPLAIN "
        "ANALYZE), or a sort of that many; on SQLite a full scan that stepped through at least "
        "half of them (sqlite_stmt.nscan), or at least 2 VM steps per job through an index "
        "(sqlite_stmt.nstep). generic plan: PostgreSQL's plan without the parameter values "
        "(plan_cache_mode=force_generic_plan), shown when its shape differs from the custom "
        "one; conveyor's connections: the plans conveyor's own pool made for the statement "
        "during the page loads (pg_prepared_statements).[/dim]"
    )
    console.print()
    print_plans(report, console)


# -- the command --------------------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _backends(text: str) -> tuple[str, ...]:
    aliases = {"postgresql": "postgres", "pg": "postgres"}
    chosen = tuple(
        dict.fromkeys(aliases.get(p.strip(), p.strip()) for p in text.split(",") if p.strip())
    )
    if not chosen or any(b not in BACKENDS for b in chosen):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)}; got {text!r}")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard",
        description="The dashboard and JSON API on a store of many jobs: page loads beside the "
        "bare SQL, and the plans of the statements they run.",
    )
    parser.add_argument(
        "--jobs",
        type=_count,
        default=1_000_000,
        help="jobs to fill the store with (default 1,000,000)",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=BACKENDS,
        help="comma-separated: sqlite, postgres (default both)",
    )
    parser.add_argument(
        "--repeat",
        type=_count,
        default=7,
        help="loads of each page; the median is reported (default 7)",
    )
    parser.add_argument(
        "--postgres-url",
        metavar="URL",
        help=f"default $CONVEYOR_TEST_POSTGRES_URL, else {DEFAULT_POSTGRES_URL}",
    )
    parser.add_argument(
        "--schema",
        default=SCHEMA,
        help=f"the PostgreSQL schema, dropped before and after (default {SCHEMA})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logging()
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no reason to wrap at 80 columns
        console = Console(width=160)
    status_console = Console(stderr=True)
    for backend in args.backends:
        with status_console.status(f"{backend}: starting") as status:
            report = run(
                backend,
                args.jobs,
                args.repeat,
                args.postgres_url,
                args.schema,
                progress=lambda text: status.update(text),
            )
        print_report(report, console)
        console.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
