"""How jobs, queues and workers look in a terminal: rich tables for people, plain JSON for
scripts (the JSON views and short formats are `conveyor.views`, shared with the web server).

A job is shown as `redacted` gives it (see `conveyor.redact`). Text from jobs, workers and the
store (arguments, results, error messages, tracebacks, stage names, notes) goes into `plain`:
wrapped in `Text`, so brackets in it are printed as they are rather than read as rich markup,
and through `conveyor.terminal.printable`, so control characters in it are shown escaped
(`\\x1b`) rather than obeyed by the terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from conveyor.job import HistoryEntry, Job, JobState, WorkerInfo
from conveyor.terminal import json_printable, printable
from conveyor.views import ago, job_info, redacted, short_type, span, when

STATE_STYLES: Mapping[JobState, str] = {
    JobState.WAITING: "dim",
    JobState.SCHEDULED: "cyan",
    JobState.QUEUED: "blue",
    JobState.RUNNING: "yellow",
    JobState.RETRYING: "magenta",
    JobState.SUCCEEDED: "green",
    JobState.DEAD: "bold red",
    JobState.CANCELLED: "dim",
}


#: Width for output that is not a terminal (a pipe, a file, CI logs), unless COLUMNS says.
PIPE_WIDTH = 120


def console() -> Console:
    """A console on the current stdout (made per command, so test runners can capture it)."""
    out = Console(highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = PIPE_WIDTH
    return out


@contextlib.contextmanager
def bulk_progress(out: Console, doing: str) -> Iterator[Callable[[int, int], None] | None]:
    """For a bulk change: on a terminal, a progress bar (what `App.purge(progress=...)` and the
    like report to, so the change is made in chunks), gone once done; piped, nothing (None:
    the change is one statement, and only its summary is printed)."""
    if not out.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    ) as bar:
        task = bar.add_task(doing, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


def emit_json(value: Any, indent: int | None = 2) -> None:
    """Plain JSON on stdout, for scripts: the values exact, the characters a terminal would
    obey (DEL, C1, bidi controls) written as `\\uXXXX`. `indent=None`: one line (a stream
    of JSON lines)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    click.echo(json_printable(text))


def plain(text: str, style: str = "", keep: str = "") -> Text:
    """Text from a job, a worker or the store as a person sees it in a table or a detail view:
    never read as markup, its control characters escaped (newline and tab too, unless in
    `keep`)."""
    return Text(printable(text, keep), style=style)


# -- small formats ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A duration as the user would write it: `30d`, `12h`, `90s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"


def state_text(state: JobState) -> Text:
    return Text(state.value, style=STATE_STYLES[state])


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


# -- tables -------------------------------------------------------------------------------


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )


def jobs_table(jobs: Sequence[Job], now: float, title: str | None = None) -> Table:
    table = _table(title)
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("Task", no_wrap=True)
    table.add_column("Queue", no_wrap=True)
    table.add_column("Pri", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Att", justify="right", no_wrap=True)
    table.add_column("Created", no_wrap=True)
    table.add_column("Info", overflow="fold")
    for job in jobs:
        table.add_row(
            str(job.id),
            plain(job.task),
            plain(job.queue),
            str(job.priority),
            state_text(job.state),
            f"{job.attempt}/{job.max_attempts}",
            ago(job.created_at, now),
            plain(job_info(job, now)),
        )
    return table


def dead_table(jobs: Sequence[Job], now: float) -> Table:
    table = _table("Dead-letter queue")
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("Task", no_wrap=True)
    table.add_column("Queue", no_wrap=True)
    table.add_column("Att", justify="right", no_wrap=True)
    table.add_column("Died", no_wrap=True)
    table.add_column("Last error", overflow="fold")
    table.add_column("Args", overflow="fold")
    for job in map(redacted, jobs):
        error = job.errors[-1] if job.errors else {}
        table.add_row(
            str(job.id),
            plain(job.task),
            plain(job.queue),
            f"{job.attempt}/{job.max_attempts}",
            ago(job.finished_at, now),
            Text.assemble(plain(short_type(error), "red"), plain(f": {error.get('message', '')}")),
            plain(compact_json(job.args, 60)),
        )
    return table


def queues_table(queues: Mapping[str, Mapping[str, Any]]) -> Table:
    """Queues by states (as `queues_dict` gives them); only the states some queue has jobs in
    get a column."""
    shown = [s for s in JobState if any(q["jobs"][s.value] for q in queues.values())]
    table = _table("Queues")
    table.add_column("Queue", overflow="fold")
    for state in shown:
        table.add_column(state.value, justify="right", style=STATE_STYLES[state])
    table.add_column("total", justify="right", style="bold")
    totals = dict.fromkeys((s.value for s in JobState), 0)
    for name, queue in queues.items():
        counts = queue["jobs"]
        label = plain(name)
        if queue["paused"]:
            label.append(" paused", style="bold yellow")
        if queue.get("concurrency") is not None:
            label.append(f" ≤{queue['concurrency']} at once", style="dim")
        cells = [str(counts[s.value]) if counts[s.value] else "·" for s in shown]
        table.add_row(label, *cells, str(sum(counts.values())))
        for state, n in counts.items():
            totals[state] += n
    if len(queues) > 1:
        table.add_section()
        table.add_row("all", *(str(totals[s.value]) for s in shown), str(sum(totals.values())))
    return table


def cron_table(entries: Sequence[Mapping[str, Any]], now: float) -> Table:
    table = _table("Periodic jobs")
    table.add_column("Name", overflow="fold")
    table.add_column("Schedule", no_wrap=True)
    table.add_column("Next", no_wrap=True)
    table.add_column("Last fired", no_wrap=True)
    table.add_column("Last job", no_wrap=True)
    for e in entries:
        zone = ZoneInfo(e["tz"])
        when = dt.datetime.fromtimestamp(e["next_tick"], zone).strftime("%Y-%m-%d %H:%M %Z")
        last_job = Text("-")
        if e["last_job_id"] is not None:
            last_job = Text(f"{e['last_job_id']} ")
            if e["last_job_state"] is not None:
                last_job.append_text(state_text(JobState(e["last_job_state"])))
            else:
                last_job.append("purged", style="dim")
        table.add_row(
            plain(e["name"]),
            plain(f"{e['schedule']} ({e['tz']})"),
            f"{when} ({ago(e['next_tick'], now)})",
            ago(e["last_fired_tick"], now),
            last_job,
        )
    return table


_CIRCUIT_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow"}


def circuits_table(circuits: Sequence[Mapping[str, Any]], now: float) -> Table:
    table = _table("Circuits")
    table.add_column("Name", overflow="fold")
    table.add_column("State", no_wrap=True)
    table.add_column("Failures", justify="right", no_wrap=True)
    table.add_column("Held", justify="right", no_wrap=True)
    table.add_column("Open since", no_wrap=True)
    table.add_column("Last probe", no_wrap=True)
    table.add_column("Why", overflow="fold")
    for c in circuits:
        threshold = c["failure_threshold"]
        failures = f"{c['failures']}/{threshold}" if threshold else str(c["failures"])
        open_since = ago(c["opened_at"], now) if c["state"] != "closed" else "-"
        table.add_row(
            plain(c["name"]),
            Text(c["state"].replace("_", "-"), style=_CIRCUIT_STYLES[c["state"]]),
            failures,
            str(c["held"]),
            open_since,
            ago(c["probed_at"], now),
            plain(c["reason"] or ""),
        )
    return table


def circuit_log_table(events: Sequence[Mapping[str, Any]], now: float) -> Table:
    table = _table("Latest changes")
    table.add_column("When", no_wrap=True)
    table.add_column("Circuit", overflow="fold")
    table.add_column("Change", no_wrap=True)
    table.add_column("Held", justify="right", no_wrap=True)
    table.add_column("Open for", no_wrap=True)
    table.add_column("Why", overflow="fold")
    for e in events:
        open_for = "-" if e["open_for"] is None else span(e["open_for"])
        table.add_row(
            f"{when(e['at'])} ({ago(e['at'], now)})",
            plain(e["name"]),
            Text(
                e["event"].replace("_", "-"),
                style=_CIRCUIT_STYLES.get({"opened": "open"}.get(e["event"], e["event"]), ""),
            ),
            str(e["held"]),
            open_for,
            plain(e["reason"] or ""),
        )
    return table


def workers_table(workers: Iterable[WorkerInfo], now: float, lease_seconds: float) -> Table:
    table = _table("Workers")
    table.add_column("ID", no_wrap=True)
    table.add_column("Host", overflow="fold")
    table.add_column("PID", justify="right", no_wrap=True)
    table.add_column("Queues", overflow="fold")
    table.add_column("Conc", justify="right", no_wrap=True)
    table.add_column("Running", overflow="fold")
    table.add_column("Started", no_wrap=True)
    table.add_column("Last beat", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    for w in workers:
        lost = w.is_lost(now, lease_seconds)
        running = f"{len(w.running)}"
        if w.running:
            shown = ", ".join(str(i) for i in w.running[:5])
            running += f" ({shown}{', …' if len(w.running) > 5 else ''})"
        table.add_row(
            plain(w.id),
            plain(w.host),
            str(w.pid),
            plain(",".join(w.queues) if w.queues else "*"),
            str(w.concurrency),
            running,
            ago(w.started_at, now),
            ago(now - w.heartbeat_age(now), now),
            Text("lost", style="bold red") if lost else Text("alive", style="green"),
        )
    return table


# -- one job ------------------------------------------------------------------------------


def job_detail(job: Job, history: Sequence[HistoryEntry], now: float) -> RenderableType:
    """Everything about one job, as a person may see it (redacted): fields, payload, result,
    errors with tracebacks, history."""
    job = redacted(job)
    title = Text.assemble(
        (f"Job {job.id}", "bold"), "  ", plain(job.task, "bold cyan"), "  ", state_text(job.state)
    )
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")

    def row(name: str, value: str | Text) -> None:
        fields.add_row(name, value if isinstance(value, Text) else plain(value))

    def stamp(ts: float | None) -> str:
        return "-" if ts is None else f"{when(ts)}  ({ago(ts, now)})"

    row("queue", job.queue)
    row("priority", str(job.priority))
    row("attempt", f"{job.attempt} of {job.max_attempts}")
    row("created", stamp(job.created_at))
    row("run at", stamp(job.run_at))
    row("started", "claimed, not begun" if job.claimed_ahead else stamp(job.started_at))
    row("finished", stamp(job.finished_at))
    if job.started_at is not None and job.finished_at is not None:
        row("ran for", span(job.finished_at - job.started_at))
    if job.lease_until is not None:
        row("lease until", stamp(job.lease_until))
    row("worker", job.worker_id or "-")
    row("progress", "-" if job.progress is None else f"{job.progress:.0f}%")
    row("stage", job.stage or "-")
    if job.cancel_requested:
        row("cancel", Text("requested", style="yellow"))
    row("args", compact_json(job.args))
    row("kwargs", compact_json(job.kwargs))
    row(
        "result",
        "-"
        if job.result is None and job.state is not JobState.SUCCEEDED
        else compact_json(job.result),
    )
    if job.meta:
        row("meta", compact_json(job.meta))

    parts: list[RenderableType] = [title, Padding(fields, (0, 0, 0, 2))]
    parts.append(Text(f"\nErrors ({len(job.errors)})", style="bold"))
    if not job.errors:
        parts.append(Padding(Text("none", style="dim"), (0, 0, 0, 2)))
    for i, error in enumerate(job.errors, 1):
        # a message or a traceback may have lines of its own: newlines and tabs stay
        head = Text.assemble(
            (f"#{i}", "bold"),
            f"  attempt {error.get('attempt', '?')}  {when(error.get('at'))}  ",
            plain(f"{error.get('type', 'Error')}: {error.get('message', '')}", "red", "\n\t"),
            plain(f"  (worker {error.get('worker') or '-'})"),
        )
        parts.append(Padding(head, (0, 0, 0, 2)))
        tb = error.get("traceback")
        trace = plain(tb.rstrip("\n"), "dim", "\n\t") if tb else Text("(no traceback)", "dim")
        parts.append(Padding(trace, (0, 0, 0, 6)))
    parts.append(Text("\nHistory", style="bold"))
    parts.append(Padding(history_timeline(history), (0, 0, 0, 2)))
    return Group(*parts)


def history_timeline(history: Sequence[HistoryEntry]) -> RenderableType:
    if not history:
        return Text("no recorded transitions", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    first = history[0].at
    for entry in history:
        move = Text.assemble(
            state_text(entry.from_state) if entry.from_state else Text("(new)", style="dim"),
            " → ",
            state_text(entry.to_state),
        )
        extra = " · ".join(x for x in (entry.note, entry.worker_id) if x)
        grid.add_row(when(entry.at), f"+{span(entry.at - first)}", move, plain(extra))
    return grid
