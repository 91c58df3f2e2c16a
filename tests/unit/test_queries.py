"""Named SQL: every query the code uses exists, and every query that exists is used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conveyor.backends.sqlite.backend as sqlite_backend
import conveyor.backends.sqlops as sqlops
from conveyor.backends.sql import Queries, load_migrations


def _used(*modules: object) -> set[str]:
    """The queries named in these modules' source (`q.name` or `Q.name`)."""
    used: set[str] = set()
    for module in modules:
        source = Path(str(getattr(module, "__file__", ""))).read_text()
        used |= set(re.findall(r"\b[qQ]\.([a-z_]+)", source))
    return used - {"names", "substitute"}


def test_every_sqlite_query_used_exists_and_none_is_unused() -> None:
    # every commit wakes SQLite's watchers by itself (`commits_wake`): no statement does
    assert _used(sqlite_backend, sqlops) - {"wake_held"} == set(sqlite_backend.Q.names)
    assert sqlite_backend.SqliteOperations.commits_wake


def test_every_postgres_query_used_exists_and_none_is_unused() -> None:
    import conveyor.backends.postgres.backend as postgres_backend

    assert _used(postgres_backend, sqlops) == set(postgres_backend.QUERIES.names)


def test_a_missing_query_is_a_clear_error() -> None:
    queries = Queries("-- name: one\nSELECT 1;\n", "test.sql")
    assert queries.one == "SELECT 1"
    with pytest.raises(AttributeError, match=r"test\.sql has no query named 'two'"):
        _ = queries.two


def test_duplicate_query_names_are_refused() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n", "dup.sql")


def test_migrations_are_numbered_from_one() -> None:
    for package in ("conveyor.backends.sqlite.migrations", "conveyor.backends.postgres.migrations"):
        migrations = load_migrations(package)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert all(m.up and m.down for m in migrations)
