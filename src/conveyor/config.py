"""Settings: `App(...)` keyword arguments first, then `CONVEYOR_*` environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from conveyor.errors import ConfigurationError

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: `conveyor serve`: seconds a connection has to send a complete request, and the connections
#: open at once (see `conveyor.web.server`).
SERVE_REQUEST_TIMEOUT_S = 20.0
SERVE_CONNECTION_LIMIT = 256

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `15m`, `90s`, `1w` or plain seconds (`45`, `2.5`) to seconds."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; use a number with an optional unit: "
            "90s, 15m, 12h, 30d, 1w (plain numbers are seconds)"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def _duration(value: Any) -> float:
    return parse_duration(value) if isinstance(value, str) else _at_least_zero(value)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive(kind: Callable[[str], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        value = kind(value) if isinstance(value, str) else value
        if value <= 0:
            raise ValueError(f"must be > 0, got {value!r}")
        return value

    return check


def _at_least_zero(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return number


def _synchronous(value: Any) -> str:
    text = str(value).upper()
    if text not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"must be OFF, NORMAL, FULL or EXTRA, got {value!r}")
    return text


def _optional_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return _bool(str(value))


@dataclass(frozen=True)
class Settings:
    """Every tunable of an App. See docs/configuration.md."""

    database_url: str = "sqlite:///conveyor.db"
    lease_seconds: float = 30.0
    max_attempts: int = 3
    retry_base_delay: float = 2.0
    retry_cap: float = 3600.0
    max_payload_bytes: int = 1024 * 1024
    auto_migrate: bool | None = None
    default_queue: str = "default"
    sqlite_synchronous: str = "NORMAL"
    postgres_schema: str = "conveyor"
    postgres_pool_size: int = 10
    postgres_listen: bool = True
    #: the Redis keys' prefix: every key is `{prefix}:...`, one hash slot
    redis_prefix: str = "conveyor"
    poll_interval: float = 1.0
    connect_timeout: float = 5.0
    #: the longest one statement may take (PostgreSQL: on the server, and the client cuts the
    #: connection a second later); then the call fails with BackendUnavailable
    statement_timeout: float = 30.0
    retention_succeeded: float = 7 * 86400.0
    retention_failed: float = 30 * 86400.0
    #: notifiers as JSON (see conveyor.notify.from_config); App(notifiers=...) takes objects
    alerts: str | None = None
    #: each alert key is sent at most once per this many seconds, cluster-wide
    alert_every: float = 300.0

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from explicit values, falling back to the environment, then defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            parse = _PARSERS[f.name]
            if overrides.get(f.name) is not None:
                source, raw = f"{f.name}=", overrides[f.name]
            elif (var := f"CONVEYOR_{f.name.upper()}") in env:
                source, raw = f"{var}=", env[var]
            else:
                continue
            try:
                values[f.name] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"bad setting {source}{raw!r}: {exc}") from None
        return cls(**values)


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def _identifier(value: Any) -> str:
    text = str(value)
    if not _IDENTIFIER.fullmatch(text):
        raise ValueError("use lower-case letters, digits and _ (a PostgreSQL schema name)")
    return text


_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _prefix(value: Any) -> str:
    text = str(value)
    if not _PREFIX.fullmatch(text):
        raise ValueError("use 1-64 of A-Z a-z 0-9 _ . : - (the Redis keys' prefix)")
    return text


def _queue(value: Any) -> str:
    text = str(value)
    if not QUEUE_NAME.fullmatch(text):
        raise ValueError("queue names are 1-128 characters of A-Z a-z 0-9 _ . : -")
    return text


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "database_url": str,
    "lease_seconds": _positive(float),
    "max_attempts": _positive(int),
    "retry_base_delay": _at_least_zero,
    "retry_cap": _at_least_zero,
    "max_payload_bytes": _positive(int),
    "auto_migrate": _optional_bool,
    "default_queue": _queue,
    "sqlite_synchronous": _synchronous,
    "postgres_schema": _identifier,
    "postgres_pool_size": _positive(int),
    "postgres_listen": lambda v: v if isinstance(v, bool) else _bool(str(v)),
    "redis_prefix": _prefix,
    "poll_interval": _positive(float),
    "connect_timeout": _positive(float),
    "statement_timeout": _positive(float),
    "retention_succeeded": _duration,
    "retention_failed": _duration,
    "alerts": str,
    "alert_every": _duration,
}
