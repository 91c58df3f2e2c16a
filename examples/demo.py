"""`make demo`: a real worker process working through a mix of jobs, shown live.

It starts `python -m conveyor worker examples.demo_app:app -c 4` on a fresh conveyor-demo.db,
enqueues fast jobs, slow jobs with progress, a flaky job, a job that always fails, a delayed
job, and, a moment later, urgent jobs that overtake the backlog. It shows them live until every
job has finished, stops the worker with SIGTERM, and prints the final state of things with the
`conveyor` command itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # the demo app's database URL is relative to the repository root
sys.path.insert(0, str(ROOT))

APP = "examples.demo_app:app"
CONCURRENCY = 4
URGENT_AFTER_S = 2.5
DEADLINE_S = 90.0
FINISHED = {"succeeded", "dead", "cancelled"}
STATE_STYLES = {
    "waiting": "dim",
    "scheduled": "cyan",
    "queued": "blue",
    "running": "yellow",
    "retrying": "magenta",
    "succeeded": "green",
    "dead": "bold red",
    "cancelled": "dim",
}

for old in ROOT.glob("conveyor-demo.db*"):
    old.unlink()

from examples import demo_app  # noqa: E402

import conveyor  # noqa: E402 - the old database must be gone before the app is imported

console = Console(highlight=False)
#: When the demo's clock starts: the moment the first jobs are enqueued.
START = time.time()
if not console.is_terminal and not os.environ.get("COLUMNS"):
    console.width = 120  # CI logs and pipes: no need to wrap at 80


def conveyor_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor", *args]


def start_worker(log: IO[bytes]) -> subprocess.Popen[bytes]:
    worker = subprocess.Popen(
        conveyor_command("worker", APP, "-c", str(CONCURRENCY), "--grace", "10"),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not demo_app.app.list_workers():
        if worker.poll() is not None or time.monotonic() > deadline:
            fail(f"the worker did not start (exit code {worker.poll()}); see {log.name}")
        time.sleep(0.05)
    return worker


def fail(message: str) -> None:
    console.print(f"[bold red]demo failed:[/] {message}")
    sys.exit(1)


def enqueue_backlog() -> int:
    """Everything but the urgent jobs; returns how many were enqueued."""
    jobs = [
        demo_app.render_video.enqueue("Product launch", seconds=10.0),
        demo_app.render_video.enqueue("Team offsite", seconds=15.0),
        demo_app.sync_inventory.enqueue("berlin-2"),
        demo_app.charge_card.enqueue(10042, amount_cents=4999),
        *demo_app.thumbnail.enqueue_many([(f"photo-{i:02d}.jpg",) for i in range(1, 13)]),
        demo_app.send_reminder.configure(delay=6).enqueue("ada@example.com"),
    ]
    return len(jobs)


def enqueue_urgent() -> int:
    urgent = demo_app.page_oncall.configure(priority="critical")
    urgent.enqueue("checkout latency p99 > 2s")
    urgent.enqueue("disk 95% full on db-2")
    return 2


# -- the live view ------------------------------------------------------------------------


def note(job: conveyor.Job, now: float) -> Text:
    error = job.errors[-1] if job.errors else None
    why = f"{error['type'].rsplit('.', 1)[-1]}: {error['message']}" if error else ""
    if job.state in (conveyor.JobState.SCHEDULED, conveyor.JobState.RETRYING):
        when = f"runs in {max(job.run_at - now, 0):.1f}s"
        return Text(f"{when} · {why}" if why else when, style="dim")
    if job.state is conveyor.JobState.RUNNING:
        return Text(job.stage or "")
    if job.state is conveyor.JobState.DEAD:
        return Text(why, style="red")
    if job.state is conveyor.JobState.QUEUED and why:
        return Text(f"back in line after {why}", style="dim")
    if job.state is conveyor.JobState.SUCCEEDED and job.attempt > 1:
        return Text(f"succeeded on attempt {job.attempt}", style="dim")
    if job.state is conveyor.JobState.SUCCEEDED and job.finished_at and job.started_at:
        return Text(f"took {job.finished_at - job.started_at:.1f}s", style="dim")
    return Text("")


def progress_cell(job: conveyor.Job, width: int) -> RenderableType:
    state = job.state.value
    if job.progress is None:
        if state == "running":
            return ProgressBar(total=None, width=width + 5, pulse=True)
        return Text("")
    bar = ProgressBar(
        total=100,
        completed=job.progress,
        width=width,
        complete_style="red" if state == "dead" else "yellow",
        finished_style="green",
    )
    cell = Table.grid(padding=(0, 1))
    cell.add_row(bar, Text(f"{job.progress:3.0f}%"))
    return cell


def view(jobs: list[conveyor.Job], stats: dict[str, int], elapsed: float, log: Path) -> Group:
    now = time.time()
    wide = console.width >= 100
    table = Table(
        title=f"conveyor demo · {elapsed:4.1f}s",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
    )
    table.add_column("ID", justify="right", no_wrap=True)
    for name in ("Task", "Pri", "State", "Att", "Progress"):
        table.add_column(name, no_wrap=True)
    table.add_column("Stage / note", ratio=1)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.task,
            str(job.priority),
            Text(job.state.value, style=STATE_STYLES[job.state.value]),
            f"{job.attempt}/{job.max_attempts}",
            progress_cell(job, 20 if wide else 10),
            Text.assemble(note(job, now), no_wrap=True, overflow="ellipsis"),
        )
    counts = Text("  ")
    for state, n in stats.items():
        if n:
            counts.append(f"{state} {n}", style=STATE_STYLES[state]).append("   ")
    parts: list[RenderableType] = [table, counts]
    room = console.height - len(jobs) - 7  # what is left of the screen for the worker's log
    if room >= 2 and log.exists():
        tail = log.read_text(errors="replace").splitlines()[-min(room - 1, 6) :]
        parts.append(Text("worker log", style="bold"))
        parts.append(Text("\n".join(tail), style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def snapshot() -> tuple[list[conveyor.Job], dict[str, int]]:
    jobs = sorted(demo_app.app.list_jobs(limit=1000), key=lambda j: j.id)
    stats = {s.value: 0 for s in conveyor.JobState}
    for per_queue in demo_app.app.queue_stats().values():
        for state, n in per_queue.items():
            stats[state.value] += n
    return jobs, stats


def watch(live: Live | None, log: Path) -> float:
    """Follow the jobs until all have finished; returns how long that took.

    On a terminal the live table is redrawn; elsewhere (CI, a pipe) each change is a line.
    """
    urgent_sent = False
    seen: dict[int, int] = {}
    while True:
        elapsed = time.time() - START
        if not urgent_sent and elapsed >= URGENT_AFTER_S:
            n = enqueue_urgent()
            say(elapsed, f"enqueued {n} critical (priority 1) jobs: they overtake the backlog")
            urgent_sent = True
        jobs, stats = snapshot()
        if live is not None:
            live.update(view(jobs, stats, elapsed, log))
        else:
            report_changes(jobs, seen)
        if urgent_sent and all(j.state.value in FINISHED for j in jobs):
            return elapsed
        if elapsed > DEADLINE_S:
            fail(f"jobs still unfinished after {DEADLINE_S:.0f}s; see {log}")
        time.sleep(0.1)


def say(elapsed: float, message: str) -> None:
    console.print(Text.assemble((f"{elapsed:5.1f}s  ", "dim"), message))


def report_changes(jobs: list[conveyor.Job], seen: dict[int, int]) -> None:
    """Without a terminal to redraw, print each recorded transition as a line, in time order."""
    lines: list[tuple[float, str]] = []
    for job in jobs:
        history = demo_app.app.job_history(job.id)
        at = 0.0
        for entry in history[seen.get(job.id, 0) :]:
            at = max(at, entry.at)  # keep each job's own steps in order
            if entry.from_state is None and entry.to_state.value == "queued":
                continue  # the enqueue lines above said so
            before = entry.from_state.value if entry.from_state else "new"
            line = f"job {job.id:>2} {job.task:<15} {before} → {entry.to_state.value}"
            errors = [e for e in job.errors if e["at"] <= entry.at + 0.001]
            if entry.to_state.value in ("retrying", "dead") and errors:
                line += f"  ({errors[-1]['type'].rsplit('.', 1)[-1]}: {errors[-1]['message']})"
            lines.append((at, line))
        seen[job.id] = len(history)
    for at, line in sorted(lines, key=lambda item: item[0]):
        say(at - START, line)


def main() -> int:
    global START
    log_path = Path(tempfile.gettempdir()) / "conveyor-demo-worker.log"
    console.rule("[bold]conveyor demo")
    console.print(
        f"A worker process (concurrency {CONCURRENCY}) runs jobs from conveyor-demo.db while "
        "this screen watches the database."
    )
    with log_path.open("wb") as log:
        worker = start_worker(log)
        try:
            START = time.time()
            say(0.0, f"worker started (pid {worker.pid}); logs in {log_path}")
            n = enqueue_backlog()
            say(
                0.0,
                f"enqueued {n} jobs: renders with progress, thumbnails, a flaky sync, "
                "a card charge that always fails, a reminder delayed 6s",
            )
            if console.is_terminal:
                with Live(console=console, refresh_per_second=8, transient=True) as live:
                    took = watch(live, log_path)
            else:
                took = watch(None, log_path)
            say(took, "every job has finished; stopping the worker with SIGTERM")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                fail("the worker did not stop within 20s of SIGTERM")
    if code != 0:
        fail(f"the worker exited with {code}; see {log_path}")
    console.print(f"worker stopped cleanly (exit code {code})\n")
    for args in (("queues",), ("jobs", "list"), ("dlq", "list")):
        command = ("conveyor", "--app", APP, *args)
        console.print(Text("$ " + " ".join(command), style="bold"))
        sys.stdout.flush()
        subprocess.run(conveyor_command("--app", APP, *args), check=True)
        console.print()
    dead = demo_app.app.list_jobs(state="dead", limit=1)
    if dead:
        console.print("Every attempt's error and traceback, and the job's history:")
        console.print(f"  .venv/bin/python -m conveyor --app {APP} dlq show {dead[0].id}")
    console.print("The same jobs in the web dashboard, at http://127.0.0.1:8000:")
    console.print(f"  .venv/bin/python -m conveyor serve {APP}")
    demo_app.app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
