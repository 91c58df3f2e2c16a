"""What only PostgreSQL gives, against the real server: transactional enqueue, bulk enqueue past
the parameter limit, migrations (once, concurrently, down and up again, refusing foreign
schemas), the database's clock, LISTEN/NOTIFY wake-ups and advisory-lock leadership.

Every test gets a schema of its own, dropped afterwards. The server is never stopped here.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import psycopg.postgres
import pytest
import sqlalchemy
from psycopg.adapt import AdaptersMap, PyFormat
from psycopg.types.array import ListBinaryDumper
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import conveyor
import conveyor.clock
from conftest import POSTGRES_URL, drop_schema, postgres_available  # tests/conftest.py
from conveyor import JobState
from conveyor.backends.postgres import arrays
from conveyor.backends.postgres.backend import MIGRATIONS
from conveyor.testing import running_worker

worker_module = sys.modules["conveyor.worker.worker"]

DEADLINE_S = 20.0
#: Far longer than any deadline below: a worker that waits this long between looks can only
#: meet a deadline if something woke it.
NEVER_S = 120.0
#: How far off the worker machine's clock is in the clock tests: far outside every bound.
SKEW_S = 2 * 3600.0

#: Every migration, as `conveyor migrate` applies them to a fresh schema.
VERSIONS = [m.version for m in MIGRATIONS]
NAMED_VERSIONS = [(m.version, m.name) for m in MIGRATIONS]


# -- helpers ---------------------------------------------------------------------------------


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (autocommit): an outside observer."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def scalar(query: str, params: Any = None) -> Any:
    return sql(query, params)[0][0]


def server_now() -> float:
    return float(scalar("SELECT extract(epoch FROM now())::float8"))


def tables(schema: str) -> set[str]:
    rows = sql("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])
    return {r[0] for r in rows}


def schema_exists(schema: str) -> bool:
    return bool(scalar("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]))


def listening_sessions(schema: str) -> int:
    """Sessions whose last statement was conveyor's LISTEN on this schema's channel."""
    return int(
        scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            [f'LISTEN "{schema}_jobs"'],
        )
    )


def schema_dump(schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a migration creates in the schema, as catalog rows without OIDs."""
    ns = {"s": schema}
    return {
        "columns": sql(
            """SELECT table_name, ordinal_position, column_name, data_type, is_nullable,
                      column_default, is_identity, identity_generation
               FROM information_schema.columns WHERE table_schema = %(s)s
               ORDER BY table_name, ordinal_position""",
            ns,
        ),
        "relations": sql(
            """SELECT relname, relkind, reloptions FROM pg_class
               WHERE relnamespace = %(s)s::regnamespace ORDER BY relname""",
            ns,
        ),
        "constraints": sql(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = %(s)s::regnamespace ORDER BY 1, 2""",
            ns,
        ),
        "indexes": sql(
            """SELECT tablename, indexname, indexdef FROM pg_indexes
               WHERE schemaname = %(s)s ORDER BY 1, 2""",
            ns,
        ),
        "triggers": sql(
            """SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
               FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal
               ORDER BY 1, 2""",
            ns,
        ),
        "functions": sql(
            """SELECT proname, pg_get_function_identity_arguments(oid), pg_get_functiondef(oid)
               FROM pg_proc WHERE pronamespace = %(s)s::regnamespace ORDER BY 1, 2""",
            ns,
        ),
    }


async def until(check: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


def skew_machine_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make this machine's wall clock, as conveyor's SystemClock reads it, `seconds` off."""
    real = time.time
    monkeypatch.setattr(
        conveyor.clock, "time", types.SimpleNamespace(time=lambda: real() + seconds)
    )


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def schema() -> Iterator[str]:
    postgres_available()
    name = f"test_pg_{uuid.uuid4().hex[:12]}"
    yield name
    drop_schema(name)


@pytest.fixture
async def new_app(schema: str) -> AsyncIterator[Callable[..., conveyor.App]]:
    """Apps on the test's schema (not migrated); each is closed in the test's event loop."""
    made: list[conveyor.App] = []

    def make(**kwargs: Any) -> conveyor.App:
        kwargs.setdefault("postgres_schema", schema)
        made.append(conveyor.App(POSTGRES_URL, **kwargs))
        return made[-1]

    yield make
    for app in made:
        await app.close_async()


@pytest.fixture
def app(new_app: Callable[..., conveyor.App]) -> conveyor.App:
    app = new_app()
    assert app.migrate() == VERSIONS
    return app


@pytest.fixture
def runs(app: conveyor.App) -> list[Any]:
    """The arguments of every `record` job a worker of `app` ran."""
    seen: list[Any] = []

    @app.task(name="record")
    def record(value: Any) -> Any:
        seen.append(value)
        return value

    return seen


@pytest.fixture
def orders(schema: str) -> Iterator[str]:
    """The application's own table, in a schema of its own: `<schema>_shop.orders`."""
    shop = f"{schema}_shop"
    sql(f"CREATE SCHEMA {shop}")
    sql(f"CREATE TABLE {shop}.orders (id int PRIMARY KEY)")
    yield f"{shop}.orders"
    drop_schema(shop)


# -- transactional enqueue -------------------------------------------------------------------


def test_sync_transactional_enqueue_commits_with_the_callers_transaction(
    app: conveyor.App, runs: list[Any], schema: str, orders: str
) -> None:
    record = app.get_task("record")
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(f"INSERT INTO {orders} VALUES (42)")
        job = record.configure(connection=conn).enqueue(42)
        assert job.id is not None and job.state is JobState.QUEUED
        # uncommitted: no other connection sees it, so no worker can run it
        with pytest.raises(conveyor.JobNotFound):
            app.get_job(job.id)
        assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 0
        app.run_worker(burst=True)
        assert runs == []
        conn.commit()

    assert scalar(f"SELECT count(*) FROM {orders}") == 1  # the order and its job, together
    assert app.get_job(job.id).state is JobState.QUEUED
    assert [h.to_state for h in app.job_history(job.id)] == [JobState.QUEUED]
    app.run_worker(burst=True)
    assert runs == [42]
    assert job.refresh().state is JobState.SUCCEEDED and job.result == 42


@pytest.mark.parametrize("how", ["rollback", "exception in conn.transaction()"])
def test_sync_transactional_enqueue_rolled_back_leaves_no_job(
    app: conveyor.App, runs: list[Any], schema: str, orders: str, how: str
) -> None:
    record = app.get_task("record")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        if how == "rollback":
            conn.autocommit = False
            conn.execute(f"INSERT INTO {orders} VALUES (1)")
            job = record.configure(connection=conn).enqueue(1)
            conn.rollback()
        else:
            with pytest.raises(ZeroDivisionError), conn.transaction():
                conn.execute(f"INSERT INTO {orders} VALUES (1)")
                job = record.configure(connection=conn).enqueue(1)
                jobs = record.configure(connection=conn).enqueue_many([2, 3])
                assert len(jobs) == 2
                1 / 0  # noqa: B018 - the application's own failure, after the enqueue

    assert scalar(f"SELECT count(*) FROM {orders}") == 0
    with pytest.raises(conveyor.JobNotFound):
        app.get_job(job.id)
    assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 0
    assert scalar(f"SELECT count(*) FROM {schema}.job_history") == 0
    app.run_worker(burst=True)
    assert runs == []


async def test_async_transactional_enqueue_commit_and_rollback(
    app: conveyor.App, runs: list[Any], schema: str
) -> None:
    record = app.get_task("record")
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as aconn:
        kept = await record.configure(connection=aconn).enqueue_async("kept")
        more = await record.configure(connection=aconn).enqueue_many_async(["also kept"])
        with pytest.raises(conveyor.JobNotFound):
            await app.get_job_async(kept.id)
        await app.run_worker_async(burst=True)
        assert runs == []
        await aconn.commit()

        dropped = await record.configure(connection=aconn).enqueue_async("dropped")
        await aconn.rollback()

    assert (await app.get_job_async(kept.id)).state is JobState.QUEUED
    assert (await app.get_job_async(more[0].id)).state is JobState.QUEUED
    with pytest.raises(conveyor.JobNotFound):
        await app.get_job_async(dropped.id)
    assert scalar(f"SELECT count(*) FROM {schema}.job_history WHERE job_id = %s", [dropped.id]) == 0

    await app.run_worker_async(burst=True)
    assert sorted(runs) == ["also kept", "kept"]
    assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 2


async def test_a_connection_of_the_wrong_kind_is_refused(
    app: conveyor.App, runs: list[Any], schema: str
) -> None:
    record = app.get_task("record")
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as aconn:
        with pytest.raises(conveyor.ValidationError, match=r"needs a psycopg\.Connection"):
            record.configure(connection=aconn).enqueue(1)
        with pytest.raises(conveyor.ValidationError, match=r"needs a psycopg\.Connection"):
            record.configure(connection=aconn).enqueue_many([1, 2])
    with psycopg.connect(POSTGRES_URL) as conn:
        with pytest.raises(conveyor.ValidationError, match=r"needs a psycopg\.AsyncConnection"):
            await record.configure(connection=conn).enqueue_async(1)
        with pytest.raises(conveyor.ValidationError, match=r"needs a psycopg\.AsyncConnection"):
            await record.configure(connection=conn).enqueue_many_async([1])
    other = sqlite3.connect(":memory:")
    try:
        with pytest.raises(conveyor.ValidationError, match=r"psycopg"):
            record.configure(connection=other).enqueue(1)
    finally:
        other.close()
    assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 0


# -- through SQLAlchemy ----------------------------------------------------------------------

#: The test server, as SQLAlchemy names it with psycopg 3 as the driver.
SQLALCHEMY_URL = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.parametrize("through", ["Session", "Connection"])
def test_enqueue_inside_a_sqlalchemy_transaction_commits_and_rolls_back_with_it(
    app: conveyor.App, runs: list[Any], schema: str, orders: str, through: str
) -> None:
    record = app.get_task("record")
    engine = sqlalchemy.create_engine(SQLALCHEMY_URL)
    try:
        for value, commit in ((1, False), (2, True)):
            if through == "Session":
                with Session(engine) as session:
                    session.execute(sqlalchemy.text(f"INSERT INTO {orders} VALUES ({value})"))
                    job = record.configure(connection=session).enqueue(value)
                    # not committed: nobody else sees it
                    assert (
                        scalar(f"SELECT count(*) FROM {schema}.jobs WHERE id = %s", [job.id]) == 0
                    )
                    session.commit() if commit else session.rollback()
            else:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text(f"INSERT INTO {orders} VALUES ({value})"))
                    job = record.configure(connection=conn).enqueue_many([value])[0]
                    conn.commit() if commit else conn.rollback()
            if commit:
                kept = job
            else:
                dropped = job
    finally:
        engine.dispose()

    assert sql(f"SELECT id FROM {orders}") == [(2,)]  # each order with its job, or neither
    with pytest.raises(conveyor.JobNotFound):
        app.get_job(dropped.id)
    assert app.get_job(kept.id).state is JobState.QUEUED
    app.run_worker(burst=True)
    assert runs == [2]


@pytest.mark.parametrize("through", ["AsyncSession", "AsyncConnection"])
async def test_enqueue_inside_a_sqlalchemy_async_transaction_commits_and_rolls_back_with_it(
    app: conveyor.App, runs: list[Any], schema: str, orders: str, through: str
) -> None:
    record = app.get_task("record")
    engine = create_async_engine(SQLALCHEMY_URL)
    try:
        jobs = {}
        for value, commit in ((1, False), (2, True)):
            if through == "AsyncSession":
                async with AsyncSession(engine) as session:
                    await session.execute(sqlalchemy.text(f"INSERT INTO {orders} VALUES ({value})"))
                    jobs[value] = await record.configure(connection=session).enqueue_async(value)
                    await (session.commit() if commit else session.rollback())
            else:
                async with engine.connect() as conn:
                    await conn.execute(sqlalchemy.text(f"INSERT INTO {orders} VALUES ({value})"))
                    jobs[value] = await record.configure(connection=conn).enqueue_async(value)
                    await (conn.commit() if commit else conn.rollback())
    finally:
        await engine.dispose()

    assert sql(f"SELECT id FROM {orders}") == [(2,)]
    with pytest.raises(conveyor.JobNotFound):
        await app.get_job_async(jobs[1].id)
    await app.run_worker_async(burst=True)
    assert runs == [2]


async def test_a_sqlalchemy_engine_on_another_driver_or_of_the_wrong_kind_is_refused(
    app: conveyor.App, runs: list[Any], schema: str, tmp_path: Any
) -> None:
    record = app.get_task("record")
    other = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    engine = sqlalchemy.create_engine(SQLALCHEMY_URL)
    aengine = create_async_engine(SQLALCHEMY_URL)
    try:
        with (
            Session(other) as session,
            pytest.raises(conveyor.ValidationError, match=r"uses sqlite\+pysqlite"),
        ):
            record.configure(connection=session).enqueue(1)
        with (
            Session(engine) as session,
            pytest.raises(conveyor.ValidationError, match=r"use enqueue\(\)"),
        ):
            await record.configure(connection=session).enqueue_async(1)
        async with AsyncSession(aengine) as asession:
            with pytest.raises(conveyor.ValidationError, match=r"use enqueue_async\(\)"):
                record.configure(connection=asession).enqueue(1)
    finally:
        other.dispose()
        engine.dispose()
        await aengine.dispose()
    assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 0


async def test_sqlite_refuses_an_enqueue_inside_a_callers_connection(tmp_path: Any) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path / 'jobs.db'}")

    @app.task(name="noop")
    def noop() -> None: ...

    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        with pytest.raises(conveyor.ValidationError, match="needs PostgreSQL"):
            noop.configure(connection=conn).enqueue()
        with pytest.raises(conveyor.ValidationError, match="needs PostgreSQL"):
            await noop.configure(connection=conn).enqueue_async()
        assert app.list_jobs() == []
    finally:
        conn.close()
        await app.close_async()


# -- bulk enqueue ----------------------------------------------------------------------------


def test_enqueue_many_of_100_000_jobs_in_one_call(app: conveyor.App, schema: str) -> None:
    @app.task(name="bulk")
    def bulk(n: int) -> None: ...

    count = 100_000  # each job sends 9 values: far past the 65,535 bind parameters of a statement
    jobs = bulk.enqueue_many(range(count))

    assert len(jobs) == count
    assert len({j.id for j in jobs}) == count
    assert all(j.state is JobState.QUEUED for j in jobs)
    # each handle's id is the stored row that carries that handle's arguments
    stored = dict(sql(f"SELECT id, (args->>0)::int FROM {schema}.jobs"))
    assert stored == {j.id: j.args[0] for j in jobs}
    assert sorted(stored.values()) == list(range(count))
    assert app.queue_stats() == {"default": {JobState.QUEUED: count}}
    assert sql(
        f"""SELECT count(*), count(DISTINCT job_id) FROM {schema}.job_history
            WHERE from_state IS NULL AND to_state = 'queued'"""
    ) == [(count, count)]
    assert scalar(f"SELECT count(*) FROM {schema}.job_history") == count


@pytest.mark.parametrize(
    ("kind", "cast", "values"),
    [
        (arrays.Texts, "text", ["a", None, "é€😀", "", '{"k":[1]}']),
        (arrays.Texts, "text", ["default"] * 5),
        (arrays.Texts, "text", [None] * 3),
        (arrays.Texts, "text", []),
        (arrays.Ints, "int", [1, None, -5, 2**31 - 1, -(2**31)]),
        (arrays.Ints, "int", [0, 0, 0]),
        (arrays.BigInts, "bigint", [1, 2**40, None, -(2**63)]),
        (arrays.Floats, "float8", [1.5, None, 0.0, -2.0, float("inf"), 1e-300]),
        (arrays.Floats, "float8", [None, None]),
        (arrays.Bools, "bool", [True, False, None]),
        (arrays.Bools, "bool", [False] * 4),
    ],
)
def test_batch_columns_reach_the_server_as_sent(kind: Any, cast: str, values: list[Any]) -> None:
    """The batch statements' arrays, packed by conveyor (arrays.py): what PostgreSQL reads is
    what was sent: NULLs, one value repeated, no value, text beyond ASCII, the integer ends. A
    connection whose adapters lack conveyor's dumpers sends the same array, through psycopg's
    list dumper."""
    postgres_available()
    plain = AdaptersMap(types=psycopg.postgres.types)
    psycopg.postgres.register_default_adapters(plain)
    query = f"SELECT %b::{cast}[], cardinality(%b::{cast}[]), (%b::{cast}[])::text"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        got, count, text = conn.execute(query, [kind(values)] * 3).fetchone()  # type: ignore[misc]
    with psycopg.connect(POSTGRES_URL, autocommit=True, context=plain) as conn:
        assert conn.adapters.get_dumper(kind, PyFormat.BINARY) is ListBinaryDumper
        [fallback] = conn.execute(f"SELECT (%b::{cast}[])::text", [kind(values)]).fetchone()  # type: ignore[misc]
    assert (got, count) == (values, len(values))
    assert fallback == text


def test_a_batch_value_out_of_its_columns_range_is_named_and_nothing_sent() -> None:
    postgres_available()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        with pytest.raises(psycopg.DataError, match="cannot send 2147483648 in an array of ints"):
            conn.execute("SELECT %b::int[]", [arrays.Ints([1, 2**31])])
        with pytest.raises(psycopg.DataError, match="cannot send 2 in an array of texts"):
            conn.execute("SELECT %b::text[]", [arrays.Texts(["1", 2])])


# -- migrations ------------------------------------------------------------------------------


def test_migrate_applies_once(new_app: Callable[..., conveyor.App], schema: str) -> None:
    app = new_app()
    assert not schema_exists(schema)
    assert app.schema_version() == 0
    assert app.migrate() == VERSIONS
    assert app.migrate() == []
    assert new_app().migrate() == []
    assert app.schema_version() == VERSIONS[-1]
    assert sql(f"SELECT version, name FROM {schema}.migrations") == NAMED_VERSIONS
    assert tables(schema) == {
        "jobs",
        "job_history",
        "job_dependencies",
        "workers",
        "queues",
        "cron_ticks",
        "rate_starts",
        "circuits",
        "circuit_log",
        "alerts",
        "job_progress",
        "leaders",
        "revoked_sessions",
        "migrations",
    }


FIRST_USE = textwrap.dedent(
    """
    import sys

    import conveyor

    app = conveyor.App(sys.argv[1], postgres_schema=sys.argv[2], auto_migrate=True)


    @app.task(name="hello")
    def hello(n):
        return n


    print("ready", flush=True)
    sys.stdin.readline()  # every process starts its first use at the same moment
    job = hello.enqueue(int(sys.argv[3]))
    print("enqueued", job.id, app.schema_version(), flush=True)
    """
)


def test_many_processes_migrating_on_first_use_at_once_migrate_exactly_once(
    schema: str,
) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE, POSTGRES_URL, schema, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    try:
        for p in processes:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in processes:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    for p, (out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
        assert out.split()[0] == "enqueued" and out.split()[2] == str(VERSIONS[-1]), out
    assert sql(f"SELECT version, name FROM {schema}.migrations") == NAMED_VERSIONS
    assert sorted(r[0] for r in sql(f"SELECT (args->>0)::int FROM {schema}.jobs")) == list(range(6))


def test_migrating_down_to_zero_and_up_again_gives_a_fresh_install(
    app: conveyor.App, runs: list[Any], schema: str
) -> None:
    fresh = schema_dump(schema)
    assert {r[0] for r in fresh["triggers"]} == {"jobs"}
    # one trigger on the updates of jobs: history, wake-ups and dependents in one function
    assert {r[0] for r in fresh["functions"]} == {"record_updated", "release_waiting"}

    app.get_task("record").enqueue("before")
    assert app.backend.sync.migrate(down_to=1) == VERSIONS[:0:-1]
    assert app.schema_version() == 1
    assert "queues" not in tables(schema)
    assert app.backend.sync.migrate(down_to=0) == [1]
    assert app.schema_version() == 0
    assert tables(schema) == {"migrations"}  # the bookkeeping stays, empty
    assert scalar(f"SELECT count(*) FROM {schema}.migrations") == 0
    left = schema_dump(schema)
    assert left["triggers"] == left["functions"] == []

    assert app.migrate() == VERSIONS
    assert schema_dump(schema) == fresh
    # and it works: inserts and state changes are recorded by the re-created triggers
    job = app.get_task("record").enqueue("after")
    app.run_worker(burst=True)
    assert runs == ["after"]
    assert [h.to_state for h in app.job_history(job.id)] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]


FOREIGN_SCHEMAS = {
    # an application with tables of its own names
    "shop": [
        "CREATE TABLE {s}.users (id serial PRIMARY KEY, email text)",
        "CREATE TABLE {s}.orders (id serial PRIMARY KEY, user_id int)",
        "INSERT INTO {s}.users (email) VALUES ('a@example.com')",
    ],
    # an application with its own `jobs` table, a name conveyor uses too
    "own jobs table": [
        "CREATE TABLE {s}.jobs (id serial PRIMARY KEY, title text)",
        "INSERT INTO {s}.jobs (title) VALUES ('paint the fence')",
    ],
    # a framework's layout (Laravel's): its own `migrations` and `jobs` tables
    "framework with migrations table": [
        "CREATE TABLE {s}.migrations (id serial PRIMARY KEY, migration text, batch int)",
        "CREATE TABLE {s}.jobs (id bigserial PRIMARY KEY, queue text, payload text)",
        "CREATE TABLE {s}.users (id serial PRIMARY KEY)",
        "INSERT INTO {s}.migrations (migration, batch) VALUES ('create_users_table', 1)",
    ],
}


def raised_by(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except Exception as exc:
        return exc
    return None


def _snapshot(schema: str) -> dict[str, Any]:
    dump = schema_dump(schema)
    data = {t: sql(f"SELECT * FROM {schema}.{t} ORDER BY 1") for t in sorted(tables(schema))}
    return {"dump": dump, "data": data}


@pytest.mark.parametrize("layout", sorted(FOREIGN_SCHEMAS))
def test_a_schema_holding_another_applications_tables_is_refused_and_left_untouched(
    new_app: Callable[..., conveyor.App], schema: str, layout: str
) -> None:
    sql(f"CREATE SCHEMA {schema}")
    for statement in FOREIGN_SCHEMAS[layout]:
        sql(statement.format(s=schema))
    before = _snapshot(schema)
    first_use = new_app(auto_migrate=True)

    @first_use.task(name="noop")
    def noop() -> None: ...

    errors = {"migrate": raised_by(new_app().migrate), "first use": raised_by(noop.enqueue)}
    assert _snapshot(schema) == before
    for what, error in errors.items():
        assert isinstance(error, conveyor.NotAConveyorDatabase), f"{what}: {error!r}"
        assert schema in str(error)


def test_an_unmigrated_schema_asks_for_conveyor_migrate(
    new_app: Callable[..., conveyor.App], schema: str
) -> None:
    app = new_app()  # auto_migrate is off by default on PostgreSQL

    @app.task(name="noop")
    def noop() -> None: ...

    with pytest.raises(conveyor.ConfigurationError, match="`conveyor migrate`") as caught:
        noop.enqueue()
    assert not isinstance(caught.value, conveyor.NotAConveyorDatabase)
    assert schema in str(caught.value)
    with pytest.raises(conveyor.ConfigurationError, match="`conveyor migrate`"):
        app.list_jobs()
    assert not schema_exists(schema)  # nothing was created behind the user's back


def test_the_jobs_table_carries_the_documented_autovacuum_settings(
    app: conveyor.App, schema: str
) -> None:
    options = scalar("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [f"{schema}.jobs"])
    assert dict(o.split("=", 1) for o in options) == {
        "fillfactor": "85",
        "autovacuum_vacuum_scale_factor": "0.02",
        "autovacuum_vacuum_threshold": "1000",
        "autovacuum_analyze_scale_factor": "0.02",
        "autovacuum_vacuum_cost_delay": "1",
    }


# -- the database's clock --------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-SKEW_S, SKEW_S], ids=["machine-behind", "machine-ahead"])
def test_job_times_come_from_the_database_clock(
    new_app: Callable[..., conveyor.App],
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
) -> None:
    """With the default clock, every time written is the server's `now()`: on a machine whose
    clock is two hours off, the job's times still fall between two readings of the server's."""
    skew_machine_clock(monkeypatch, skew)
    app = new_app()
    app.migrate()
    assert abs(app.clock.now() - server_now() - skew) < 60  # the machine is off indeed

    @app.task(name="stamp")
    def stamp() -> None: ...

    start = server_now()
    job = stamp.enqueue()
    app.run_worker(burst=True)
    end = server_now()
    job.refresh()

    assert job.state is JobState.SUCCEEDED
    assert job.started_at is not None and job.finished_at is not None
    eps = 1e-5  # float rounding of microsecond timestamps
    assert start - eps <= job.created_at <= job.started_at <= job.finished_at <= end + eps
    assert job.run_at == job.created_at
    for entry in app.job_history(job.id):
        assert start - eps <= entry.at <= end + eps

    later = stamp.configure(delay=30).enqueue()
    assert later.state is JobState.SCHEDULED
    assert end - eps <= later.created_at <= server_now() + eps
    assert later.run_at - later.created_at == pytest.approx(30, abs=1e-3)


@pytest.mark.parametrize("skew", [0.0, SKEW_S], ids=["machine-on-time", "machine-ahead"])
async def test_an_idle_worker_on_a_fast_clock_does_not_spin(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A job due in ten minutes: an idle worker looks again about once a second whatever its
    machine's clock says (it compares the job's database time with its own clock)."""
    skew_machine_clock(monkeypatch, skew)

    @app.task(name="later")
    def later() -> None: ...

    await later.configure(delay=600).enqueue_async()
    claims = 0
    claim = app.backend.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)

    monkeypatch.setattr(app.backend, "claim", counted)
    worker = conveyor.Worker(app)
    task = asyncio.create_task(worker.run_async())
    try:
        await asyncio.sleep(2.0)
    finally:
        worker.stop()
        await task
    assert claims <= 10, f"{claims} claims in 2 s by an idle worker"


@pytest.mark.parametrize("skew", [0.0, SKEW_S], ids=["machine-on-time", "machine-ahead"])
async def test_a_leader_on_a_fast_clock_keeps_live_workers_registered(
    app: conveyor.App, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """The leader forgets workers not heard from for an hour; a leader whose clock is two
    hours fast must not take a worker that beat a moment ago for one of those."""
    skew_machine_clock(monkeypatch, skew)
    async with running_worker(app) as worker:  # entered after the leader's first rounds
        assert worker.elector.is_leader
        listed = await asyncio.to_thread(app.list_workers)
    assert [w.id for w in listed] == [worker.id]


@pytest.mark.parametrize("skew", [-SKEW_S, SKEW_S], ids=["machine-behind", "machine-ahead"])
async def test_worker_registration_times_come_from_the_database_clock(
    new_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    skew_machine_clock(monkeypatch, skew)
    # Leases this long keep the leader from forgetting any worker within the skew.
    app = new_app(lease_seconds=SKEW_S)
    app.migrate()
    start = await asyncio.to_thread(server_now)
    worker = conveyor.Worker(app)
    task = asyncio.create_task(worker.run_async())
    try:
        await until(
            lambda: getattr(worker, "heartbeat", None) is not None and worker.heartbeat.rounds,
            "a heartbeat",
        )
        listed = await asyncio.to_thread(app.list_workers)
        end = await asyncio.to_thread(server_now)
    finally:
        worker.stop()
        await task
    mine = [w for w in listed if w.id == worker.id]
    assert mine, "the worker is not registered"
    eps = 1e-5
    assert start - eps <= mine[0].last_beat <= end + eps
    assert start - eps <= mine[0].started_at <= end + eps, (
        f"started_at is {mine[0].started_at - start:+.0f}s from the server's clock"
    )


@pytest.mark.parametrize("skew", [0.0, SKEW_S], ids=["machine-on-time", "machine-ahead"])
def test_purging_on_a_fast_clock_keeps_jobs_that_just_finished(
    app: conveyor.App, runs: list[Any], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """`purge(older_than=1h)` (`conveyor prune`) deletes jobs that finished more than an hour
    ago by the database's clock, not by the clock of the machine it is run from."""
    skew_machine_clock(monkeypatch, skew)
    job = app.get_task("record").enqueue("done just now")
    app.run_worker(burst=True)
    assert job.refresh().state is JobState.SUCCEEDED
    assert app.purge(older_than=3600) == 0
    assert app.get_job(job.id).state is JobState.SUCCEEDED


@pytest.mark.parametrize("skew", [0.0, SKEW_S], ids=["machine-on-time", "machine-ahead"])
async def test_a_leader_on_a_fast_clock_keeps_finished_jobs_within_their_retention(
    new_app: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Succeeded jobs are kept for `retention_succeeded` (here an hour) by the database's
    clock: a leader whose clock is two hours fast must not prune a job that just finished."""
    skew_machine_clock(monkeypatch, skew)
    app = new_app(retention_succeeded=3600)
    app.migrate()

    @app.task(name="noop")
    def noop() -> None: ...

    job = await noop.enqueue_async()
    await app.run_worker_async(burst=True)
    # a new leader prunes in its first round, done before the block is entered
    async with running_worker(app) as worker:
        assert worker.elector.is_leader
    assert (await app.get_job_async(job.id)).state is JobState.SUCCEEDED


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


async def test_an_idle_worker_is_woken_by_notify(
    new_app: Callable[..., conveyor.App], schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither re-checks nor polling come within the deadline: only the notification can.
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", NEVER_S)
    worker_app = new_app(poll_interval=NEVER_S)
    worker_app.migrate()
    producer = new_app()

    @worker_app.task(name="greet")
    def greet(name: str) -> str:
        return f"hello {name}"

    producer.task(name="greet")(lambda name: None)
    worker = conveyor.Worker(worker_app)
    task = asyncio.create_task(worker.run_async())
    try:
        await until(lambda: listening_sessions(schema) == 1, "the worker to LISTEN")
        await asyncio.sleep(0.2)  # the wake-up that comes with LISTEN is over: truly idle
        job = await producer.enqueue_async("greet", args=["you"])
        assert await job.wait_async(timeout=5) == "hello you"
    finally:
        worker.stop()
        await task
    assert job.started_at is not None and job.started_at - job.created_at < 5
    await until(lambda: listening_sessions(schema) == 0, "the listener to go with the worker")


def test_one_notification_per_enqueue_statement_not_per_job(app: conveyor.App, schema: str) -> None:
    @app.task(name="ping")
    def ping(n: int) -> None: ...

    with psycopg.connect(POSTGRES_URL, autocommit=True) as listener:
        listener.execute(f'LISTEN "{schema}_jobs"')

        def received(wait: float = 5.0) -> list[str]:
            """The notifications that arrive: the first within `wait`, then any that follow
            it closely (one notification per job would all be on their way by then)."""
            first = [n.payload for n in listener.notifies(timeout=wait, stop_after=1)]
            return first + [n.payload for n in listener.notifies(timeout=0.3)]

        ping.enqueue(0)
        assert received() == ["default"]
        ping.enqueue_many(range(1000))
        assert received() == ["default"]
        ping.configure(queue="other").enqueue_many(range(1000))
        assert received() == ["other"]
        ping.configure(delay=60).enqueue_many(range(10))  # nothing runnable: nobody to wake
        assert received(wait=0.5) == []
        with psycopg.connect(POSTGRES_URL) as conn:  # one transaction, three statements
            for n in range(3):
                ping.configure(connection=conn).enqueue_many(range(n * 10, n * 10 + 10))
            assert received(wait=0.5) == []  # not before the commit
        assert received() == ["default"]
    assert scalar(f"SELECT count(*) FROM {schema}.jobs") == 2041


async def test_without_listen_the_worker_polls_and_says_so_once(
    new_app: Callable[..., conveyor.App], schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", NEVER_S)  # only polling can help
    worker_app = new_app(postgres_listen=False, poll_interval=0.05)
    worker_app.migrate()
    producer = new_app()
    ran: list[int] = []

    @worker_app.task(name="tick")
    def tick(n: int) -> None:
        ran.append(n)

    producer.task(name="tick")(lambda n: None)
    with capture_logs() as logs:
        worker = conveyor.Worker(worker_app)
        task = asyncio.create_task(worker.run_async())
        try:
            await asyncio.sleep(0.5)  # several idle polls
            for n in range(3):
                job = await producer.enqueue_async("tick", args=[n])
                await job.wait_async(timeout=5)
                await asyncio.sleep(0.2)
            assert listening_sessions(schema) == 0
        finally:
            worker.stop()
            await task
    assert ran == [0, 1, 2]
    polling = [e for e in logs if e["event"] == "listener.polling"]
    assert len(polling) == 1, polling
    assert polling[0]["interval_s"] == 0.05


# -- leadership ------------------------------------------------------------------------------


def leader_row(schema: str) -> tuple[str, int] | None:
    """The maintenance leadership as the store has it: (holder, server backend pid)."""
    rows = sql(f"SELECT holder, pid FROM {schema}.leaders WHERE name = 'maintenance'")
    return (rows[0][0], rows[0][1]) if rows else None


async def lead(app: conveyor.App, holder: str, lease: float = 30.0) -> bool:
    now = time.time()
    try:
        return await app.backend.try_lead("maintenance", holder, now + lease, now)
    except conveyor.BackendUnavailable:
        return False


async def test_one_leader_at_a_time_and_the_next_takes_over_when_its_session_ends(
    new_app: Callable[..., conveyor.App], schema: str
) -> None:
    first, second = new_app(), new_app()
    first.migrate()

    assert await lead(first, "first")
    assert not await lead(second, "second")
    assert await lead(first, "first")  # keeps it
    assert not await lead(second, "second")
    holder = leader_row(schema)
    assert holder is not None and holder[0] == "first"

    await first.close_async()  # the leader goes away; its session ends with it
    await until(
        lambda: not scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [holder[1]]),
        "the leader's session to end",
        timeout=2,
    )
    assert await lead(second, "second")  # at once, not a lease later
    assert not await lead(first, "first")
    assert (row := leader_row(schema)) is not None and row[0] == "second"


async def test_a_leader_whose_session_dies_is_replaced_at_once(
    new_app: Callable[..., conveyor.App], schema: str
) -> None:
    first, second = new_app(), new_app()
    first.migrate()

    assert await lead(first, "first")
    holder = leader_row(schema)
    assert holder is not None
    assert scalar("SELECT pg_terminate_backend(%s, 5000)", [holder[1]])  # its session dies

    assert await lead(second, "second")
    assert not await lead(first, "first")  # the old leader notices it lost
    assert not await lead(first, "first")
    assert (row := leader_row(schema)) is not None and row[0] == "second"


async def test_a_leader_that_stops_renewing_loses_the_lead_within_a_lease(
    new_app: Callable[..., conveyor.App], schema: str
) -> None:
    """A leader frozen (or cut off) keeps its session, but cannot renew its lease: the next
    worker takes over once the lease has run out on the server's clock, and the old leader,
    when it wakes, is told it no longer leads."""
    first, second = new_app(), new_app()
    first.migrate()
    assert await lead(first, "first", lease=0.5)
    assert not await lead(second, "second", lease=0.5)  # the lease still stands
    await asyncio.sleep(0.6)  # the leader is frozen: no renewal
    assert await lead(second, "second", lease=0.5)
    assert not await lead(first, "first", lease=0.5)  # awake again: a follower now
