"""The two drivers of plans on psycopg: blocking and async. Each sends a plan's statements (a
list of them in one pipeline, an `Atomic` part in a transaction of its own) and hands the plan
their rows, or their row counts."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from conveyor.backends.plan import Atomic, Plan

T = TypeVar("T")


def json_as_text(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    # JSON columns come back as text, decoded in one place (Job.from_row) for every backend:
    # a JSON string and the text of a JSON document would otherwise look alike.
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)


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
                    cursors = [conn.cursor(row_factory=dict_row) for _ in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = conn.cursor(row_factory=dict_row)
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
                    cursors = [conn.cursor(row_factory=dict_row) for _ in step]
                    for cur, stmt in zip(cursors, step, strict=True):
                        await cur.execute(stmt.sql, stmt.params)
                for cur in cursors:
                    rowcount = _result(cur)
                    results.append(await cur.fetchall() if rowcount is None else rowcount)
                step = plan.send(results)
            else:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(step.sql, step.params)
                rowcount = _result(cur)
                step = plan.send(await cur.fetchall() if rowcount is None else rowcount)
    except StopIteration as done:
        value: T = done.value
        return value
