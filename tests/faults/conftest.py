"""Plumbing of the fault suite: the `faults` marker (declared in pyproject.toml; every test in
this folder gets it, so
`pytest -m "not faults"` skips the suite), the requirements (root, libfaketime, PostgreSQL's
server programs, `redis-server`: in CI a missing one fails the test, elsewhere it skips it),
the throwaway PostgreSQL cluster and Redis server (one each per session), the `scenario`
fixture, and the report: each scenario's figures as JSON lines in $CONVEYOR_FAULTS_REPORT, and
a table at the end of the session.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from acceptance.conftest import Project
from conftest import unreachable  # tests/conftest.py

from .cluster import Cluster, Unavailable
from .harness import Scenario, libfaketime
from .redis_server import RedisServer
from .redis_server import Unavailable as RedisUnavailable

HERE = Path(__file__).parent
REPORT_KEY = pytest.StashKey[list[dict[str, Any]]]()
REPORT_PATH_KEY = pytest.StashKey[str | None]()
REPORT_ENV = "CONVEYOR_FAULTS_REPORT"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = []
    # Read now: the tests' own environment is cleaned of CONVEYOR_* variables.
    config.stash[REPORT_PATH_KEY] = os.environ.get(REPORT_ENV) or None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is a fault test (before `-m` deselects)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)


# -- requirements ------------------------------------------------------------------------------


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unreachable(what, PermissionError("needs root"))


def require_faketime() -> None:
    if libfaketime() is None:
        unreachable(
            "libfaketime (Debian package `faketime`)",
            FileNotFoundError("no libfaketime.so.1 under /usr/lib/*/faketime"),
        )


def require_command(name: str) -> None:
    if shutil.which(name) is None:
        unreachable(f"the `{name}` command", FileNotFoundError(f"{name} is not on PATH"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """The suite's own PostgreSQL cluster, made on first use and removed at the end."""
    try:
        cluster = Cluster.create()
    except (Unavailable, OSError) as exc:
        unreachable("a throwaway PostgreSQL cluster (initdb, pg_ctl)", exc)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The suite's own Redis server, started on first use and removed at the end."""
    try:
        server = RedisServer.create()
    except (RedisUnavailable, OSError) as exc:
        unreachable("a throwaway Redis server (redis-server)", exc)
    try:
        yield server
    finally:
        server.destroy()


# -- scenarios ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """The store a scenario runs on: a SQLite file, a schema of the throwaway cluster, or a key
    prefix on the throwaway Redis server."""
    return str(request.param)


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """Record one scenario's figures: kept for the summary, appended to $CONVEYOR_FAULTS_REPORT."""
    collected = request.config.stash[REPORT_KEY]
    path = request.config.stash[REPORT_PATH_KEY]

    def record(figures: dict[str, Any]) -> None:
        collected.append(figures)
        if path:
            with open(path, "a") as report:
                report.write(json.dumps(figures, default=str) + "\n")

    return record


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault_report: Callable[[dict[str, Any]], None],
) -> Iterator[Scenario]:
    """A scenario on `backend`; the test calls `scenario.open(extra_tasks)` first. Everything
    it started is stopped afterwards; on PostgreSQL the cluster is reset (processes continued,
    ALTER SYSTEM undone, sessions ended) and the schema dropped; on Redis the server is reset
    (running again, CONFIG SET undone, every key and client gone)."""
    cluster: Cluster | None = None
    schema: str | None = None
    server: RedisServer | None = None
    prefix: str | None = None
    if backend == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        schema = f"faults_{uuid.uuid4().hex[:10]}"
    elif backend == "redis":
        server = request.getfixturevalue("redis_server")
        prefix = f"faults_{uuid.uuid4().hex[:10]}"
    project = Project(
        root=tmp_path,
        db_path=tmp_path / "jobs.db",
        postgres_url=cluster.url if cluster else None,
        postgres_schema=schema,
        redis_url=server.url if server else None,
        redis_prefix=prefix,
    )
    # The test process's own Apps (enqueue, reads) give up on an unreachable server quickly.
    monkeypatch.setenv("CONVEYOR_CONNECT_TIMEOUT", "2")
    name = getattr(request.node, "originalname", request.node.name).removeprefix("test_")
    callspec = getattr(request.node, "callspec", None)
    variant = "-".join(p for p in (callspec.id.split("-") if callspec else []) if p != backend)
    if variant:
        name += f"[{variant}]"
    sc = Scenario(
        name=name,
        backend=backend,
        project=project,
        record=fault_report,
        cluster=cluster,
        redis=server,
    )
    try:
        yield sc
    finally:
        try:
            sc.close()
        finally:
            if cluster is not None and schema is not None:
                cluster.reset()
                cluster.drop_schema(schema)
            if server is not None:
                server.reset()


# -- the report --------------------------------------------------------------------------------

COLUMNS = [
    ("scenario", 48),
    ("backend", 8),
    ("ok", 3),
    ("jobs", 6),
    ("faults", 6),
    ("lost", 4),
    ("duplicated", 5),
    ("duplicated_in_flight", 5),
    ("stuck", 5),
    ("fenced", 6),
    ("early_restarts", 5),
    ("stale_starts", 5),
    ("victim_max_s", 7),
    ("victim_median_s", 7),
    ("bound_s", 7),
    ("wall_s", 6),
]
HEADERS = {
    "duplicated": "dup",
    "duplicated_in_flight": "infl",
    "early_restarts": "early",
    "stale_starts": "stale",
    "victim_max_s": "vmax_s",
    "victim_median_s": "vmed_s",
}


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(REPORT_KEY, [])
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault scenarios")

    def cell(value: Any, width: int) -> str:
        text = (
            "-"
            if value is None
            else ("yes" if value is True else "NO" if value is False else str(value))
        )
        return (
            text[:width].rjust(width) if not isinstance(value, str) else text[:width].ljust(width)
        )

    write(" ".join(HEADERS.get(k, k)[:w].ljust(w) for k, w in COLUMNS))
    for row in rows:
        write(" ".join(cell(row.get(k), w) for k, w in COLUMNS))
    path = config.stash.get(REPORT_PATH_KEY, None)
    if path:
        write(f"figures appended to {path}")
