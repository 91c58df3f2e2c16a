"""`conveyor jobs watch ID`: one job followed live, from its events, until it finishes.

On a terminal it is a view redrawn in place (state, attempts, worker, a progress bar, stage and
message); piped, a line whenever what it shows changes; with `--json`, a JSON line for every
event. What the job wrote is shown redacted, as `jobs show` shows it.
"""

from __future__ import annotations

import abc
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from conveyor import views
from conveyor.app import App
from conveyor.cli import render
from conveyor.job import Job, JobState
from conveyor.terminal import printable

#: Redraws of the live view per second at most (events may come faster).
REFRESH_PER_S = 10


def status(job: Job, message: str | None) -> dict[str, Any]:
    """What the watch shows of a job at one moment, redacted, as JSON-ready fields."""
    return {
        "job_id": job.id,
        "task": job.task,
        "queue": job.queue,
        "state": job.state.value,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "progress": job.progress,
        "stage": views.redacted(job).stage,
        "message": views.shown_text(job, message),
        "worker": job.worker_id if job.state is JobState.RUNNING else None,
        "at": time.time(),
    }


async def watch(app: App, job_id: int, as_json: bool) -> int:
    """Follow the job until it finishes: 0 if it succeeded, 1 if it ended dead or cancelled."""
    stream, subscription = await app._open_events(job_id, None)
    try:
        # subscribed before the job is read: a change in between is an event still to come
        job = await app.get_job_async(job_id)
        out = render.console()
        show: Shower = JsonLines() if as_json else LiveView(out) if out.is_terminal else Lines(out)
        try:
            show.send(status(job, None))
            if not job.state.is_finished:
                async for event in stream:
                    job = await app.get_job_async(job_id)
                    # a report's message stands until the next event
                    show.send(status(job, event.message if event.kind == "progress" else None))
                    if job.state.is_finished:
                        break
        finally:
            show.close()
    finally:
        await stream.aclose()
        await subscription.close()
    return 0 if job.state is JobState.SUCCEEDED else 1


class Shower(abc.ABC):
    """Shows each status in turn; `close()` when the watch ends."""

    @abc.abstractmethod
    def send(self, shown: dict[str, Any]) -> None: ...

    def close(self) -> None:  # noqa: B027 - only the live view holds anything
        """Release what the view holds."""


class JsonLines(Shower):
    def send(self, shown: dict[str, Any]) -> None:
        render.emit_json(shown, indent=None)


class Lines(Shower):
    """A line whenever what is shown changes: piped, a log of the job's life."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.last: list[Any] | None = None

    def send(self, shown: dict[str, Any]) -> None:
        seen = [v for k, v in shown.items() if k != "at"]
        if seen != self.last:
            self.last = seen
            self.out.print(summary(shown))


class LiveView(Shower):
    """Redrawn in place on a terminal; its last state stays on the screen."""

    def __init__(self, out: Console) -> None:
        self.live = Live(console=out, refresh_per_second=REFRESH_PER_S)
        self.live.start()

    def send(self, shown: dict[str, Any]) -> None:
        self.live.update(panel(shown))

    def close(self) -> None:
        self.live.stop()


def _details(shown: dict[str, Any]) -> str:
    return " · ".join(printable(str(shown[k])) for k in ("stage", "message") if shown[k])


def summary(shown: dict[str, Any]) -> Text:
    """One line: the time, the state, attempts, progress, stage and message."""
    line = Text.assemble(
        (time.strftime("%H:%M:%S", time.localtime(shown["at"])), "dim"),
        " ",
        render.state_text(JobState(shown["state"])),
        f" attempt {shown['attempt']}/{shown['max_attempts']}",
    )
    if shown["progress"] is not None:
        line.append(f" {shown['progress']:.0f}%")
    if details := _details(shown):
        line.append(f" · {details}")
    return line


def panel(shown: dict[str, Any]) -> Group:
    """The live view: the job, its state and attempts, a progress bar with stage and message."""
    head = Text.assemble((f"job {shown['job_id']}", "bold"), " · ")
    head.append_text(render.plain(f"{shown['task']} · queue {shown['queue']}"))
    state = Text.assemble(
        render.state_text(JobState(shown["state"])),
        f" · attempt {shown['attempt']}/{shown['max_attempts']}",
    )
    if shown["worker"]:
        state.append_text(render.plain(f" · on {shown['worker']}"))
    progress = shown["progress"]
    row = Table.grid(padding=(0, 1))
    row.add_row(
        ProgressBar(total=100, completed=progress or 0, width=40),
        "" if progress is None else f"{progress:.0f}%",
        Text(_details(shown)),
    )
    return Group(head, state, row)
