"""PostgreSQL that cannot serve now, on the test server: every such error is BackendUnavailable
with its cause, no call waits without end, and the pools come through it (a busy pool is kept,
a read-only server makes new connections, a crowd of threads queues for a bounded pool).

The faults that take the whole server down or change its settings run in tests/faults/, on a
cluster of their own."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import conveyor
from conftest import POSTGRES_URL, drop_schema, postgres_available, unreachable


def sql(query: str, params: Any = None, url: str = POSTGRES_URL) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def my_backends() -> list[int]:
    """Server pids of this process's conveyor connections (application_name conveyor:<pid>)."""
    rows = sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [f"conveyor:{os.getpid()}"]
    )
    return [pid for (pid,) in rows]


@pytest.fixture
def schema() -> Iterator[str]:
    postgres_available()
    name = f"test_out_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(name)


@pytest.fixture
def make_app(schema: str) -> Iterator[Callable[..., conveyor.App]]:
    made: list[conveyor.App] = []

    def make(url: str = POSTGRES_URL, **kwargs: Any) -> conveyor.App:
        kwargs.setdefault("postgres_schema", schema)
        app = conveyor.App(url, **kwargs)
        made.append(app)

        @app.task(name="noop")
        def noop(n: int = 0) -> int:
            return n

        return app

    yield make
    for app in made:
        app.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own on the test server (its settings are the test's to change)."""
    postgres_available()
    name = f"conveyor_out_{uuid.uuid4().hex[:10]}"
    sql(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_connections_name_the_process_that_holds_them(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app()
    app.migrate()
    app.enqueue("noop")
    assert my_backends(), "no connection named conveyor:<pid>"


def test_a_read_only_database_is_an_outage_and_new_connections_end_it(
    make_app: Callable[..., conveyor.App], database: str
) -> None:
    """What a failover to a replica looks like: writes are refused with BackendUnavailable (the
    server's error as its cause); once the server takes writes again, the pool's connections
    are replaced and enqueue works again, without a restart."""
    app = make_app(database)
    app.migrate()
    before = app.enqueue("noop")
    sql(
        f'ALTER DATABASE "{conninfo_to_dict(database)["dbname"]}" '
        "SET default_transaction_read_only = on"
    )
    sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        [conninfo_to_dict(database)["dbname"]],
    )

    failures = []
    for _ in range(3):
        with pytest.raises(conveyor.BackendUnavailable) as refused:
            app.enqueue("noop")
        failures.append(refused.value)
        time.sleep(0.2)
    assert any(isinstance(f.__cause__, psycopg.errors.ReadOnlySqlTransaction) for f in failures)
    assert any("read-only" in str(f) for f in failures)

    sql(
        f'ALTER DATABASE "{conninfo_to_dict(database)["dbname"]}" '
        "RESET default_transaction_read_only"
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            after = app.enqueue("noop")
            break
        except conveyor.BackendUnavailable:
            assert time.monotonic() < deadline, "enqueue did not recover"
            time.sleep(0.1)
    assert after.id > before.id


def test_a_statement_past_statement_timeout_is_an_outage(
    make_app: Callable[..., conveyor.App], schema: str
) -> None:
    app = make_app(statement_timeout=0.5)
    app.migrate()
    with psycopg.connect(POSTGRES_URL) as locker:
        locker.execute(f"LOCK TABLE {schema}.jobs IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(conveyor.BackendUnavailable) as timed_out:
            app.enqueue("noop")
        took = time.monotonic() - started
    assert isinstance(timed_out.value.__cause__, psycopg.errors.QueryCanceled)
    assert took < 5, f"waited {took:.1f}s for a 0.5 s statement timeout"
    assert app.enqueue("noop").id  # the same pool serves again at once


def test_a_busy_pool_times_out_without_closing(
    make_app: Callable[..., conveyor.App], schema: str
) -> None:
    """Every connection busy: a caller that waits past connect_timeout gets BackendUnavailable,
    and the pool — shared by every thread — stays: the callers in it carry on."""
    app = make_app(postgres_pool_size=1, connect_timeout=1, statement_timeout=30)
    app.migrate()
    app.enqueue("noop")
    [backend_pid] = my_backends()
    stored: list[conveyor.Job] = []
    with psycopg.connect(POSTGRES_URL) as locker:
        locker.execute(f"LOCK TABLE {schema}.jobs IN ACCESS EXCLUSIVE MODE")
        holder = threading.Thread(target=lambda: stored.append(app.enqueue("noop", args=[1])))
        holder.start()  # takes the only connection and waits for the lock
        time.sleep(0.3)
        with pytest.raises(conveyor.BackendUnavailable, match="no connection free"):
            app.enqueue("noop", args=[2])
    holder.join(10)
    assert [job.args for job in stored] == [[1]], "the waiting call did not finish"
    assert app.enqueue("noop", args=[3]).id
    assert my_backends() == [backend_pid], "the pool was closed and made again"


def test_a_thousand_threads_queue_for_a_small_pool(
    make_app: Callable[..., conveyor.App],
) -> None:
    app = make_app(postgres_pool_size=4, connect_timeout=30)
    app.migrate()
    errors: list[BaseException] = []
    done: list[int] = []
    start = threading.Barrier(200)

    def enqueue_five() -> None:
        try:
            start.wait()
            for n in range(5):
                done.append(app.enqueue("noop", args=[n]).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_five) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(done)) == 1000
    assert len(my_backends()) <= 4


def test_a_forked_child_makes_its_own_pool(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app()
    app.migrate()
    parent_job = app.enqueue("noop")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: enqueue through the inherited App, report the job id
        try:
            job = app.enqueue("noop", args=[7])
            os.write(write, str(job.id).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    child_job_id = int(os.read(read, 32) or b"0")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert app.get_job(child_job_id).args == [7]
    assert app.enqueue("noop").id > max(parent_job.id, child_job_id)  # the parent's pool works


def test_a_frozen_server_backend_is_cut_off_at_the_deadline(
    make_app: Callable[..., conveyor.App],
) -> None:
    """The server process serving the connection stops (a pause, a stuck disk): the server can
    cancel nothing, and the kernel keeps the TCP connection up. The client cuts the connection
    at statement_timeout plus a second, and the next call gets a fresh one."""
    app = make_app(statement_timeout=0.5, postgres_pool_size=1)
    app.migrate()
    app.enqueue("noop")
    [frozen] = my_backends()
    try:
        os.kill(frozen, signal.SIGSTOP)
    except PermissionError as exc:
        unreachable("signals to the PostgreSQL server's processes (needs root)", exc)
    try:
        started = time.monotonic()
        with pytest.raises(conveyor.BackendUnavailable, match="did not answer within"):
            app.enqueue("noop")
        took = time.monotonic() - started
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert took < 5, f"the call waited {took:.1f}s"
    assert app.enqueue("noop").id
    assert frozen not in my_backends()
