"""Named SQL: every query the code uses exists, and every query that exists is used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conveyor.backends.sqlite.backend as sqlite_backend
from conveyor.backends.sql import Queries, load_migrations


def test_every_sqlite_query_used_exists_and_none_is_unused() -> None:
    source = Path(sqlite_backend.__file__).read_text()
    used = set(re.findall(r"\bQ\.([a-z_]+)", source)) - {"names"}
    assert used == set(sqlite_backend.Q.names)


def test_every_postgres_query_used_exists_and_none_is_unused() -> None:
    import conveyor.backends.postgres.backend as postgres_backend

    source = Path(postgres_backend.__file__).read_text()
    used = set(re.findall(r"\bq\.([a-z_]+)", source)) - {"names", "substitute"}
    assert used == set(postgres_backend.QUERIES.names)


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
