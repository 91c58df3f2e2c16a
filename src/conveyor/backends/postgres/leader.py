"""The leader's session: a connection of its own, not pooled, on which leadership is taken and
renewed (the lease row names its server process, so a leader whose session is gone is replaced
at once). Opened when first needed, closed when leadership is lost or given up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from conveyor.backends.plan import Stmt
from conveyor.backends.postgres.pools import WATCHDOG, unavailable


class LeaderSession:
    def __init__(
        self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]], deadline: float
    ) -> None:
        self._connect = connect
        self._deadline = deadline
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def open(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def execute(self, stmt: Stmt) -> Any:
        """One statement, under the same deadline as pooled ones: its rows, or its row count.
        Any error closes the session (the next statement opens a new one)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            return await self._on(self._conn, stmt)
        except BaseException:
            await self.close()
            raise

    async def _on(self, conn: psycopg.AsyncConnection[Any], stmt: Stmt) -> Any:
        timer = WATCHDOG.arm(conn, self._deadline)
        try:
            cur = await conn.execute(stmt.sql, stmt.params)
            return await cur.fetchall() if cur.description is not None else cur.rowcount
        except psycopg.Error as exc:
            if WATCHDOG.disarm(timer):
                raise timer.error() from exc
            error = unavailable(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            WATCHDOG.disarm(timer)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
