"""Backends by URL scheme: the registry that `open_backend` and the test suite both iterate."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from conveyor.backends.base import Engine, JobFilter
from conveyor.backends.faces import Backend, Store
from conveyor.clock import Clock
from conveyor.config import Settings
from conveyor.errors import ConfigurationError

__all__ = ["BACKENDS", "Backend", "JobFilter", "Store", "check_url", "kind_of", "open_backend"]


@dataclass(frozen=True, slots=True)
class Kind:
    """A backend conveyor has: its name, the URL schemes it serves, and where its engine is."""

    name: str
    title: str
    schemes: tuple[str, ...]
    #: `module:Class` of its `Engine`, imported when first used
    engine: str
    #: the extra that installs what it needs (`pip install 'conveyor[extra]'`), if any
    extra: str | None = None

    def open(self, url: str, settings: Settings, clock: Clock) -> Engine:
        module, _, name = self.engine.partition(":")
        try:
            engine_class = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ConfigurationError(
                f"the {self.title} backend needs {exc.name}: pip install "
                f"'conveyor[{self.extra}]' ({exc})"
            ) from None
        engine: Engine = engine_class(url, settings, clock)
        return engine


#: Every backend that exists; the contract suite runs on each.
BACKENDS = (
    Kind("sqlite", "SQLite", ("sqlite",), "conveyor.backends.sqlite.backend:SqliteEngine"),
    Kind(
        "postgres",
        "PostgreSQL",
        ("postgresql", "postgres"),
        "conveyor.backends.postgres.backend:PostgresEngine",
        extra="postgres",
    ),
    Kind(
        "redis",
        "Redis",
        ("redis", "rediss"),
        "conveyor.backends.redis.backend:RedisEngine",
        extra="redis",
    ),
)


def kind_of(url: str) -> Kind:
    """The backend for the URL's scheme; a clear error if conveyor has none."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"database URL {url!r} has no scheme; try sqlite:///conveyor.db")
    scheme = scheme.lower()
    for kind in BACKENDS:
        if scheme in kind.schemes:
            return kind
    known = ", ".join(f"{s}://" for kind in BACKENDS for s in kind.schemes)
    raise ConfigurationError(f"unknown database URL scheme {scheme!r} in {url!r} (known: {known})")


def check_url(url: str) -> str:
    """The URL's scheme, if conveyor has a backend for it; a clear error otherwise."""
    kind_of(url)
    return url.partition("://")[0].lower()


def open_backend(url: str, settings: Settings, clock: Clock) -> Backend:
    """The backend for `url` (no connection is made until first use)."""
    return Backend(kind_of(url).open(url, settings, clock))
