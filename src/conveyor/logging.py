"""Structured logs: stable event names with key=value fields (`job.succeeded job_id=7 ...`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from conveyor.redact import HIDDEN, secret_key, secrets


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def redact_secrets(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Values of secret-looking fields (password=, token=, ...) never reach a log line. It runs
    for every log line a worker writes, so the common case (no such key, no nested value) only
    looks at the keys and the values' types, and each key's answer is remembered."""
    for key, value in event.items():
        if secret_key(key) or type(value) in (dict, list, tuple):
            return {k: HIDDEN if secret_key(k) else secrets(v) for k, v in event.items()}
    return event


def configure_logging(level: str = "INFO", fmt: str = "logfmt", *, cache: bool = True) -> None:
    """Set up structlog for a `conveyor` command: logfmt (default), json or console.

    `cache` freezes each logger's configuration on first use, which keeps logging cheap on the
    hot path; a process that reconfigures logging later (a test suite) passes False.
    """
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
    elif fmt == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    else:
        raise ValueError(f"unknown log format {fmt!r} (use logfmt, json or console)")
    structlog.configure(
        processors=[
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    # The connection pool's own notes ("error connecting …") repeat what conveyor's events say.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
