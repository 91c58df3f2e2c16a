"""Wake-ups on SQLite: `PRAGMA data_version` changes whenever another connection commits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.backends.sqlite.backend import SqliteEngine

#: How often an idle worker looks at `PRAGMA data_version` (a read of shared memory, not disk).
WATCH_INTERVAL_S = 0.005


class DataVersion:
    """A connection of its own whose `PRAGMA data_version` changes whenever any other
    connection, in this process or another, commits (a read of the WAL's shared memory)."""

    def __init__(self, store: SqliteEngine, conn: sqlite3.Connection) -> None:
        self.store = store
        self._conn: sqlite3.Connection | None = conn
        self._seen = store.data_version(conn)

    def changed(self) -> bool:
        """Whether someone committed since the last look (True when it cannot tell)."""
        if self._conn is None:
            return True
        try:
            version = self.store.data_version(self._conn)
        except sqlite3.OperationalError:
            return True
        if version == self._seen:
            return False
        self._seen = version
        return True

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class SyncWatch:
    """Waits, blocking, for a commit elsewhere: for one waiter (`job.wait()`)."""

    def __init__(self, store: SqliteEngine) -> None:
        self._version = DataVersion(store, store.connect())

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._version.changed():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(WATCH_INTERVAL_S, remaining))

    def close(self) -> None:
        self._version.close()


class Watch:
    """Waits for a commit elsewhere, on the event loop: for the worker, or one subscriber."""

    def __init__(self, store: SqliteEngine) -> None:
        self.store = store
        self._version: DataVersion | None = None

    async def start(self, run: Callable[..., Any]) -> None:
        self._version = DataVersion(self.store, await run(self.store.connect))

    async def wait(self, timeout: float) -> None:
        assert self._version is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._version.changed():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(WATCH_INTERVAL_S, remaining))

    async def close(self) -> None:
        if self._version is not None:
            self._version.close()
