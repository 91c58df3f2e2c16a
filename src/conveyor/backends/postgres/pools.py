"""Connections to PostgreSQL that cannot hang and cannot pile up.

- Every connection is bounded: `connect_timeout` to connect, `statement_timeout` on the server
  (set on each new session), TCP keepalives and `tcp_user_timeout` for a silent network, and a
  deadline kept by the client: a statement that outlives `statement_timeout` plus a margin has
  its socket shut down by the watchdog thread, so a frozen server backend or a dead peer ends
  the blocked read with an error instead of a wait without end.
- A pool is made once per process (under a lock; a forked child makes its own and never touches
  its parent's). Waiting for a pooled connection is bounded too. A wait that times out is a busy
  pool, not a broken one: the pool stays. Only errors that say the server went away, or stopped
  being a writable primary, replace the pool, at most once a second, so new connections reach
  the server (or the failover target) that now answers.
- Every error that means "the store cannot serve now" becomes `BackendUnavailable`, with the
  driver's error as its cause.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from conveyor.backends.postgres.drivers import json_as_text
from conveyor.config import Settings
from conveyor.errors import BackendUnavailable

#: SQLSTATE classes of errors that say the server cannot serve now: connection exceptions (08),
#: invalid transaction state (25: a read-only server), insufficient resources (53: too many
#: connections, disk full), operator intervention (57: shutdown, statement timeout) and system
#: errors (58: I/O).
UNAVAILABLE_CLASSES = frozenset({"08", "25", "53", "57", "58"})
#: After these the pool's connections are worth nothing: the server went away or is no longer a
#: writable primary (a failover). New connections reach whatever answers at the address now.
RECONNECT_STATES = frozenset({"25006", "57P01", "57P02", "57P03"})
#: A pool is replaced at most this often, however many callers saw it fail.
RECYCLE_EVERY_S = 1.0
#: How far past `statement_timeout` the client waits before it cuts the connection (the server
#: cancels the statement itself at `statement_timeout`, if it can still act).
DEADLINE_MARGIN_S = 1.0

P = TypeVar("P", psycopg_pool.ConnectionPool[Any], psycopg_pool.AsyncConnectionPool[Any])


def connect_kwargs(connect_timeout: float, statement_timeout: float) -> dict[str, Any]:
    """libpq settings for every connection conveyor makes (pooled, leader, listener)."""
    bound = max(1.0, statement_timeout)
    return {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
        # the OS process that holds the connection, for pg_stat_activity and for operators
        "application_name": f"conveyor:{os.getpid()}",
        # a peer that stopped answering is found on idle connections (the LISTEN one) too
        "keepalives": 1,
        "keepalives_idle": max(1, round(bound / 3)),
        "keepalives_interval": max(1, round(bound / 6)),
        "keepalives_count": 3,
        # data sent and not acknowledged for this long: the connection is dead
        "tcp_user_timeout": round(bound * 1000),
    }


def unavailable(exc: BaseException) -> BackendUnavailable | None:
    """`exc` as BackendUnavailable if it means the server cannot serve now, else None."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return BackendUnavailable(f"PostgreSQL: no connection free within the timeout ({exc})")
    if isinstance(exc, psycopg_pool.PoolClosed | psycopg.InterfaceError):
        return BackendUnavailable(f"PostgreSQL: {_text(exc)}")
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the client's own error, raised when the connection broke or never came.
        return _wrap(exc) if isinstance(exc, psycopg.OperationalError) else None
    return _wrap(exc) if state[:2] in UNAVAILABLE_CLASSES else None


def needs_new_connections(exc: BaseException) -> bool:
    """Whether the pool should be replaced after `exc` (see RECONNECT_STATES)."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return False  # a busy pool: its connections are fine
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError | psycopg.InternalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] == "08" or state in RECONNECT_STATES


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _wrap(exc: BaseException) -> BackendUnavailable:
    state = getattr(exc, "sqlstate", None)
    code = f" [{state}]" if state else ""
    return BackendUnavailable(f"PostgreSQL: {_text(exc)}{code}")


# -- the client's deadline --------------------------------------------------------------------


class Timer:
    """One statement's deadline, armed on the watchdog."""

    __slots__ = ("at", "conn", "fired", "seconds")

    def __init__(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], seconds: float
    ) -> None:
        self.conn = conn
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False

    def error(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"PostgreSQL did not answer within {self.seconds:g}s (statement_timeout); the "
            "connection was closed"
        )


class Watchdog:
    """One thread for the process that shuts down the socket of a connection whose statement
    ran past its deadline. Arming and disarming are a dict insert and delete under a lock; the
    thread looks at the armed timers a few times a second, and sleeps once it finds none armed
    (only then does arming wake it: a wake-up per call would cost a thread switch per call)."""

    CHECK_EVERY_S = 0.2

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # In a forked child the parent's thread is gone and its lock may have been held.
        self._lock = threading.Lock()
        self._armed: dict[int, Timer] = {}
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        #: the thread waits, with nothing armed, until the next arm wakes it
        self._asleep = False

    def arm(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], seconds: float
    ) -> Timer:
        timer = Timer(conn, seconds)
        with self._lock:
            if self._thread is None:
                self._start()
            if self._asleep:
                self._asleep = False
                self._wake.notify()
            self._armed[id(timer)] = timer
        return timer

    def disarm(self, timer: Timer) -> bool:
        """Stop the timer; True if it had already fired (the connection is cut: close it)."""
        with self._lock:
            self._armed.pop(id(timer), None)
            return timer.fired

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="conveyor-deadlines", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while True:
                if not self._armed:
                    self._asleep = True
                    self._wake.wait()
                    continue
                self._wake.wait(self.CHECK_EVERY_S)
                now = time.monotonic()
                for key, timer in list(self._armed.items()):
                    if timer.at <= now:
                        del self._armed[key]
                        timer.fired = True
                        _cut(timer.conn)


def _cut(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down both ways: the read blocked on it returns at once."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
    except (OSError, psycopg.Error):
        return  # closed meanwhile: nothing is waiting on it
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: the read has ended already
    finally:
        sock.close()


WATCHDOG = Watchdog()


# -- pools, once per process ------------------------------------------------------------------


class _Slot(Generic[P]):
    """The current pool of one kind, when it was last replaced, and the last failed open."""

    def __init__(self) -> None:
        self.pool: P | None = None
        self.pid = 0
        self.recycled_at = -math.inf
        self.failed: tuple[float, BackendUnavailable] | None = None

    def current(self) -> P | None:
        return self.pool if self.pool is not None and self.pid == os.getpid() else None

    def take(self, pool: P) -> None:
        self.pool, self.pid, self.failed = pool, os.getpid(), None

    def fail_fast(self, arrived: float) -> None:
        """An open failed while this caller waited for its turn: give it that answer rather
        than a second wait of its own (callers that come later try again)."""
        if self.failed is not None and self.failed[0] >= arrived:
            raise BackendUnavailable(str(self.failed[1])) from self.failed[1]

    def forget(self, pool: P) -> bool:
        """Drop `pool` if it is still the current one and was not replaced a moment ago."""
        if self.pool is not pool or time.monotonic() - self.recycled_at < RECYCLE_EVERY_S:
            return False
        self.pool, self.recycled_at = None, time.monotonic()
        return True


class SyncPools:
    """The blocking pool of one backend."""

    def __init__(
        self, make: Callable[[], psycopg_pool.ConnectionPool[Any]], timeout: float
    ) -> None:
        self._make = make
        self._timeout = timeout
        self._lock = threading.Lock()
        self._slot: _Slot[psycopg_pool.ConnectionPool[Any]] = _Slot()

    def get(self) -> psycopg_pool.ConnectionPool[Any]:
        pool = self._slot.current()
        if pool is not None:
            return pool
        arrived = time.monotonic()
        with self._lock:
            pool = self._slot.current()
            if pool is not None:
                return pool
            self._slot.fail_fast(arrived)
            fresh = self._make()
            try:
                # Wait for the first connection: a request that found none would make the pool
                # grow to two, and a pool hands its connections out in turn, which costs a
                # one-by-one caller about a tenth of its speed.
                fresh.open(wait=True, timeout=self._timeout)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                fresh.close(timeout=0)
                error = unavailable(exc) or BackendUnavailable(f"PostgreSQL: {_text(exc)}")
                self._slot.failed = (time.monotonic(), error)
                raise error from exc
            self._slot.take(fresh)
            return fresh

    def recycle(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        with self._lock:
            if not self._slot.forget(pool):
                return
        # Clients still waiting on it get PoolClosed and go round again on the new pool;
        # connections in use are closed as they come back.
        pool.close(timeout=0)

    def close(self) -> None:
        with self._lock:
            pool = self._slot.current()
            self._slot = _Slot()
        if pool is not None:
            pool.close()


class AsyncPools:
    """The async pool of one backend, on the event loop that made it."""

    def __init__(
        self,
        make: Callable[[], psycopg_pool.AsyncConnectionPool[Any]],
        timeout: float,
    ) -> None:
        self._make = make
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._slot: _Slot[psycopg_pool.AsyncConnectionPool[Any]] = _Slot()

    async def get(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # made on another event loop, which owns it (and its lock)
            self._loop, self._lock, self._slot = loop, asyncio.Lock(), _Slot()
        pool = self._slot.current()
        if pool is not None:
            return pool
        assert self._lock is not None
        arrived = time.monotonic()
        async with self._lock:
            pool = self._slot.current()
            if pool is not None:
                return pool
            self._slot.fail_fast(arrived)
            fresh = self._make()
            try:
                await fresh.open(wait=True, timeout=self._timeout)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                await fresh.close(timeout=0)
                error = unavailable(exc) or BackendUnavailable(f"PostgreSQL: {_text(exc)}")
                self._slot.failed = (time.monotonic(), error)
                raise error from exc
            self._slot.take(fresh)
            return fresh

    async def recycle(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        if not self._slot.forget(pool):
            return
        await pool.close(timeout=0)

    async def close(self) -> None:
        """Close the pool if it belongs to the running loop; forget it either way."""
        pool = self._slot.current()
        owned = self._loop is asyncio.get_running_loop()
        self._loop, self._lock, self._slot = None, None, _Slot()
        if pool is not None and owned:
            await pool.close()


class Connector:
    """How conveyor's connections are made: bounded (`connect_kwargs`), rows as dicts, JSON as
    text, and each new session set up (`statement_timeout`); pooled or of their own."""

    def __init__(self, url: str, settings: Settings, session_sql: str) -> None:
        self.url = url
        self.settings = settings
        self.session_sql = session_sql

    def kwargs(self) -> dict[str, Any]:
        return {
            **connect_kwargs(self.settings.connect_timeout, self.settings.statement_timeout),
            "row_factory": dict_row,
        }

    def _pool_options(self, name: str) -> dict[str, Any]:
        return {
            "kwargs": self.kwargs(),
            "min_size": 1,
            "max_size": self.settings.postgres_pool_size,
            # how long a caller waits for a free connection (a busy pool, not an outage)
            "timeout": self.settings.connect_timeout,
            "open": False,
            "name": name,
        }

    def make_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(
            self.url, configure=self._configure, **self._pool_options("conveyor-sync")
        )

    def make_apool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        return psycopg_pool.AsyncConnectionPool(
            self.url, configure=self._configure_async, **self._pool_options("conveyor-async")
        )

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        json_as_text(conn)
        conn.execute(self.session_sql)

    async def _configure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        json_as_text(conn)
        await conn.execute(self.session_sql)

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own (not pooled), set up as pooled ones are."""
        conn = await psycopg.AsyncConnection.connect(self.url, **self.kwargs())
        try:
            await self._configure_async(conn)
        except BaseException:
            await conn.close()
            raise
        return conn
