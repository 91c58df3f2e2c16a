"""The `conveyor` command as a user meets it: what it prints, what it exits with, what it stores.

Most tests drive the command in-process with click's CliRunner against a real SQLite file in
`tmp_path`; the tasks live in a small module written there. The worker tests run
`python -m conveyor` as real subprocesses and wait on state with a deadline, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import json
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
from click.testing import CliRunner, Result

import conveyor
from conveyor import JobState
from conveyor.app import BULK_CHUNK
from conveyor.backends.sqlite.backend import MIGRATIONS
from conveyor.cli import main
from conveyor.services.scheduler import Scheduler

T = TypeVar("T")
DEADLINE_S = 60.0
#: the tasks TASKS declares, as an unknown task's error lists them
KNOWN = "add, boom, nap, report, stepped"

TASKS = """
import os
import time

import conveyor

app = conveyor.App(URL, lease_seconds=LEASE)


@app.task(name="add")
def add(x, y):
    return x + y


@app.task(name="boom", max_attempts=2, backoff=conveyor.fixed(0))
def boom(message):
    raise ValueError(message)


@app.task(name="report", pass_context=True)
def report(ctx, pages):
    ctx.progress(60, stage="render")
    return {"pages": pages}


@app.task(name="nap")
def nap(seconds):
    time.sleep(seconds)


@app.task(name="stepped", pass_context=True)
def stepped(ctx, gate, token):
    ctx.progress(30, stage="fetch", message="fetching with " + token)
    while not os.path.exists(gate + ".1"):
        time.sleep(0.01)
    ctx.progress(80, stage="write")
    while not os.path.exists(gate + ".2"):
        time.sleep(0.01)
    return "done"
"""


def wait_until(predicate: Callable[[], T], what: str, timeout: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Project:
    """A tasks module in a temporary folder, its App, and ways to run `conveyor` on it."""

    root: Path
    module: ModuleType
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.module.__name__}:app"

    @property
    def app(self) -> conveyor.App:
        app: conveyor.App = self.module.app
        return app

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """`conveyor --app MODULE:app ARGS...`, in-process; wide, so tables do not wrap."""
        runner = CliRunner(env={"COLUMNS": "200", **(env or {})})
        return runner.invoke(main, ["--app", self.spec, *args])

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m conveyor ARGS...` as a subprocess, to completion."""
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
        )

    def start(self, *args: str, log: str = "worker.log") -> subprocess.Popen[bytes]:
        """`python -m conveyor ARGS...` in the background, its output to a log file."""
        with (self.root / log).open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", *args],
                cwd=self.root,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str = "worker.log") -> str:
        return (self.root / name).read_text()

    def stop_all(self) -> None:
        """Teardown: stop what a test left running, children of supervisors included."""
        if not self.procs:
            return
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for worker in self.app.list_workers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(worker.pid, signal.SIGKILL)


@pytest.fixture
def make_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Project]]:
    projects: list[Project] = []

    def make(url: str | None = None, lease: float = 30.0) -> Project:
        name = f"cli_tasks_{uuid.uuid4().hex[:8]}"
        url = url or f"sqlite:///{tmp_path / (name + '.db')}"
        source = TASKS.replace("URL", repr(url)).replace("LEASE", repr(lease))
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        project = Project(tmp_path, importlib.import_module(name))
        projects.append(project)
        return project

    yield make
    for project in projects:
        project.stop_all()
        project.app.close()
        sys.modules.pop(project.module.__name__, None)


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    return make_project()


def states(app: conveyor.App) -> dict[str, int]:
    """Job counts by state over all queues."""
    totals: dict[str, int] = {}
    for counts in app.queue_stats().values():
        for state, n in counts.items():
            totals[state.value] = totals.get(state.value, 0) + n
    return totals


# -- enqueue ------------------------------------------------------------------------------


def test_enqueue_stores_the_job_and_says_so(project: Project) -> None:
    result = project.cli("enqueue", "add", "--args", "[1, 2]")

    assert result.exit_code == 0, result.output
    job = project.app.list_jobs()[0]
    assert (job.task, job.args, job.state) == ("add", [1, 2], JobState.QUEUED)
    assert f"job {job.id} enqueued: add on queue default, priority 5, queued" in result.output


def test_enqueue_options_and_json(project: Project) -> None:
    out = project.cli_json(
        "enqueue",
        "add",
        "--args",
        "[1]",
        "--kwargs",
        '{"y": 2}',
        "--priority",
        "high",
        "--delay",
        "1h",
        "--queue",
        "mail",
    )

    assert out["state"] == "scheduled"
    assert (out["args"], out["kwargs"], out["priority"], out["queue"]) == ([1], {"y": 2}, 3, "mail")
    assert out["run_at"] - out["created_at"] == pytest.approx(3600)
    stored = project.app.get_job(out["id"])
    assert stored.state is JobState.SCHEDULED and stored.queue == "mail"

    human = project.cli("enqueue", "add", "--args", "[1, 2]", "--delay", "90")
    assert "scheduled (runs in 1m)" in human.output


def test_enqueue_with_a_unique_key_returns_the_holder(project: Project) -> None:
    first = project.cli_json("enqueue", "add", "--args", "[1, 2]", "--unique-key", "sum:1:2")
    assert (first["unique_key"], first["deduplicated"]) == ("sum:1:2", False)

    again = project.cli("enqueue", "add", "--args", "[1, 2]", "--unique-key", "sum:1:2")
    assert again.exit_code == 0, again.output
    assert (
        f"job {first['id']} already holds unique key 'sum:1:2': add on queue default, queued; "
        "nothing enqueued"
    ) in again.output
    assert len(project.app.list_jobs()) == 1

    project.app.run_worker(burst=True)
    recent = project.cli_json(
        "enqueue", "add", "--args", "[1, 2]", "--unique-key", "sum:1:2", "--unique-for", "1h"
    )
    assert (recent["id"], recent["deduplicated"], recent["result"]) == (first["id"], True, 3)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["enqueue", "add", "--args", "[1, 2]", "--unique-for", "1h"],
            1,
            "unique_for needs a unique_key",
        ),
        (["enqueue", "add", "--args", "[1, 2]", "--unique-key", ""], 1, "unique_key must be"),
        (["enqueue", "add", "--args", "[1,"], 2, "--args': not valid JSON"),
        (["enqueue", "add", "--args", '{"x": 1}'], 2, "must be an array"),
        (["enqueue", "add", "--kwargs", "[1]"], 2, "must be an object"),
        (["enqueue", "nope"], 1, f"Error: unknown task 'nope' (known: {KNOWN})"),
        (
            ["enqueue", "add", "--args", "[1, 2]", "--priority", "11"],
            1,
            "priority must be an integer from 1 (highest) to 10, got 11",
        ),
        (["enqueue", "add", "--args", "[1, 2]", "--priority", "urgent"], 1, "unknown priority"),
        (["enqueue", "add", "--args", "[1, 2]", "--queue", "no spaces"], 1, "bad queue name"),
        (["enqueue", "add", "--args", "[1]"], 1, "'y'"),
        (["enqueue", "add", "--args", "[1, 2]", "--delay", "soon"], 2, "'soon' is not a duration"),
        (["enqueue", "add", "--args", "[1, 2]", "--delay", "-5"], 2, "is not a duration"),
        (["jobs", "show", "999"], 1, "Error: no job with id 999"),
        (["jobs", "cancel", "999"], 1, "Error: no job with id 999"),
        (["jobs", "retry", "999"], 1, "Error: no job with id 999"),
        (["jobs", "list", "--state", "finished"], 2, "unknown state 'finished'"),
        (["dlq", "purge", "--older-than", "30x"], 2, "'30x' is not a duration"),
        (["dlq", "purge"], 2, "Missing option '--older-than'"),
        (["dlq", "retry"], 2, "give job ids, or --all"),
        (["dlq", "retry", "1", "--all"], 2, "give job ids, or --all"),
        (["prune", "--older-than", "a week"], 2, "is not a duration"),
        (["worker", "-c", "2147483648"], 2, "not in the range 1<=x<=2147483647"),
    ],
)
def test_bad_input_gets_a_clear_error_and_nothing_is_stored(
    project: Project, args: list[str], code: int, message: str
) -> None:
    result = project.cli(*args)

    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert project.app.queue_stats() == {}


def test_the_app_comes_from_the_option_or_the_environment(project: Project) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["jobs", "list"])
    assert missing.exit_code == 2
    assert "name the app as MODULE:APP (or set CONVEYOR_APP)" in missing.output

    from_env = runner.invoke(
        main, ["enqueue", "add", "--args", "[1, 2]"], env={"CONVEYOR_APP": project.spec}
    )
    assert from_env.exit_code == 0, from_env.output
    assert len(project.app.list_jobs()) == 1

    no_module = runner.invoke(main, ["--app", "no_such_module_here:app", "queues"])
    assert no_module.exit_code == 2
    assert "cannot import 'no_such_module_here'" in no_module.output
    no_attr = runner.invoke(main, ["--app", f"{project.module.__name__}:nope", "queues"])
    assert "has no attribute 'nope'" in no_attr.output
    not_an_app = runner.invoke(main, ["--app", f"{project.module.__name__}:add", "queues"])
    assert "is not a conveyor.App (found Task)" in not_an_app.output
    bad_form = runner.invoke(main, ["--app", "just_a_module", "queues"])
    assert "app must be given as MODULE:APP" in bad_form.output


def test_a_file_that_is_not_a_conveyor_database_is_a_one_line_error(
    make_project: Callable[..., Project], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("shopping list: milk, eggs\n" * 100)
    project = make_project(url=f"sqlite:///{notes}")

    result = project.cli("jobs", "list")

    assert result.exit_code == 1
    assert "is not a SQLite database" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- jobs ---------------------------------------------------------------------------------


def make_history(project: Project) -> dict[str, conveyor.Job]:
    """A succeeded add, a dead boom, a succeeded report, a queued add in another queue."""
    app = project.app
    jobs = {
        "add": project.module.add.enqueue(2, 3),
        "boom": project.module.boom.enqueue("the [red]printer[/red] is on fire"),
        "report": project.module.report.enqueue(12),
    }
    app.run_worker(burst=True)
    jobs["later"] = project.module.add.configure(queue="mail").enqueue(4, 5)
    for job in jobs.values():
        job.refresh()
    return jobs


def test_jobs_list_shows_a_table_and_filters(project: Project) -> None:
    jobs = make_history(project)

    result = project.cli("jobs", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = {
        name: next(line for line in lines if line.strip().startswith(f"{job.id} "))
        for name, job in jobs.items()
    }
    assert "succeeded" in row["add"] and "add" in row["add"]
    assert "dead" in row["boom"] and "2/2" in row["boom"]
    # Text from a job is printed as it is, not read as markup.
    assert "ValueError: the [red]printer[/red] is on fire" in row["boom"]
    assert "queued" in row["later"] and "mail" in row["later"]

    dead = project.cli("jobs", "list", "--state", "dead")
    assert "boom" in dead.output and "succeeded" not in dead.output

    listed = project.cli_json("jobs", "list", "--state", "succeeded,queued", "--task", "add")
    assert [j["id"] for j in listed] == [jobs["later"].id, jobs["add"].id]
    assert listed[1]["result"] == 5 and listed[1]["state"] == "succeeded"

    in_mail = project.cli_json("jobs", "list", "--queue", "mail")
    assert [j["id"] for j in in_mail] == [jobs["later"].id]

    page = project.cli("jobs", "list", "--limit", "2")
    assert f"--before-id {jobs['report'].id}" in page.output
    older = project.cli_json("jobs", "list", "--before-id", str(jobs["report"].id))
    assert [j["id"] for j in older] == [jobs["boom"].id, jobs["add"].id]


def test_jobs_show_prints_fields_errors_with_tracebacks_and_history(project: Project) -> None:
    jobs = make_history(project)

    result = project.cli("jobs", "show", str(jobs["boom"].id))

    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Job {jobs['boom'].id}  boom  dead" in out
    assert "attempt   2 of 2" in out
    assert '["the [red]printer[/red] is on fire"]' in out
    assert "Errors (2)" in out
    assert out.count("Traceback (most recent call last):") == 2
    assert "raise ValueError(message)" in out
    assert out.count("ValueError: the [red]printer[/red] is on fire") >= 4
    timeline = out[out.index("History") :]
    steps = [
        "(new) → queued",
        "queued → running",
        "running → retrying",
        "retrying → queued",
        "queued → running",
        "running → dead",
    ]
    position = 0
    for step in steps:
        position = timeline.index(step, position) + len(step)

    report = project.cli("jobs", "show", str(jobs["report"].id)).output
    assert "stage     render" in report
    assert 'result    {"pages": 12}' in report
    assert "Errors (0)" in report


def test_jobs_show_json_includes_the_history(project: Project) -> None:
    jobs = make_history(project)

    out = project.cli_json("jobs", "show", str(jobs["report"].id))

    assert out["state"] == "succeeded" and out["result"] == {"pages": 12}
    assert out["stage"] == "render"
    assert [(h["from"], h["to"]) for h in out["history"]] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    dead = project.cli_json("dlq", "show", str(jobs["boom"].id))
    assert [e["type"] for e in dead["errors"]] == ["ValueError", "ValueError"]
    assert "raise ValueError(message)" in dead["errors"][0]["traceback"]


@pytest.mark.slow
def test_jobs_watch_follows_a_job_live_and_exits_0_when_it_succeeds(project: Project) -> None:
    gate = project.root / "gate"
    job = project.module.stepped.enqueue(str(gate), token="s3cr3t-value")
    watch = project.start("--app", project.spec, "jobs", "watch", str(job.id), log="watch.log")
    wait_until(lambda: "queued" in project.log("watch.log"), "the watch to show the job")
    project.start("worker", project.spec)
    wait_until(lambda: "30%" in project.log("watch.log"), "the watch to show the first report")
    assert watch.poll() is None  # the job waits at its first gate: still watching
    gate.with_suffix(".1").write_text("")
    wait_until(lambda: "80%" in project.log("watch.log"), "the watch to show the second report")
    assert watch.poll() is None  # at its second gate

    gate.with_suffix(".2").write_text("")
    assert watch.wait(timeout=DEADLINE_S) == 0
    lines = [line.split(" ", 1)[1] for line in project.log("watch.log").splitlines()]
    assert lines == [
        "queued attempt 0/3",
        "running attempt 1/3",
        "running attempt 1/3 30% · fetch · fetching with ***",  # its token hidden
        "running attempt 1/3 80% · write",
        "succeeded attempt 1/3 100% · write",
    ]


def test_jobs_watch_of_a_finished_job_shows_how_it_ended_and_exits_1_if_it_failed(
    project: Project,
) -> None:
    jobs = make_history(project)

    done = project.cli("jobs", "watch", str(jobs["report"].id))
    assert done.exit_code == 0, done.output
    assert done.output.split(" ", 1)[1] == "succeeded attempt 1/3 100% · render\n"
    dead = project.cli("jobs", "watch", str(jobs["boom"].id), "--json")
    assert dead.exit_code == 1
    [shown] = [json.loads(line) for line in dead.output.splitlines()]
    assert shown["state"] == "dead" and shown["attempt"] == 2 and shown["max_attempts"] == 2
    missing = project.cli("jobs", "watch", "999999")
    assert missing.exit_code == 1 and "no job with id 999999" in missing.output


def test_jobs_cancel_all_of_a_queue(project: Project) -> None:
    mail = project.module.add.configure(queue="mail").enqueue_many([(1, 2), (3, 4)])
    later = project.module.add.configure(queue="mail", delay=3600).enqueue(5, 6)
    kept = project.module.add.enqueue(7, 8)

    queued_only = project.cli("jobs", "cancel", "--all", "-q", "mail", "-s", "queued")
    assert queued_only.exit_code == 0, queued_only.output
    assert queued_only.output.strip() == "cancelled 2 jobs"
    assert {project.app.get_job(j.id).state for j in mail} == {JobState.CANCELLED}
    assert project.cli("jobs", "cancel", "--all", "-q", "mail").output.strip() == (
        "cancelled 1 job"
    )
    assert project.app.get_job(later.id).state is JobState.CANCELLED
    assert project.app.get_job(kept.id).state is JobState.QUEUED

    for args, message in [
        (["--all"], "give a queue or a task"),
        (["1", "--all", "-q", "mail"], "give job ids, or --all"),
        (["-q", "mail"], "give job ids, or --all"),
        (["1", "-q", "mail"], "go with --all"),
        (["--all", "-q", "mail", "-s", "running"], "not started yet"),
    ]:
        result = project.cli("jobs", "cancel", *args)
        assert result.exit_code != 0 and message in result.output, (args, result.output)


def test_jobs_cancel_and_retry(project: Project) -> None:
    jobs = make_history(project)
    later = jobs["later"].id

    cancelled = project.cli("jobs", "cancel", str(later))
    assert cancelled.exit_code == 0, cancelled.output
    assert f"job {later} cancelled (it was queued)" in cancelled.output
    assert project.app.get_job(later).state is JobState.CANCELLED
    note = project.app.job_history(later)[-1].note
    assert note is not None and re.fullmatch(r"cancelled by \S+@\S+", note), note
    again = project.cli("jobs", "cancel", str(later))
    assert again.exit_code == 0 and f"job {later} was already cancelled" in again.output

    finished = project.cli("jobs", "cancel", str(jobs["add"].id))
    assert finished.exit_code == 1
    assert f"job {jobs['add'].id} already succeeded; nothing to cancel" in finished.output

    retried = project.cli("jobs", "retry", str(later), str(jobs["boom"].id))
    assert retried.exit_code == 0, retried.output
    assert f"job {later} (add) is queued again" in retried.output
    assert project.app.get_job(jobs["boom"].id).state is JobState.QUEUED

    refused = project.cli("jobs", "retry", str(jobs["add"].id))
    assert refused.exit_code == 1
    assert "only dead or cancelled jobs can be retried" in refused.output


# -- the dead-letter queue ----------------------------------------------------------------


def test_dlq_list_show_retry_and_purge(project: Project) -> None:
    boom = project.module.boom
    first, second = boom.enqueue("disk full"), boom.enqueue("network down")
    ok = project.module.add.enqueue(1, 1)
    project.app.run_worker(burst=True)

    listed = project.cli("dlq", "list")
    assert listed.exit_code == 0, listed.output
    assert "ValueError: disk full" in listed.output
    assert "ValueError: network down" in listed.output
    assert '["disk full"]' in listed.output
    assert [j["id"] for j in project.cli_json("dlq", "list")] == [second.id, first.id]

    shown = project.cli("dlq", "show", str(first.id))
    assert "Traceback (most recent call last):" in shown.output

    one = project.cli("dlq", "retry", str(first.id))
    assert one.exit_code == 0 and f"job {first.id} (boom) is queued again" in one.output
    assert project.app.get_job(first.id).attempt == 0
    project.app.run_worker(burst=True)

    everything = project.cli("dlq", "retry", "--all", "--task", "boom")
    assert everything.exit_code == 0 and "retried 2 dead jobs" in everything.output
    assert states(project.app) == {"queued": 2, "succeeded": 1}
    nothing = project.cli("dlq", "retry", "--all", "--queue", "elsewhere")
    assert "retried 0 dead jobs" in nothing.output
    project.app.run_worker(burst=True)

    recent = project.cli("dlq", "purge", "--older-than", "30d")
    assert recent.exit_code == 0 and "purged 0 dead jobs older than 30d" in recent.output
    assert states(project.app) == {"dead": 2, "succeeded": 1}
    purged = project.cli("dlq", "purge", "--older-than", "0")
    assert "purged 2 dead jobs older than 0s" in purged.output
    assert states(project.app) == {"succeeded": 1}
    assert project.app.get_job(ok.id).state is JobState.SUCCEEDED
    assert "no dead jobs" in project.cli("dlq", "list").output
    assert project.cli_json("dlq", "list") == []


def test_prune_deletes_finished_jobs_older_than_the_duration(project: Project) -> None:
    make_history(project)
    project.cli("jobs", "cancel", str(project.module.add.enqueue(7, 8).id))

    kept = project.cli("prune", "--older-than", "7d")
    assert kept.exit_code == 0 and "pruned 0 finished jobs older than 7d" in kept.output
    assert states(project.app) == {"succeeded": 2, "dead": 1, "cancelled": 1, "queued": 1}

    only_dead = project.cli("prune", "--older-than", "0s", "--state", "dead")
    assert "pruned 1 dead job older than 0s" in only_dead.output
    pruned = project.cli("prune", "--older-than", "0s")
    assert "pruned 3 finished jobs" in pruned.output
    assert states(project.app) == {"queued": 1}


def test_bulk_commands_draw_a_progress_bar_on_a_terminal_and_none_when_piped(
    project: Project,
) -> None:
    """On a terminal, prune, dlq purge, dlq retry --all and jobs cancel --all show a bar of the
    jobs done out of all; piped, only their summary."""
    add = project.module.add
    count = BULK_CHUNK + 3
    add.enqueue_many([(i, i) for i in range(count)])
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}

    cancelled = project.cli("jobs", "cancel", "--all", "--task", add.name, env=terminal)
    assert cancelled.exit_code == 0, cancelled.output
    assert f"{count}/{count}" in cancelled.output and "cancelling" in cancelled.output
    assert f"cancelled {count} jobs" in cancelled.output

    pruned = project.cli("prune", "--older-than", "0s", env=terminal)
    assert f"{count}/{count}" in pruned.output and "pruning" in pruned.output
    assert f"pruned {count} finished jobs" in pruned.output

    add.enqueue_many([(i, i) for i in range(3)])
    piped = project.cli("jobs", "cancel", "--all", "--task", add.name)
    assert piped.output == "cancelled 3 jobs\n"
    assert project.cli("prune", "--older-than", "0s").output == (
        "pruned 3 finished jobs older than 0s\n"
    )


# -- queues, workers, migrate -------------------------------------------------------------


def test_queues_counts_jobs_per_queue_and_state(project: Project) -> None:
    assert "no jobs yet" in project.cli("queues").output
    make_history(project)

    found = project.cli_json("queues")
    assert set(found) == {"default", "mail"}
    assert found["default"] == {
        "paused": False,
        "concurrency": None,
        "jobs": {**dict.fromkeys((s.value for s in JobState), 0), "succeeded": 2, "dead": 1},
    }
    assert found["mail"]["jobs"]["queued"] == 1

    table = project.cli("queues").output
    default = next(line for line in table.splitlines() if line.strip().startswith("default"))
    assert default.split() == ["default", "·", "2", "1", "3"]  # queued, succeeded, dead, total
    assert "all" in table


def test_circuits_lists_state_and_changes_and_closes_by_hand(project: Project) -> None:
    from conveyor.circuit import Action

    app = project.module.app
    assert "no circuits declared or recorded" in project.cli("circuits").output
    app.backend.sync.change_circuit(
        "render", Action.FAILURE, app.clock.now(), threshold=1, reason="ConnectionRefusedError"
    )
    found = project.cli_json("circuits")
    assert [(c["name"], c["state"], c["failures"]) for c in found["circuits"]] == [
        ("render", "open", 1),
    ]
    assert [(e["event"], e["reason"]) for e in found["log"]] == [
        ("opened", "ConnectionRefusedError"),
    ]
    table = project.cli("circuits").output
    assert "render" in table and "open" in table and "Latest changes" in table

    closed = project.cli("circuits", "close", "render", "billing")
    assert closed.exit_code == 0, closed.output
    assert closed.stdout.splitlines() == ["closed render", "billing was not open"]
    after = project.cli_json("circuits")
    assert after["circuits"][0]["state"] == "closed"
    assert after["log"][0]["event"] == "closed"
    assert after["log"][0]["reason"].startswith("closed by ")
    assert after["log"][0]["open_for"] is not None


def test_queues_show_concurrency_limits_declared_by_workers(project: Project) -> None:
    project.module.app.queue("video", concurrency=3)
    project.module.app.run_worker(burst=True)  # a worker writes its app's queue limits
    found = project.cli_json("queues")
    assert found["video"]["concurrency"] == 3
    assert found["video"]["jobs"]["queued"] == 0  # listed for its limit, before any jobs
    video = next(line for line in project.cli("queues").output.splitlines() if "video" in line)
    assert "≤3 at once" in video


def test_queues_pause_and_resume(project: Project) -> None:
    job = project.module.add.configure(queue="mail").enqueue(1, 2)

    paused = project.cli("queues", "pause", "mail", "video")
    assert paused.exit_code == 0, paused.output
    assert paused.output.splitlines() == ["paused mail", "paused video"]
    assert project.cli("queues", "pause", "mail").output.strip() == "mail was already paused"
    found = project.cli_json("queues")
    assert {name: q["paused"] for name, q in found.items()} == {"mail": True, "video": True}
    assert found["video"]["jobs"]["queued"] == 0  # paused before it has any jobs
    table = project.cli("queues").output
    assert next(line for line in table.splitlines() if "mail" in line).split()[:2] == [
        "mail",
        "paused",
    ]

    project.app.run_worker(burst=True)
    assert project.app.get_job(job.id).state is JobState.QUEUED

    resumed = project.cli("queues", "resume", "mail")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.strip() == "resumed mail"
    assert project.cli("queues", "resume", "mail").output.strip() == "mail was not paused"
    project.app.run_worker(burst=True)
    assert project.app.get_job(job.id).result == 3


def test_queues_pause_refuses_a_bad_name(project: Project) -> None:
    result = project.cli("queues", "pause", "no spaces")
    assert result.exit_code != 0
    assert "bad queue name" in result.output
    assert project.cli_json("queues") == {}


def test_cron_lists_schedules_next_ticks_and_last_jobs(project: Project) -> None:
    assert "no periodic jobs declared" in project.cli("cron").output
    app = project.app
    app.clock = conveyor.FrozenClock(dt.datetime(2027, 3, 1, 8, 59, tzinfo=dt.UTC).timestamp())

    @app.periodic("0 * * * *", name="hourly-sum", tz="Europe/Paris", args=[1, 2])
    def hourly_sum(x: int, y: int) -> int:
        return x + y

    [entry] = project.cli_json("cron")
    assert entry["next_tick"] == dt.datetime(2027, 3, 1, 9, 0, tzinfo=dt.UTC).timestamp()
    assert (entry["schedule"], entry["tz"], entry["args"], entry["last_job_id"]) == (
        "0 * * * *",
        "Europe/Paris",
        [1, 2],
        None,
    )

    leader = Scheduler(app, app.backend, interval=10.0)
    asyncio.run(leader.run_once())
    app.clock.advance(61)  # 09:00:01 UTC, 10:00 in Paris
    asyncio.run(leader.run_once())
    app.run_worker(burst=True)

    [entry] = project.cli_json("cron")
    job = app.get_job(entry["last_job_id"])
    assert (job.task, job.result, entry["last_job_state"]) == ("hourly-sum", 3, "succeeded")
    line = next(x for x in project.cli("cron").output.splitlines() if "hourly-sum" in x)
    assert "0 * * * * (Europe/Paris)" in line
    assert "2027-03-01 11:00 CET (in 59m" in line
    assert f"{job.id} succeeded" in line


def test_migrate_applies_the_schema_once(project: Project) -> None:
    first = project.cli("migrate")
    assert first.exit_code == 0, first.output
    assert "applied migration" in first.output and " 1" in first.output

    second = project.cli("migrate")
    assert second.exit_code == 0
    assert (
        f"up to date at schema version {MIGRATIONS[-1].version}; nothing to apply" in second.output
    )


def test_workers_shows_a_live_worker_and_then_marks_it_lost(
    make_project: Callable[..., Project],
) -> None:
    project = make_project(lease=1.0)
    proc = project.start("worker", project.spec, "-c", "2")
    wait_until(project.app.list_workers, "the worker to register")

    [alive] = project.cli_json("workers")
    assert alive["pid"] == proc.pid and alive["lost"] is False
    table = project.cli("workers").output
    assert str(proc.pid) in table and "alive" in table

    proc.kill()
    proc.wait()
    wait_until(lambda: project.cli_json("workers")[0]["lost"], "the worker to be shown lost")
    line = next(x for x in project.cli("workers").output.splitlines() if str(proc.pid) in x)
    assert "lost" in line


# -- the real command, as a subprocess ----------------------------------------------------


def test_python_m_conveyor_is_the_same_command(project: Project) -> None:
    helped = project.run("--help")
    assert helped.returncode == 0
    for command in ("worker", "enqueue", "jobs", "dlq", "queues", "workers", "migrate", "prune"):
        assert command in helped.stdout

    enqueued = project.run("--app", project.spec, "enqueue", "add", "--args", "[2, 3]", "--json")
    assert enqueued.returncode == 0, enqueued.stderr
    job = json.loads(enqueued.stdout)

    worked = project.run("worker", project.spec, "--burst")
    assert worked.returncode == 0, worked.stderr
    assert "event=job.succeeded" in worked.stderr

    listed = project.run("--app", project.spec, "jobs", "list", "--json")
    assert [(j["id"], j["state"], j["result"]) for j in json.loads(listed.stdout)] == [
        (job["id"], "succeeded", 5)
    ]

    bad = project.run("--app", project.spec, "enqueue", "nope")
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"Error: unknown task 'nope' (known: {KNOWN})"

    no_app = project.run("worker")
    assert no_app.returncode == 2 and "name the app as MODULE:APP" in no_app.stderr


# -- worker -p N --------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def registered(project: Project, count: int) -> Callable[[], list[conveyor.WorkerInfo]]:
    def check() -> list[conveyor.WorkerInfo]:
        now = time.time()
        live = [w for w in project.app.list_workers() if not w.is_lost(now, 30.0)]
        return live if len(live) >= count else []

    return check


@pytest.mark.slow
def test_worker_with_two_processes_drains_the_queue_and_stops_on_sigterm(
    project: Project,
) -> None:
    supervisor = project.start("worker", project.spec, "-p", "2", "-c", "4", "--grace", "5")
    children = wait_until(registered(project, 2), "both worker processes to register")
    assert len({w.pid for w in children}) == 2 and supervisor.pid not in {w.pid for w in children}

    project.module.nap.enqueue_many([(0.01,)] * 300)
    wait_until(lambda: states(project.app) == {"succeeded": 300}, "all 300 jobs to succeed")

    ran_on = {j.worker_id for j in project.app.list_jobs(limit=1000)}
    assert ran_on == {w.id for w in children}

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=DEADLINE_S) == 0
    assert project.app.list_workers() == []
    assert not any(alive(w.pid) for w in children)
    log = project.log()
    assert "event=supervisor.stopping signal=SIGTERM" in log
    assert log.count("event=supervisor.child_exited") == 2


@pytest.mark.slow
def test_supervisor_restarts_a_child_that_dies(project: Project) -> None:
    supervisor = project.start("worker", project.spec, "-p", "2", "-c", "2")
    first = wait_until(registered(project, 2), "both worker processes to register")
    victim = first[0]

    os.kill(victim.pid, signal.SIGKILL)

    def replaced() -> bool:
        pids = {w.pid for w in registered(project, 2)() if w.pid != victim.pid}
        return len(pids) == 2 and pids != {w.pid for w in first}

    wait_until(replaced, "a new worker process in place of the killed one")
    assert re.search(
        rf"event=supervisor\.child_died slot=\d pid={victim.pid} exit_code=-9", project.log()
    )
    job = project.module.add.enqueue(20, 22)
    assert job.wait(timeout=DEADLINE_S) == 42

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=DEADLINE_S) == 0


@pytest.mark.slow
def test_a_process_that_ran_its_max_jobs_is_replaced_by_a_fresh_one_of_the_same_name(
    project: Project,
) -> None:
    project.module.add.enqueue_many([(i, i) for i in range(20)])
    supervisor = project.start(
        "worker", project.spec, "-p", "2", "-c", "2", "--max-jobs", "3", "--name", "render"
    )
    wait_until(lambda: states(project.app) == {"succeeded": 20}, "all 20 jobs to succeed")

    jobs = project.app.list_jobs(limit=100)
    per_process: dict[str, int] = {}
    for job in jobs:
        assert job.result == 2 * job.args[0] and job.attempt == 1
        assert job.worker_id is not None
        per_process[job.worker_id] = per_process.get(job.worker_id, 0) + 1
    # no process ran more than three, so at least seven took part, one after the other, each
    # named for its slot (a replacement takes the name its predecessor gave up)
    assert max(per_process.values()) <= 3 and len(per_process) >= 7
    assert {worker.rpartition(":")[0] for worker in per_process} == {"render-1", "render-2"}
    # at least six processes ran three each and left; the last may still be on its way out
    wait_until(
        lambda: project.log().count("event=supervisor.child_replaced") >= 6,
        "the supervisor to replace the processes that ran their three jobs",
    )

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=DEADLINE_S) == 0


def test_max_jobs_with_burst_is_refused_for_several_processes(project: Project) -> None:
    refused = project.run("worker", project.spec, "-p", "2", "--burst", "--max-jobs", "5")
    assert refused.returncode == 2
    assert "--max-jobs with --burst needs -p 1" in refused.stderr
    assert project.app.list_workers() == []


@pytest.mark.slow
def test_a_second_signal_reaches_the_children_and_they_hand_back_at_once(
    project: Project,
) -> None:
    supervisor = project.start("worker", project.spec, "-p", "2", "-c", "1", "--grace", "60")
    wait_until(registered(project, 2), "both worker processes to register")
    naps = project.module.nap.enqueue_many([(120,), (120,)])
    wait_until(lambda: states(project.app) == {"running": 2}, "both long jobs to start")

    supervisor.send_signal(signal.SIGTERM)
    wait_until(
        lambda: project.log().count("event=worker.stopping") == 2,
        "both children to start a graceful stop",
    )
    assert supervisor.poll() is None  # still waiting for the 120-second jobs

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=DEADLINE_S) == 0
    for job in naps:
        job.refresh()
        assert (job.state, job.attempt) == (JobState.QUEUED, 0)
    assert "event=supervisor.hand_back_now" in project.log()
