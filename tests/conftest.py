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
import conveyor.logging
from conveyor.job import TRANSITIONS, JobState

#: Every backend that exists; the contract suite runs on each.
BACKENDS = ["sqlite", "postgres"]

POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unreachable(what: str, error: BaseException) -> None:
    """In CI a server that cannot be reached fails the test; elsewhere it skips it."""
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
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


def check_transitions(backend: str, url: str, schema: str) -> None:
    """Every pair of states the store's history holds is one `TRANSITIONS` allows: checked
    after every test that made an App, on every backend."""
    query = "SELECT DISTINCT from_state, to_state FROM {table}"
    if backend == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(query.format(table="conveyor_job_history")).fetchall()
        except sqlite3.OperationalError:
            return  # no schema was made
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as pg:
            found = pg.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".job_history',))
            if not found.fetchone()[0]:  # type: ignore[index]
                return
            rows = pg.execute(query.format(table=f'"{schema}".job_history')).fetchall()
    seen = {(None if a is None else JobState(a), JobState(b)) for a, b in rows}
    assert seen <= TRANSITIONS, f"history holds transitions not allowed: {seen - TRANSITIONS}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        postgres_available()
    return str(request.param)


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return POSTGRES_URL


@pytest.fixture
async def make_app(backend: str, url: str) -> AsyncIterator[Callable[..., conveyor.App]]:
    """Apps on the test's backend, sharing one store; every one is closed afterwards.

    On PostgreSQL each test gets a schema of its own, migrated before the first App is handed
    out and dropped afterwards.
    """
    apps: list[conveyor.App] = []
    schema = f"test_{uuid.uuid4().hex[:12]}"

    def make(**kwargs: Any) -> conveyor.App:
        if backend == "postgres":
            kwargs.setdefault("postgres_schema", schema)
        app = conveyor.App(url, **kwargs)
        if backend == "postgres" and not apps:
            app.migrate()
        apps.append(app)
        return app

    yield make
    if apps:
        check_transitions(backend, url, schema)
    for app in apps:
        await app.close_async()  # in the test's event loop, which owns its async connections
    if backend == "postgres":
        drop_schema(schema)


@pytest.fixture
def app(make_app: Callable[..., conveyor.App]) -> conveyor.App:
    return make_app()


@pytest.fixture
def clock() -> conveyor.FrozenClock:
    return conveyor.FrozenClock(1_800_000_000.0)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set the CONVEYOR_* variables they need; none leak in from the shell."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_") and name != "CONVEYOR_TEST_POSTGRES_URL":
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
        conveyor.logging, "configure_logging",
        lambda *args, **kwargs: configure(*args, **{**kwargs, "cache": False}),
    )  # fmt: skip
    yield
    structlog.reset_defaults()
