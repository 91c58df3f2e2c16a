"""Shared fixtures: which backends the contract suite runs on, and apps bound to them."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import conveyor
import conveyor.backends
import conveyor.logging
from conveyor.job import TRANSITIONS, JobState

#: Every backend that exists (the registry `open_backend` serves from); the contract suite
#: runs on each.
ALL_BACKENDS = [kind.name for kind in conveyor.backends.BACKENDS]


def chosen_backends() -> list[str]:
    """The backends this run tests: all of them, or those CONVEYOR_TEST_BACKENDS names
    (comma-separated; `make check` sets it to `sqlite`)."""
    named = os.environ.get("CONVEYOR_TEST_BACKENDS", "")
    chosen = [name.strip() for name in named.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"CONVEYOR_TEST_BACKENDS names unknown backends {', '.join(unknown)} "
            f"(known: {', '.join(ALL_BACKENDS)})"
        )
    return chosen or ALL_BACKENDS


BACKENDS = chosen_backends()

POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: The tests' Redis database (each test has a key prefix of its own in it).
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/8")


#: Running in CI (`.ci/run` sets CI=true): nothing that cannot be reached is skipped.
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unreachable(what: str, error: BaseException) -> None:
    """In CI a server that cannot be reached fails the test; elsewhere it skips it."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def postgres_available() -> None:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class TestStore:
    """A backend as the tests drive it: where a test's store lives, what an App on it needs,
    and a look at its history from outside."""

    def url(self, tmp_path: Path) -> str:
        raise NotImplementedError

    def reachable(self) -> None:
        """Fail (in CI) or skip the test if the store's server cannot be reached."""

    def options(self, schema: str) -> dict[str, Any]:
        """What every App of one test needs to share one store of its own."""
        return {}

    def prepare(self, app: conveyor.App) -> None:
        """Before the first App of a test is handed out."""

    def transitions(self, url: str, schema: str) -> list[tuple[str | None, str]]:
        """Every distinct (from, to) pair of states the store's history holds."""
        raise NotImplementedError

    def drop(self, schema: str) -> None:
        """After the test: the store goes."""


HISTORY_PAIRS = "SELECT DISTINCT from_state, to_state FROM {table}"


class SqliteTestStore(TestStore):
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'jobs.db'}"

    def transitions(self, url: str, schema: str) -> list[tuple[str | None, str]]:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return conn.execute(HISTORY_PAIRS.format(table="conveyor_job_history")).fetchall()
        except sqlite3.OperationalError:
            return []  # no schema was made
        finally:
            conn.close()


class PostgresTestStore(TestStore):
    """Each test gets a schema of its own, migrated before the first App is handed out and
    dropped afterwards."""

    def url(self, tmp_path: Path) -> str:
        return POSTGRES_URL

    def reachable(self) -> None:
        postgres_available()

    def options(self, schema: str) -> dict[str, Any]:
        return {"postgres_schema": schema}

    def prepare(self, app: conveyor.App) -> None:
        app.migrate()

    def transitions(self, url: str, schema: str) -> list[tuple[str | None, str]]:
        import psycopg

        table = f'"{schema}".job_history'
        with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
            row = pg.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if row is None or not row[0]:
                return []
            return pg.execute(HISTORY_PAIRS.format(table=table)).fetchall()

    def drop(self, schema: str) -> None:
        drop_schema(schema)


def redis_available() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unreachable(f"Redis at {REDIS_URL}", exc)


def drop_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    finally:
        client.close()


class RedisTestStore(TestStore):
    """Each test gets a key prefix of its own in one database, its keys deleted afterwards."""

    def url(self, tmp_path: Path) -> str:
        return REDIS_URL

    def reachable(self) -> None:
        redis_available()

    def options(self, schema: str) -> dict[str, Any]:
        return {"redis_prefix": schema}

    def transitions(self, url: str, schema: str) -> list[tuple[str | None, str]]:
        import json

        import redis

        client: Any = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            pairs = set()
            for key in client.scan_iter(match=f"{{{schema}}}:hist:*", count=1000):
                for entry in client.lrange(key, 0, -1):
                    _, from_state, to_state, _, _ = json.loads(entry)
                    pairs.add((from_state, to_state))
            for key in client.scan_iter(match=f"{{{schema}}}:job:*", count=1000):
                if (entered := client.hget(key, "entered")) is not None:
                    pairs.add((None, entered))  # the state it was stored in (lib.lua)
            return sorted(pairs, key=str)
        finally:
            client.close()

    def drop(self, schema: str) -> None:
        drop_prefix(schema)


#: How the tests drive each backend of the registry.
TEST_STORES: dict[str, TestStore] = {
    "sqlite": SqliteTestStore(),
    "postgres": PostgresTestStore(),
    "redis": RedisTestStore(),
}
if missing := set(ALL_BACKENDS) - set(TEST_STORES):
    raise pytest.UsageError(f"no TestStore in tests/conftest.py for {', '.join(sorted(missing))}")


def check_transitions(store: TestStore, url: str, schema: str) -> None:
    """Every pair of states the store's history holds is one `TRANSITIONS` allows: checked
    after every test that made an App, on every backend."""
    rows = store.transitions(url, schema)
    seen = {(None if a is None else JobState(a), JobState(b)) for a, b in rows}
    assert seen <= TRANSITIONS, f"history holds transitions not allowed: {seen - TRANSITIONS}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    TEST_STORES[request.param].reachable()
    return str(request.param)


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    return TEST_STORES[backend].url(tmp_path)


@pytest.fixture
async def make_app(backend: str, url: str) -> AsyncIterator[Callable[..., conveyor.App]]:
    """Apps on the test's backend, sharing one store of the test's own; every one is closed
    afterwards, and the history they wrote checked against `TRANSITIONS`."""
    store = TEST_STORES[backend]
    apps: list[conveyor.App] = []
    schema = f"test_{uuid.uuid4().hex[:12]}"

    def make(**kwargs: Any) -> conveyor.App:
        app = conveyor.App(url, **{**store.options(schema), **kwargs})
        if not apps:
            store.prepare(app)
        apps.append(app)
        return app

    yield make
    if apps:
        check_transitions(store, url, schema)
    for app in apps:
        await app.close_async()  # in the test's event loop, which owns its async connections
    store.drop(schema)


@pytest.fixture
def app(make_app: Callable[..., conveyor.App]) -> conveyor.App:
    return make_app()


@pytest.fixture
def clock() -> conveyor.FrozenClock:
    return conveyor.FrozenClock(1_800_000_000.0)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the CONVEYOR_* variables they need; none leak in from the shell (but the
    CONVEYOR_TEST_* ones that configure the test run)."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_") and not name.startswith("CONVEYOR_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from structlog's defaults, so `capture_logs` sees every event.

    Commands run in-process (the CLI, the benchmarks) configure structlog globally; their
    loggers are kept uncached here and the configuration is reset after the test, so no level
    or output stream set by one test silences or breaks the next.
    """
    configure = conveyor.logging.configure_logging
    monkeypatch.setattr(
        conveyor.logging,
        "configure_logging",
        lambda *args, **kwargs: configure(*args, **{**kwargs, "cache": False}),
    )
    yield
    structlog.reset_defaults()
