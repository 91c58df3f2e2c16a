"""Wake-ups for idle workers: LISTEN on a connection of its own, reconnecting after the server
restarts; polling at `poll_interval` where LISTEN is not available (PgBouncer in transaction
mode) or turned off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg

from conveyor.backends.postgres.pools import unavailable
from conveyor.logging import Outage, get_logger

log = get_logger("conveyor.postgres")

RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class SyncListener:
    """A blocking LISTEN for one waiter (`job.wait()`): returns on a notification or after the
    timeout; where LISTEN is off or fails, it just sleeps (the caller looks again)."""

    def __init__(
        self, url: str, connect_kwargs: dict[str, Any], listen_sql: str, *, listen: bool
    ) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        if not listen:
            return
        try:
            self._conn = psycopg.connect(url, **connect_kwargs)
            self._conn.execute(listen_sql)
        except psycopg.Error as exc:
            log.warning("listener.polling", reason=f"LISTEN failed: {exc}".strip())
            self.close()

    def wait(self, timeout: float) -> None:
        if self._conn is None:
            time.sleep(timeout)
            return
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.OperationalError as exc:
            log.warning("listener.disconnected", error=str(exc).strip())
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class Listener:
    def __init__(
        self,
        url: str,
        connect_kwargs: dict[str, Any],
        channel: str,
        listen_sql: str,
        *,
        listen: bool,
        poll_interval: float,
    ) -> None:
        self._url = url
        self._kwargs = connect_kwargs
        self._channel = channel
        self._listen_sql = listen_sql
        self._poll_interval = poll_interval
        self._event = asyncio.Event()
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        if listen:
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            log.info("listener.polling", reason="LISTEN turned off", interval_s=poll_interval)

    async def wait(self, timeout: float) -> None:
        """Return when a notification arrives, or after `timeout` (at most the poll interval
        while not listening)."""
        if not self._listening:
            timeout = min(timeout, self._poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    async def _run(self) -> None:
        failures = 0
        outage = Outage(log, "listener.connection", channel=self._channel)
        while True:
            if failures:
                delay = RECONNECT_DELAYS[min(failures - 1, len(RECONNECT_DELAYS) - 1)]
                await asyncio.sleep(delay)
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, **self._kwargs)
            except psycopg.Error as exc:
                failures += 1
                outage.failed(unavailable(exc) or exc)
                continue
            try:
                await conn.execute(self._listen_sql)
                outage.recovered()
                failures = 0
                self._listening = True
                self._event.set()  # anything may have happened while we were away
                async for _ in conn.notifies():
                    self._event.set()
            except psycopg.Error as exc:
                error = unavailable(exc)
                if error is None and not self._listening:
                    # LISTEN itself is refused (PgBouncer in transaction mode, say): poll.
                    log.warning(
                        "listener.polling",
                        reason=f"LISTEN failed: {exc}".strip(),
                        interval_s=self._poll_interval,
                    )
                    return
                failures += 1
                outage.failed(error or exc)  # the server went away, or cannot serve now
            finally:
                self._listening = False
                await conn.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
