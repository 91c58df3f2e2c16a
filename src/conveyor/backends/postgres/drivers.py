"""The two drivers of plans on psycopg: blocking and async. Each sends a plan's statements (a
list of them in one pipeline, an `Atomic` part in a transaction of its own) and hands the plan
their rows, or their row counts."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowMaker, dict_row
from psycopg.types.string import TextLoader

from conveyor.backends.plan import Atomic, Plan, Stmt
from conveyor.job import JOB_COLUMNS, TIME_COLUMNS, Job

T = TypeVar("T")


def json_as_text(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    # JSON columns come back as text, decoded in one place (Job.from_values) for every backend:
    # a JSON string and the text of a JSON document would otherwise look alike.
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)


#: The `{job_columns}` of a query, the jobs table as `j`: the columns of a `Job` in order,
#: times as epoch seconds. Read so, a job row costs half (no datetimes made and converted,
#: no other column read, no dict per row).
JOB_COLUMN_LIST = ", ".join(
    f"extract(epoch FROM j.{name})::float8 AS {name}" if name in TIME_COLUMNS else f"j.{name}"
    for name in JOB_COLUMNS
)


def _job_rows(cur: Any) -> RowMaker[Job]:
    """psycopg's row factory for a `Stmt` whose rows are jobs."""
    if cur.description is None:  # no rows: never called
        return Job.from_values
    return Job.reader([column.name for column in cur.description])


def _cursor(conn: Any, stmt: Stmt) -> Any:
    return conn.cursor(row_factory=_job_rows if stmt.jobs else dict_row)


def _result(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> Any:
    return cur.rowcount if cur.description is None else None


def drive_sync(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    try:
        step = next(plan)
        while True:
            if isinstance(step, Atomic):
                with conn.transaction():
                    result: Any = drive_sync(conn, step.plan)
                step = plan.send(result)
            elif isinstance(step, list):
                results = []
                with conn.pipeline():
                    cursors = [_cursor(conn, stmt) for stmt in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = _cursor(conn, step)
                cur.execute(step.sql, step.params)
                rowcount = _result(cur)
                step = plan.send(cur.fetchall() if rowcount is None else rowcount)
    except StopIteration as done:
        value: T = done.value
        return value


async def drive_async(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    try:
        step = next(plan)
        while True:
            if isinstance(step, Atomic):
                async with conn.transaction():
                    result: Any = await drive_async(conn, step.plan)
                step = plan.send(result)
            elif isinstance(step, list):
                results = []
                async with conn.pipeline():
                    cursors = [_cursor(conn, stmt) for stmt in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        await cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(await cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = _cursor(conn, step)
                await cur.execute(step.sql, step.params)
                rowcount = _result(cur)
                step = plan.send(await cur.fetchall() if rowcount is None else rowcount)
    except StopIteration as done:
        value: T = done.value
        return value
