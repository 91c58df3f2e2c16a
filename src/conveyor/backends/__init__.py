"""Backends by URL scheme."""

from __future__ import annotations

from conveyor.backends.base import Backend, Store
from conveyor.clock import Clock
from conveyor.config import Settings
from conveyor.errors import ConfigurationError

__all__ = ["Backend", "Store", "check_url", "open_backend"]

_SCHEMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "postgres": "PostgreSQL"}
_PLANNED = {"redis": "Redis"}


def check_url(url: str) -> str:
    """The URL's scheme, if conveyor has a backend for it; a clear error otherwise."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"database URL {url!r} has no scheme; try sqlite:///conveyor.db")
    scheme = scheme.lower()
    if scheme in _SCHEMES:
        return scheme
    if scheme in _PLANNED:
        raise ConfigurationError(
            f"the {_PLANNED[scheme]} backend is not available in this version of conveyor; "
            "use sqlite:///path.db"
        )
    known = ", ".join(f"{s}://" for s in _SCHEMES)
    raise ConfigurationError(f"unknown database URL scheme {scheme!r} in {url!r} (known: {known})")


def open_backend(url: str, settings: Settings, clock: Clock) -> Backend:
    """The backend for `url` (no connection is made until first use)."""
    if check_url(url) == "sqlite":
        from conveyor.backends.sqlite.backend import SqliteBackend

        return SqliteBackend(url, settings, clock)
    try:
        from conveyor.backends.postgres.backend import PostgresBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"the PostgreSQL backend needs psycopg: pip install 'conveyor[postgres]' ({exc})"
        ) from None
    return PostgresBackend(url, settings, clock)
