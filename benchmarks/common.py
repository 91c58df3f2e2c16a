"""What every workload shares: quiet logging, throwaway stores (a SQLite file, a PostgreSQL
schema, a Redis key prefix; for the raw Redis loop, a Redis database emptied before and after),
and result records."""

from __future__ import annotations

import compileall
import contextlib
import logging
import os
import re
import secrets
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

BACKENDS = ("sqlite", "postgres", "redis")
#: The PostgreSQL the benchmarks use unless told otherwise (the one the test suite uses).
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The Redis the benchmarks use unless told otherwise: database 9. conveyor's workloads keep
#: their keys under a prefix of their own and delete them; the raw loop and the peers empty it.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"

#: The level the benchmark process and its workers log at, so logging does not dominate.
LOG_LEVEL = "WARNING"


def quiet_logging(cache: bool = False) -> None:
    """Drop structlog events below WARNING in this process (as `--log-level WARNING` does).

    `cache` (as `conveyor worker` does) is for the worker processes, where logging sits on the
    hot path; a process that may run other code afterwards (the test suite runs `main`
    in-process) keeps structlog's loggers reconfigurable.
    """
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(LOG_LEVEL)),
        cache_logger_on_first_use=cache,
    )


def byte_compile() -> None:
    """Byte-compile conveyor and these benchmarks, as pip does when it installs a package. The
    peers are installed and start from bytecode; conveyor, installed editable, is imported from
    its source, and where PYTHONDONTWRITEBYTECODE is set every worker started would compile
    each of its modules again (about a fifth of a second of each start on a 2-core machine)."""
    import conveyor

    for package in (Path(conveyor.__file__).parent, Path(__file__).parent):
        compileall.compile_dir(package, quiet=1)


@contextlib.contextmanager
def scratch_db(name: str) -> Iterator[Path]:
    """A database path in a temporary folder that is removed afterwards, WAL files included."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as folder:
        yield Path(folder) / f"{name}.db"


def sqlite_url(path: Path) -> str:
    # sqlite:/// + an absolute path gives the four slashes conveyor expects for absolute paths
    return f"sqlite:///{path}"


def postgres_url() -> str:
    """`CONVEYOR_TEST_POSTGRES_URL`, else the local default."""
    return os.environ.get("CONVEYOR_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def redis_url() -> str:
    """`CONVEYOR_TEST_REDIS_URL`, else the local default."""
    return os.environ.get("CONVEYOR_TEST_REDIS_URL") or DEFAULT_REDIS_URL


def flush_redis(url: str) -> None:
    """Empty the database `url` names (FLUSHDB: that database only, never the server)."""
    import redis  # only the Redis workloads need it

    with redis.Redis.from_url(url) as client:
        client.flushdb()


@contextlib.contextmanager
def scratch_redis(url: str | None = None) -> Iterator[str]:
    """The Redis database of one workload (`url`, default `redis_url()`), emptied before the
    workload and after it."""
    url = url or redis_url()
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)


@dataclass(frozen=True)
class Database:
    """Where one workload keeps its jobs: a URL and, on PostgreSQL, a schema of its own, or on
    Redis, a key prefix of its own."""

    url: str
    schema: str | None = None
    prefix: str | None = None

    def app_options(self) -> dict[str, Any]:
        """Keyword arguments for `conveyor.App` besides the URL."""
        options: dict[str, Any] = {}
        if self.schema:
            options["postgres_schema"] = self.schema
        if self.prefix:
            options["redis_prefix"] = self.prefix
        return options

    def environ(self) -> dict[str, str]:
        """The same, as the environment a `conveyor worker` subprocess reads its settings from."""
        env = {"CONVEYOR_DATABASE_URL": self.url}
        if self.schema:
            env["CONVEYOR_POSTGRES_SCHEMA"] = self.schema
        if self.prefix:
            env["CONVEYOR_REDIS_PREFIX"] = self.prefix
        return env


def schema_name(workload: str) -> str:
    """A fresh schema name (or Redis key prefix) for one workload: lower-case, short, unlikely
    to exist."""
    slug = re.sub(r"[^a-z0-9]+", "_", workload.lower()).strip("_")[:24]
    return f"bench_{slug}_{secrets.token_hex(4)}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg  # only the PostgreSQL workloads need it
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


#: Keys deleted per UNLINK when a workload's Redis keys are removed.
DELETE_BATCH = 1_000


def drop_prefix(url: str, prefix: str) -> int:
    """Delete every key conveyor keeps under `prefix` (`{prefix}:...`) in the database `url`
    names, and nothing else there; how many there were."""
    import redis  # only the Redis workloads need it

    deleted = 0
    with redis.Redis.from_url(url) as client:
        # the prefix's characters (A-Z a-z 0-9 _ . : -) mean nothing to MATCH's glob
        keys = client.scan_iter(match=f"{{{prefix}}}:*", count=DELETE_BATCH)
        batch: list[bytes] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    return deleted


@contextlib.contextmanager
def scratch(
    backend: str, workload: str, postgres: str | None = None, redis: str | None = None
) -> Iterator[Database]:
    """A store of its own for one workload, removed afterwards: a SQLite file in a temporary
    folder, a PostgreSQL schema on `postgres` (created by `app.migrate()`), or a key prefix in
    the Redis database `redis` names (its keys deleted; the database is not emptied)."""
    if backend == "sqlite":
        with scratch_db(workload) as path:
            yield Database(sqlite_url(path))
        return
    if backend == "redis":
        url = redis or redis_url()
        prefix = schema_name(workload)
        try:
            yield Database(url, prefix=prefix)
        finally:
            drop_prefix(url, prefix)
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    url = postgres or postgres_url()
    schema = schema_name(workload)
    try:
        yield Database(url, schema)
    finally:
        drop_schema(url, schema)


@dataclass(frozen=True)
class Rate:
    """`jobs` processed in `seconds`."""

    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Latencies:
    """Enqueue-to-start latencies of one run, in seconds."""

    samples: list[float]
    offered_rate: float
    concurrency: int

    @property
    def count(self) -> int:
        return len(self.samples)

    def percentile(self, p: float) -> float:
        """The p-th percentile (0-100), interpolated between the nearest samples."""
        ordered = sorted(self.samples)
        if len(ordered) == 1:
            return ordered[0]
        rank = (len(ordered) - 1) * p / 100
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)
