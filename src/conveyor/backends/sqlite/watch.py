"""Wake-ups on SQLite: `PRAGMA data_version` changes whenever another connection commits.

Where the kernel reports writes to files (inotify, on Linux), a waiter also hears of every
write to the file's WAL the moment it happens, so a commit wakes it at once; it still looks at
`data_version` now and then, in case a report never comes. Elsewhere it looks every few
milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import select
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.logging import get_logger

if TYPE_CHECKING:
    from conveyor.backends.sqlite.backend import SqliteEngine

log = get_logger("conveyor.sqlite")

#: How often an idle waiter looks at `PRAGMA data_version` (a read of shared memory, not disk)
#: where the kernel does not report writes.
WATCH_INTERVAL_S = 0.005
#: How often it looks where the kernel does: only in case a report is lost.
REPORTED_INTERVAL_S = 0.1
#: A write to the WAL comes a moment before its commit shows in `data_version` (the commit
#: is marked in shared memory after its pages are written, and that marking is no write the
#: kernel reports): after a report, look this often, this many times, for the commit.
SETTLE_S = 0.0005
SETTLE_LOOKS = 20


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


class WalWrites:
    """The kernel's report of each write to the database's WAL (inotify on the file's folder,
    so a WAL made again after it was removed is still heard)."""

    def __init__(self, path: str) -> None:
        from inotify_simple import INotify, flags

        folder, name = os.path.split(os.path.abspath(path))
        self._name = f"{name}-wal"
        self._inotify = INotify(nonblocking=True)
        try:
            self._inotify.add_watch(folder, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
        except OSError:
            self._inotify.close()
            raise

    @classmethod
    def open(cls, path: str) -> WalWrites | None:
        """The reports for the file at `path`, or None where the kernel gives none (not Linux,
        or no inotify watch left to take: then waiters look every few milliseconds)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            return cls(path)
        except OSError as exc:
            log.info("sqlite.polling", reason=f"no inotify watch: {exc}".strip())
            return None

    def fileno(self) -> int:
        fd: int = self._inotify.fileno()
        return fd

    def discard(self) -> None:
        """Drop the reports that arrived while nobody listened, unread."""
        while True:
            try:
                if not os.read(self.fileno(), 65536):
                    return
            except BlockingIOError:
                return

    def heard(self) -> bool:
        """Read the reports that arrived; whether one was of the WAL."""
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:  # another reader took them
            return False
        return any(event.name == self._name for event in events)

    def wait(self, timeout: float) -> bool:
        """Block until a report of the WAL arrives, or `timeout` passes; whether one did."""
        deadline = time.monotonic() + timeout
        while not self.heard():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([self.fileno()], [], [], remaining)
        return True

    def close(self) -> None:
        self._inotify.close()


class LoopReports:
    """The reports for one file on one event loop, shared by every waiter there (the worker,
    each event stream of the dashboard and the API): one inotify instance however many wait.
    A user has 128 by default (`fs.inotify.max_user_instances`), across all their processes.

    The loop reads the reports only while someone waits: a busy worker, which does not, is
    not woken at every commit of every other process."""

    _lock = threading.Lock()
    _all: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, LoopReports]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, writes: WalWrites) -> None:
        self.loop = loop
        self.path = path
        self.writes = writes
        self.waiters: set[asyncio.Event] = set()
        #: the waiters waiting now
        self.listening: set[asyncio.Event] = set()

    @classmethod
    def join(cls, path: str, heard: asyncio.Event) -> LoopReports | None:
        """Set `heard` at each report from now on; None where the kernel gives none."""
        loop = asyncio.get_running_loop()
        with cls._lock:
            on_loop = cls._all.setdefault(loop, {})
            shared = on_loop.get(path)
            if shared is None:
                writes = WalWrites.open(path)
                if writes is None:
                    return None
                shared = on_loop[path] = cls(loop, path, writes)
            shared.waiters.add(heard)
        return shared

    def leave(self, heard: asyncio.Event) -> None:
        self.stop_listening(heard)
        with self._lock:
            self.waiters.discard(heard)
            if self.waiters:
                return
            on_loop = self._all.get(self.loop, {})
            if on_loop.get(self.path) is self:
                del on_loop[self.path]
        self.writes.close()

    def listen(self, heard: asyncio.Event) -> None:
        """From now until `stop_listening`, set `heard` at each report. Call it before looking
        at the database: a commit after the look is then heard."""
        if not self.listening:
            self.writes.discard()
            self.loop.add_reader(self.writes.fileno(), self._on_reports)
        self.listening.add(heard)

    def stop_listening(self, heard: asyncio.Event) -> None:
        self.listening.discard(heard)
        if not self.listening:
            self.loop.remove_reader(self.writes.fileno())

    def _on_reports(self) -> None:
        if self.writes.heard():
            for heard in self.listening:
                heard.set()


class SyncWatch:
    """Waits, blocking, for a commit elsewhere: for one waiter (`job.wait()`)."""

    def __init__(self, store: SqliteEngine) -> None:
        self._version = DataVersion(store, store.connect())
        self._writes = WalWrites.open(store.path)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        settle = 0
        while not self._version.changed():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._writes is None:
                time.sleep(min(WATCH_INTERVAL_S, remaining))
            elif settle:
                settle -= 1
                time.sleep(min(SETTLE_S, remaining))
            elif self._writes.wait(min(REPORTED_INTERVAL_S, remaining)):
                settle = SETTLE_LOOKS

    def close(self) -> None:
        self._version.close()
        if self._writes is not None:
            self._writes.close()


class Watch:
    """Waits for a commit elsewhere, on the event loop: for the worker, or one subscriber."""

    def __init__(self, store: SqliteEngine) -> None:
        self.store = store
        self._version: DataVersion | None = None
        self._reports: LoopReports | None = None
        self._heard = asyncio.Event()

    async def start(self, run: Callable[..., Any]) -> None:
        self._version = DataVersion(self.store, await run(self.store.connect))
        self._reports = LoopReports.join(self.store.path, self._heard)

    async def wait(self, timeout: float) -> None:
        assert self._version is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle = 0
        reports = self._reports
        # Listening, and the flag cleared, before each look: a write reported after the look
        # wakes the wait at once.
        if reports is not None:
            reports.listen(self._heard)
        self._heard.clear()
        try:
            while not self._version.changed():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                if reports is None:
                    await asyncio.sleep(min(WATCH_INTERVAL_S, remaining))
                elif settle:
                    settle -= 1
                    await asyncio.sleep(min(SETTLE_S, remaining))
                else:
                    try:
                        async with asyncio.timeout(min(REPORTED_INTERVAL_S, remaining)):
                            await self._heard.wait()
                        settle = SETTLE_LOOKS
                    except TimeoutError:
                        pass
                self._heard.clear()
        finally:
            if reports is not None:
                reports.stop_listening(self._heard)

    async def close(self) -> None:
        if self._version is not None:
            self._version.close()
        if self._reports is not None:
            reports, self._reports = self._reports, None
            reports.leave(self._heard)
