"""What people see of a job that holds secrets or hostile text, on a real SQLite store: the
CLI's tables, detail views and JSON, the HTTP API, the dashboard, alerts and a worker's log
lines show no secret the App's redaction hid, no probe URL credentials, and no control
character a terminal would obey.

The CLI runs in-process with click's CliRunner (its output is no terminal, so rich adds no
escape sequences of its own); the worker whose log lines are read runs as a real subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

import conveyor
from conveyor.cli import main
from conveyor.web import create_api

PASSWORD = "hunter2-horse-battery"
API_KEY = "sk_live_0123456789abcdef"
PROBE = "https://probe-user:pr0be-pa55word@billing.example:8443/health?token=pr0be-t0ken-value#top"
PROBE_SHOWN = "https://billing.example:8443/health?token="
#: an OSC 52 clipboard write, a screen clear, a bidi override, markup and a forged log line
MESSAGE = (
    "copy \x1b]52;c;aGVsbG8=\x07 clear \x1b[2J csi \x9b1m [red]x[/red] "
    "[link=https://evil.example/]click[/link] \u202eevil\nlevel=error event=forged"
)
STAGE = "stage \x1b[31mred\x1b[0m"
DISCARD = "gone \x00 \x1b[2J for good"
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\x00")

TASKS = f"""
import conveyor

alerts = []


class Recorder:
    def send(self, alert):
        alerts.append(alert)


app = conveyor.App(URL, notifiers=[Recorder()])
billing = app.circuit("billing", failure_threshold=1, probe={PROBE!r})


@app.task(name="login")
def login(user, password):
    return {{"user": user, "password": password, "greeting": f"hi {{user}}, yours is {{password}}"}}


@app.task(name="charge", max_attempts=1, alert_on_dead=True)
def charge(card, api_key):
    raise ValueError(f"card {{card}} refused for key {{api_key}}")


@app.task(name="hostile", max_attempts=1, pass_context=True)
def hostile(ctx):
    ctx.progress(50, stage={STAGE!r})
    raise RuntimeError({MESSAGE!r})


@app.task(name="discard", max_attempts=1)
def discard():
    raise conveyor.Discard({DISCARD!r})
"""


@dataclass
class Project:
    """A tasks module in a temporary folder, its App, and `conveyor` run on it."""

    root: Path
    module: ModuleType

    @property
    def app(self) -> conveyor.App:
        app: conveyor.App = self.module.app
        return app

    @property
    def spec(self) -> str:
        return f"{self.module.__name__}:app"

    def cli(self, *args: str) -> Result:
        """`conveyor --app MODULE:app ARGS...`, in-process, wide enough that nothing wraps."""
        result = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["--app", self.spec, *args])
        assert result.exit_code == 0, result.output
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m conveyor ARGS...` as a subprocess, to completion."""
        path = os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH")) if p)
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": path},
        )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    name = f"shown_tasks_{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / (name + '.db')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TASKS.replace("URL", repr(url))))
    monkeypatch.syspath_prepend(str(tmp_path))
    found = Project(tmp_path, importlib.import_module(name))
    yield found
    found.app.close()
    sys.modules.pop(name, None)


def web(project: Project) -> TestClient:
    """The API and dashboard without tokens, asked from this machine (all it answers to)."""
    api = create_api(project.app, None)
    return TestClient(api, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 50000))


@dataclass
class Jobs:
    login: conveyor.Job
    charge: conveyor.Job
    hostile: conveyor.Job


def run_jobs(project: Project) -> Jobs:
    """A succeeded login that returns its password, a dead charge whose error repeats its API
    key, a dead hostile job; all run to the end by a worker."""
    tasks = project.module
    jobs = Jobs(
        login=tasks.login.enqueue("ann", password=PASSWORD),
        charge=tasks.charge.enqueue(card="4242", api_key=API_KEY),
        hostile=tasks.hostile.enqueue(),
    )
    project.app.run_worker(burst=True)
    return jobs


def assert_hidden(text: str) -> None:
    assert PASSWORD not in text and API_KEY not in text
    assert "***" in text


def assert_printable(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{raw!r} reached the terminal"


# -- results and errors are redacted --------------------------------------------------------


def test_the_cli_shows_results_and_errors_without_the_hidden_secrets(project: Project) -> None:
    jobs = run_jobs(project)

    login = project.cli("jobs", "show", str(jobs.login.id)).output
    assert_hidden(login)
    assert "hi ann, yours is ***" in login
    assert project.cli_json("jobs", "show", str(jobs.login.id))["result"] == {
        "user": "ann",
        "password": "***",
        "greeting": "hi ann, yours is ***",
    }

    charge = project.cli("jobs", "show", str(jobs.charge.id)).output
    assert_hidden(charge)
    assert charge.count("ValueError: card 4242 refused for key ***") == 2  # message, traceback

    for listing in (("jobs", "list"), ("dlq", "list")):
        out = project.cli(*listing).output
        assert_hidden(out)
        assert "card 4242 refused for key ***" in out
        assert_hidden(project.cli(*listing, "--json").stdout)
    shown = project.cli_json("dlq", "show", str(jobs.charge.id))
    assert shown["errors"][0]["message"] == "card 4242 refused for key ***"
    assert API_KEY not in shown["errors"][0]["traceback"]

    # what is stored is the task's own
    assert project.app.get_job(jobs.login.id).result["password"] == PASSWORD
    assert API_KEY in project.app.get_job(jobs.charge.id).errors[0]["message"]


def test_the_api_and_the_dashboard_show_results_and_errors_without_them(
    project: Project,
) -> None:
    jobs = run_jobs(project)

    with web(project) as client:
        login = client.get(f"/api/jobs/{jobs.login.id}").json()
        assert login["result"] == {
            "user": "ann",
            "password": "***",
            "greeting": "hi ann, yours is ***",
        }
        charge = client.get(f"/api/jobs/{jobs.charge.id}")
        assert_hidden(charge.text)
        assert charge.json()["status_message"] == (
            "Failed: ValueError: card 4242 refused for key ***"
        )
        for path in ("/api/jobs", "/api/dlq"):
            assert_hidden(client.get(path).text)

        for path in (f"/jobs/{jobs.login.id}", f"/jobs/{jobs.charge.id}", "/jobs", "/dlq"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert_hidden(page.text)
        assert "card 4242 refused for key ***" in client.get(f"/jobs/{jobs.charge.id}").text
        assert "hi ann, yours is ***" in client.get(f"/jobs/{jobs.login.id}").text


def test_a_dead_job_alert_does_not_repeat_the_secret(project: Project) -> None:
    project.module.charge.enqueue(card="4242", api_key=API_KEY)
    project.app.run_worker(burst=True)
    project.app.close()  # sends the alerts on their way

    [alert] = [a for a in project.module.alerts if a.event == "job.dead"]
    assert alert.fields["error"] == "ValueError: card 4242 refused for key ***"
    assert API_KEY not in json.dumps(alert.payload())


def test_a_probe_url_is_shown_without_credentials_or_query_values(project: Project) -> None:
    circuits = project.cli_json("circuits")["circuits"]
    assert [(c["name"], c["probe"]) for c in circuits] == [("billing", PROBE_SHOWN)]

    with web(project) as client:
        api = client.get("/api/circuits").json()
        assert api["circuits"][0]["probe"] == PROBE_SHOWN
        page = client.get("/circuits").text
    assert PROBE_SHOWN in page
    for secret in ("probe-user", "pr0be-pa55word", "pr0be-t0ken-value", "#top"):
        assert secret not in page and secret not in json.dumps(api)
    assert project.app.circuits["billing"].probe == PROBE  # the code keeps the full URL


# -- job-supplied text reaches the terminal escaped -----------------------------------------


def test_jobs_show_escapes_control_characters_and_prints_markup_as_written(
    project: Project,
) -> None:
    jobs = run_jobs(project)

    out = project.cli("jobs", "show", str(jobs.hostile.id)).output

    assert_printable(out)
    # the message, the traceback's last line (and the source line the traceback quotes)
    assert out.count(r"copy \x1b]52;c;aGVsbG8=\x07 clear \x1b[2J csi \x9b1m") >= 2
    assert r"stage \x1b[31mred\x1b[0m" in out
    assert r"\u202eevil" in out
    assert "[red]x[/red] [link=https://evil.example/]click[/link]" in out
    # a detail view keeps the message's own lines
    assert re.search(r"\\u202eevil *\n *level=error event=forged", out)

    # JSON stays exact
    shown = project.cli_json("jobs", "show", str(jobs.hostile.id))
    assert (shown["errors"][0]["message"], shown["stage"]) == (MESSAGE, STAGE)
    raw = project.cli("jobs", "show", str(jobs.hostile.id), "--json").stdout
    assert_printable(raw)


@pytest.mark.parametrize("listing", [("jobs", "list"), ("dlq", "list")])
def test_listings_escape_control_characters_one_job_one_row(
    project: Project, listing: tuple[str, ...]
) -> None:
    jobs = run_jobs(project)

    out = project.cli(*listing).output

    assert_printable(out)
    [row] = [line for line in out.splitlines() if line.strip().startswith(f"{jobs.hostile.id} ")]
    assert r"RuntimeError: copy \x1b]52;c;aGVsbG8=\x07 clear \x1b[2J csi \x9b1m" in row
    assert r"[link=https://evil.example/]click[/link] \u202eevil\nlevel=error" in row
    assert_printable(project.cli(*listing, "--json").stdout)


@pytest.mark.parametrize("fmt", ["logfmt", "console"])
def test_worker_log_lines_escape_control_characters_and_hide_secrets(
    project: Project, fmt: str
) -> None:
    tasks = project.module
    tasks.hostile.enqueue()
    tasks.discard.enqueue()
    tasks.charge.enqueue(card="4242", api_key=API_KEY)

    worked = project.run("worker", project.spec, "--burst", "--log-format", fmt)

    assert worked.returncode == 0, worked.stderr
    # the console format colours its own output; nothing else may reach the terminal raw
    log = re.sub(r"\x1b\[[0-9;]*m", "", worked.stderr)
    assert_printable(log)
    assert API_KEY not in log and "refused for key ***" in log
    # spelled out (logfmt doubles the backslash of a quoted value, as its quoting wants)
    assert re.search(r"copy \\{1,2}x1b\]52;c;aGVsbG8=", log)
    assert re.search(r"gone \ufffd \\{1,2}x1b\[2J for good", log)  # NUL: U+FFFD when stored
    events = [line for line in log.splitlines() if line and not line.startswith(" ")]
    stamp = "timestamp=" if fmt == "logfmt" else ""
    assert all(re.match(rf"{stamp}\d{{4}}-\d\d-\d\dT", line) for line in events), events
    assert sum("job.dead" in line and "job_id=" in line for line in events) == 3
