"""Shared fixtures: which backends the contract suite runs on, and apps bound to them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import conveyor
import conveyor.logging

#: Every backend that exists; the contract suite runs on each.
ALL_BACKENDS = ["sqlite", "postgres"]


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
        conveyor.logging, "configure_logging",
        lambda *args, **kwargs: configure(*args, **{**kwargs, "cache": False}),
    )  # fmt: skip
    yield
    structlog.reset_defaults()
