"""What the shop's tests share: the backend under test, a worker run in the test's process until
jobs are finished, and one run as `manage.py conveyor_worker`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from django.conf import settings
from structlog.testing import capture_logs

from conveyor.contrib.django import api
from conveyor.contrib.django.backend import ConveyorBackend
from conveyor.testing import drain

#: tests/with_django, where manage.py is
PROJECT = Path(__file__).resolve().parent.parent
#: How long a test waits for jobs to finish before it fails.
TIMEOUT_S = 30.0


def backend(alias: str = api.DEFAULT_TASK_BACKEND_ALIAS) -> ConveyorBackend:
    found = api.task_backends[alias]
    assert isinstance(found, ConveyorBackend)
    return found


def run_until_finished(results: Iterable[Any], alias: str = "default", **worker: Any) -> None:
    """Run workers in this process (`drain`: until nothing is runnable now) until every result
    is finished — retries are due a moment later — and refresh each."""
    pending = list(results)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        drain(backend(alias).app, **worker)
        for result in pending:
            result.refresh()
        if all(result.is_finished for result in pending):
            return
        if time.monotonic() > deadline:
            states = [(result.id, str(result.status)) for result in pending]
            raise AssertionError(f"jobs not finished within {TIMEOUT_S} s: {states}")
        time.sleep(0.02)  # a retry's backoff (settings: 0.05-0.2 s)


def manage(*arguments: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """`python manage.py ...` in a process of its own, with this run's settings."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=PROJECT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def on_postgres() -> bool:
    return bool(settings.DATABASES["default"]["ENGINE"].endswith("postgresql"))


@contextmanager
def conveyor_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event conveyor logs in the block, whatever level the test run shows (the runner
    keeps the workers' logs quiet)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)
