"""Acceptance set-up: `conveyor worker` as a real subprocess on a real SQLite file, a real
PostgreSQL server (the `postgres_project` fixture: a schema of its own, dropped afterwards) or
a real Redis server (the `redis_project` fixture: a key prefix of its own, its keys deleted
afterwards).

A test writes a tasks module into its `tmp_path` (`project.write_tasks(SOURCE)`), enqueues and
inspects jobs from the test process through the same module's App, and starts workers with
`project.start_worker(...)`. Each worker's stdout and stderr (logfmt logs) go to a file the test
reads back as events. Everything waits on a deadline by polling state; no test sleeps to be
correct. Every worker still alive at teardown is killed.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

import conveyor
from conftest import (  # tests/conftest.py
    POSTGRES_URL,
    REDIS_URL,
    drop_prefix,
    drop_schema,
    postgres_available,
    redis_available,
)

#: Generous: the machine is shared and noisy. A passing test never waits this long.
DEADLINE_S = 60.0
POLL_S = 0.02

T = TypeVar("T")

_FIELD = re.compile(r'([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|\S*))?')


def parse_logfmt(line: str) -> dict[str, Any]:
    """One logfmt line to a dict; a bare key (structlog's rendering of True) maps to True."""
    fields: dict[str, Any] = {}
    for match in _FIELD.finditer(line):
        key, value = match.group(1), match.group(2)
        if value is None:
            fields[key] = True
        elif value.startswith('"'):
            fields[key] = re.sub(r"\\(.)", r"\1", value[1:-1])
        else:
            fields[key] = value
    return fields


def wait_until(
    predicate: Callable[[], T | None],
    what: str,
    timeout: float = DEADLINE_S,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout`.
    `on_timeout` says what to show beside the failure (the state reached, logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(POLL_S)


@dataclass
class WorkerProcess:
    """One `conveyor worker` subprocess and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- worker pid {self.pid} log (last {len(text)} lines) ---\n" + "\n".join(text)

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Log events in order, optionally only those named `name` with these field values."""
        found = []
        for line in self.log_text().splitlines():
            if "event=" not in line:
                continue
            event = parse_logfmt(line)
            if name is not None and event.get("event") != name:
                continue
            if any(str(event.get(k)) != str(v) for k, v in fields.items()):
                continue
            found.append(event)
        return found

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def wait_for_event(
        self, name: str, timeout: float = DEADLINE_S, **fields: Any
    ) -> dict[str, Any]:
        """The first event `name` with these fields, once it has been logged."""

        def found() -> dict[str, Any] | None:
            events = self.events(name, **fields)
            if events:
                return events[0]
            if self.proc.poll() is not None:
                # The log is complete: waiting longer cannot help.
                events = self.events(name, **fields)
                if events:
                    return events[0]
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) without logging {name} {fields}\n"
                    + self.tail()
                )
            return None

        return wait_until(found, f"log event {name} {fields}", timeout, on_timeout=self.tail)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker pid {self.pid} still running after {timeout:.0f}s\n" + self.tail()
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class Project:
    """A folder with a tasks module, a database and the workers started on it.

    The database is a SQLite file in the folder; with `postgres_url` and `postgres_schema`, a
    schema of its own on a PostgreSQL server; with `redis_url` and `redis_prefix`, a key prefix
    of its own on a Redis server.
    """

    root: Path
    db_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    apps: list[conveyor.App] = field(default_factory=list)
    postgres_url: str | None = None
    postgres_schema: str | None = None
    redis_url: str | None = None
    redis_prefix: str | None = None

    @property
    def url(self) -> str:
        return self.postgres_url or self.redis_url or f"sqlite:///{self.db_path}"

    def write_tasks(self, source: str, module: str = "tasks") -> ModuleType:
        """Write `module.py` and import it here too (under a private name), so the test can
        enqueue and read jobs through the module's own `app`.

        The module sees `DATABASE_URL`, `POSTGRES_SCHEMA` and `REDIS_PREFIX` (None unless on
        that backend; pass them on as `App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA,
        redis_prefix=REDIS_PREFIX)`) and `WORKDIR` (the test's folder, as a `Path`). Give tasks
        explicit names: the module's name differs between this process and the worker.
        """
        header = (
            "from pathlib import Path\n\n"
            f"DATABASE_URL = {self.url!r}\n"
            f"POSTGRES_SCHEMA = {self.postgres_schema!r}\n"
            f"REDIS_PREFIX = {self.redis_prefix!r}\n"
            f"WORKDIR = Path({str(self.root)!r})\n\n"
        )
        path = self.root / f"{module}.py"
        path.write_text(header + textwrap.dedent(source))
        private = f"_acceptance_{module}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(private, path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        app = getattr(loaded, "app", None)
        if isinstance(app, conveyor.App):
            self.apps.append(app)
        return loaded

    def start_worker(
        self, *args: str, app: str = "tasks:app", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """`python -m conveyor worker APP ARGS...` in the project folder, logs to a file."""
        n = len(self.workers) + 1
        log_path = self.root / f"worker-{n}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root), environ.get("PYTHONPATH", "")) if p
        )
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(env or {})
        command = [sys.executable, "-m", "conveyor", "worker", app, *args]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals meant for pytest never reach the workers
            )
        worker = WorkerProcess(proc, log_path, command)
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(w.tail() for w in self.workers)

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.kill()
        for app in self.apps:
            app.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = Project(root=tmp_path, db_path=tmp_path / "jobs.db")
    try:
        yield proj
    finally:
        proj.cleanup()


@pytest.fixture
def postgres_project(tmp_path: Path) -> Iterator[Project]:
    """A project on the test PostgreSQL server, in a fresh schema (not migrated yet: the test
    calls `app.migrate()`), dropped with everything in it afterwards."""
    postgres_available()
    schema = f"accept_{uuid.uuid4().hex[:12]}"
    proj = Project(
        root=tmp_path,
        db_path=tmp_path / "unused.db",
        postgres_url=POSTGRES_URL,
        postgres_schema=schema,
    )
    try:
        yield proj
    finally:
        try:
            proj.cleanup()
        finally:
            drop_schema(schema)


@pytest.fixture
def redis_project(tmp_path: Path) -> Iterator[Project]:
    """A project on the test Redis database, under a key prefix of its own (pass it on as
    `App(DATABASE_URL, redis_prefix=REDIS_PREFIX)`), its keys deleted afterwards."""
    redis_available()
    prefix = f"accept_{uuid.uuid4().hex[:12]}"
    proj = Project(
        root=tmp_path,
        db_path=tmp_path / "unused.db",
        redis_url=REDIS_URL,
        redis_prefix=prefix,
    )
    try:
        yield proj
    finally:
        try:
            proj.cleanup()
        finally:
            drop_prefix(prefix)


def wait_for_state(
    app: conveyor.App,
    job_id: int,
    states: conveyor.JobState | tuple[conveyor.JobState, ...],
    project: Project | None = None,
    timeout: float = DEADLINE_S,
) -> conveyor.Job:
    """The job, once it is in one of `states`."""
    wanted = states if isinstance(states, tuple) else (states,)

    def reached() -> conveyor.Job | None:
        job = app.get_job(job_id)
        return job if job.state in wanted else None

    return wait_until(
        reached,
        f"job {job_id} to be {'/'.join(s.value for s in wanted)}",
        timeout,
        on_timeout=lambda: (
            f"job is {app.get_job(job_id)!r}\n" + (project.logs() if project else "")
        ),
    )


def event_time(event: dict[str, Any]) -> float:
    """The POSIX time of a logged event (structlog's ISO timestamp)."""
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def transitions(app: conveyor.App, job_id: int) -> list[tuple[str | None, str]]:
    """The job's history as (from, to) state names."""
    return [
        (None if h.from_state is None else h.from_state.value, h.to_state.value)
        for h in app.job_history(job_id)
    ]
