"""SQLite connections: how they are opened (conveyor's pragmas, WAL, a file refused untouched
if it is not conveyor's), and which errors mean the file cannot serve now."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from conveyor.errors import BackendUnavailable, ConfigurationError, NotAConveyorDatabase
from conveyor.logging import get_logger

log = get_logger("conveyor.sqlite")

BUSY_TIMEOUT_S = 10.0
#: While another connection writes, a write transaction asks again about this often (seconds).
BEGIN_RETRY_S = 0.001
#: SQLite's result codes for "another connection holds the lock": busy, locked.
_BUSY_CODES = frozenset({5, 6})


def path_from_url(url: str) -> str:
    """`sqlite:///relative.db` or `sqlite:////absolute/path.db` to a file path."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigurationError(f"a SQLite URL looks like sqlite:///path/to/file.db, got {url!r}")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r}: conveyor needs a database file that several connections can share "
            "(use a temporary file instead of :memory:)"
        )
    return path


#: SQLite's result codes that mean the file cannot serve now: busy or locked past the busy
#: timeout, out of memory, a read-only file, an I/O error, a full disk, a file that cannot be
#: opened, a locking protocol error.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def unavailable(exc: BaseException) -> BackendUnavailable | None:
    """`exc` as BackendUnavailable if it means the store cannot serve now, else None."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised before SQLite was asked (a closed connection, say)
        busy = "locked" in str(exc) or "busy" in str(exc)
        return BackendUnavailable(f"SQLite: {exc}") if busy else None
    if code & 0xFF not in UNAVAILABLE_CODES:
        return None
    return BackendUnavailable(f"SQLite: {exc}")


def unavailable_error(exc: sqlite3.Error) -> BackendUnavailable:
    return unavailable(exc) or BackendUnavailable(f"SQLite: {exc}")


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced."""


def open_connection(path: str, url: str, synchronous: str, tables_sql: str) -> sqlite3.Connection:
    """A new connection to conveyor's file at `path`, with conveyor's pragmas (callers own it);
    a file that is not SQLite's, or holds other tables, is refused untouched."""
    parent = Path(path).parent
    if not parent.exists():
        raise ConfigurationError(f"{url!r}: folder {str(parent)!r} does not exist")
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
        factory=_Connection,
    )
    conn.row_factory = sqlite3.Row
    try:
        tables = {row[0] for row in conn.execute(tables_sql)}
    except sqlite3.DatabaseError as exc:
        conn.close()
        if (error := unavailable(exc)) is not None:
            raise error from exc
        raise NotAConveyorDatabase(f"{path!r} is not a SQLite database ({exc})") from None
    if tables and "conveyor_migrations" not in tables:
        # Checked before any pragma: a file that is not ours is left exactly as it was.
        conn.close()
        shown = ", ".join(sorted(tables)[:5])
        raise NotAConveyorDatabase(
            f"{path!r} holds other tables ({shown}) and no conveyor schema; "
            "give conveyor a database file of its own"
        )
    _use_wal(conn)
    try:
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Statement journals (for triggers) in memory: on disk they cost a temp file a write.
        conn.execute("PRAGMA temp_store = MEMORY")
        # Finishing a job releases (or cancels) the jobs waiting on it, whose finishing does
        # the same in turn: a trigger that fires itself through another table.
        conn.execute("PRAGMA recursive_triggers = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise unavailable_error(exc) from exc
    return conn


def begin_immediate(conn: sqlite3.Connection, gives_way: bool = False) -> None:
    """`BEGIN IMMEDIATE`: take the one write lock, waiting up to the busy timeout. SQLite's own
    busy wait sleeps longer the longer it has waited (up to a tenth of a second a try), so
    among several busy writers the one that has waited longest is the least likely to get in:
    a worker's heartbeat or outcome write could wait seconds. Here a write asks again about
    every millisecond; one that `gives_way` (an enqueue) keeps SQLite's own wait, so a storm
    of enqueuers leaves the lock to the workers' writes between its own."""
    if gives_way:
        conn.execute("BEGIN IMMEDIATE")
        return
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        _while_busy(conn, "BEGIN IMMEDIATE", BEGIN_RETRY_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new file to WAL. Connections opening a fresh file at once race for the
    switch, and SQLite answers the losers "database is locked" without waiting."""
    try:
        _while_busy(conn, "PRAGMA journal_mode = WAL", 0.01)
    except sqlite3.Error as exc:
        conn.close()
        raise unavailable_error(exc) from exc


def _while_busy(conn: sqlite3.Connection, sql: str, pause: float) -> None:
    """Run `sql`, asking again about every `pause` seconds while another connection holds the
    lock, for as long as a busy wait would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in _BUSY_CODES or time.monotonic() >= deadline:
                raise
        time.sleep(pause * (0.5 + random.random()))


def rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if SQLite has not done so itself (it does on a full disk or
    an I/O error): a second ROLLBACK would fail and hide the error that matters."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        # The connection is no good now; the error being raised is the one to report.
        log.warning("sqlite.rollback_failed", error=str(exc))


def statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
