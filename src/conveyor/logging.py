"""Structured logs: stable event names with key=value fields (`job.succeeded job_id=7 ...`).

A logfmt or console event is one line, whatever a job put in its fields: control characters
(newlines included) and bidi controls are written escaped (`\\x1b`, `\\n`), see
`conveyor.terminal`; the traceback the console format prints below an event keeps its lines,
indented. The JSON format escapes them the JSON way.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Collection, MutableMapping
from typing import Any

import structlog

from conveyor.redact import HIDDEN, secret_key, secrets
from conveyor.terminal import printable


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


#: Values the renderers write as they are, with no text of a job's in them.
_SCALARS = (int, float, bool, type(None))


def printable_fields(
    shown: Callable[[Any], str], keep: str = "", indented: Collection[str] = ()
) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    """A processor that escapes the control characters of every field of an event (as
    `conveyor.terminal.printable`), newline and tab included unless `keep` names them, so no
    field can drive a terminal or start a line of its own. `shown` is how the renderer turns a
    value that is not text into text (`str`, `repr`); such a value is replaced by its escaped
    text only when that has something to escape.

    The fields in `indented` (a traceback the console format prints below the event) keep
    their lines, each indented, so none of them, whatever an exception message says, reads
    as an event of its own."""

    def processor(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if type(value) in _SCALARS:
                continue
            text = value if isinstance(value, str) else shown(value)
            if key in indented:
                event[key] = "  " + printable(text, "\n\t").replace("\n", "\n  ")
                continue
            escaped = printable(text, keep)
            if escaped is not text:  # printable hands back what needs no escaping
                event[key] = escaped
        return event

    return processor


def configure_logging(level: str = "INFO", fmt: str = "logfmt", *, cache: bool = True) -> None:
    """Set up structlog for a `conveyor` command: logfmt (default), json or console.

    `cache` freezes each logger's configuration on first use, which keeps logging cheap on the
    hot path; a process that reconfigures logging later (a test suite) passes False.
    """
    renderer: Any
    # JSON escapes control characters itself; logfmt escapes newlines itself (as \n)
    escape: list[Any] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
        escape = [printable_fields(repr, indented=("exception", "stack"))]
    elif fmt == "logfmt":
        renderer = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
        escape = [printable_fields(str, keep="\n")]
    else:
        raise ValueError(f"unknown log format {fmt!r} (use logfmt, json or console)")
    structlog.configure(
        processors=[
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *escape,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    # The connection pool's own notes ("error connecting …") repeat what conveyor's events say.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


class Outage:
    """Logs a run of failures once when it starts (`<event>_failed`, a warning) and once when
    it ends (`<event>_recovered`, with how long it lasted and how many tries failed), not at
    every retry. An error that is not `BackendUnavailable` is logged at error level, with its
    traceback, and a change of error type is logged again."""

    def __init__(self, logger: Any, event: str, **fields: Any) -> None:
        self._log = logger
        self._event = event
        self._fields = fields
        self._since: float | None = None
        self._failures = 0
        self._kind: type[BaseException] | None = None

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, **fields: Any) -> None:
        from conveyor.errors import BackendUnavailable

        self._failures += 1
        if self._since is not None and type(exc) is self._kind:
            return
        if self._since is None:
            self._since = time.monotonic()
        self._kind = type(exc)
        if isinstance(exc, BackendUnavailable):
            self._log.warning(f"{self._event}_failed", **self._fields, **fields, error=str(exc))
        else:
            self._log.error(
                f"{self._event}_failed", **self._fields, **fields, error=repr(exc), exc_info=exc
            )

    def recovered(self) -> None:
        if self._since is None:
            return
        self._log.info(
            f"{self._event}_recovered",
            **self._fields,
            after_s=round(time.monotonic() - self._since, 3),
            failures=self._failures,
        )
        self._since, self._failures, self._kind = None, 0, None
