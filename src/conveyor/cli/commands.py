"""The commands that inspect and steer jobs: enqueue, jobs, dlq, queues, cron, workers, migrate,
prune."""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

import click
from rich.text import Text

from conveyor import views
from conveyor.app import App
from conveyor.cli import render
from conveyor.cli.loading import AppRef
from conveyor.cli.params import ARGS, DURATION, KWARGS, PRIORITY
from conveyor.errors import InvalidTransition
from conveyor.job import FINISHED_STATES, Job, JobState

pass_ref = click.make_pass_decorator(AppRef)

json_option = click.option("--json", "as_json", is_flag=True, help="Print plain JSON for scripts.")
STATE_NAMES = [s.value for s in JobState]


def _app(ref: AppRef) -> App:
    return ref.get()


def _split_states(values: tuple[str, ...]) -> list[str] | None:
    """`--state dead --state cancelled` or `--state dead,cancelled`."""
    states = [s.strip().lower() for v in values for s in v.split(",") if s.strip()]
    unknown = [s for s in states if s not in STATE_NAMES]
    if unknown:
        raise click.BadParameter(
            f"unknown state {unknown[0]!r} (known: {', '.join(STATE_NAMES)})",
            param_hint="'--state'",
        )
    return states or None


def _print_jobs(app: App, jobs: list[Job], limit: int, as_json: bool, dead: bool = False) -> None:
    if as_json:
        render.emit_json([views.job_dict(j) for j in jobs])
        return
    out = render.console()
    if not jobs:
        out.print("no dead jobs" if dead else "no jobs match", style="dim")
        return
    now = app.clock.now()
    out.print(render.dead_table(jobs, now) if dead else render.jobs_table(jobs, now, title="Jobs"))
    if len(jobs) == limit:
        out.print(
            f"showing the newest {limit}; use --limit, or --before-id {jobs[-1].id} for older ones",
            style="dim",
        )


def _show_job(app: App, job_id: int, as_json: bool) -> None:
    job = app.get_job(job_id)
    history = app.job_history(job_id)
    if as_json:
        out = views.job_dict(job)
        out["history"] = [views.history_dict(h) for h in history]
        render.emit_json(out)
        return
    render.console().print(render.job_detail(job, history, app.clock.now()))


def _list_filters(fn: Any) -> Any:
    for decorator in reversed(
        [
            click.option("-q", "--queue", help="Only this queue."),
            click.option("-t", "--task", help="Only this task (its registered name)."),
            click.option(
                "-n",
                "--limit",
                type=click.IntRange(min=1),
                default=100,
                show_default=True,
                help="At most this many, newest first.",
            ),
            click.option("--before-id", type=int, help="Page on: only jobs with a smaller id."),
            json_option,
        ]
    ):
        fn = decorator(fn)
    return fn


# -- enqueue ------------------------------------------------------------------------------


@click.command()
@click.argument("task")
@click.option("--args", "args", type=ARGS, default="[]", help="Positional arguments, a JSON array.")
@click.option(
    "--kwargs", "kwargs", type=KWARGS, default="{}", help="Keyword arguments, a JSON object."
)
@click.option(
    "--priority", type=PRIORITY, help="1 (highest) to 10, or critical, high, normal, low."
)
@click.option("--delay", type=DURATION, help="Run no sooner than this from now: 90s, 15m, 2h.")
@click.option("--queue", help="Queue to put the job on; default: the task's.")
@click.option("--unique-key", help="While a job with this key is unfinished, return it instead.")
@click.option(
    "--unique-for", type=DURATION, help="With --unique-key: also jobs finished this recently."
)
@json_option
@pass_ref
def enqueue(
    ref: AppRef,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    priority: int | str | None,
    delay: float | None,
    queue: str | None,
    unique_key: str | None,
    unique_for: float | None,
    as_json: bool,
) -> None:
    """Enqueue a job for TASK (a registered task name)."""
    app = _app(ref)
    options: dict[str, Any] = {
        "priority": priority,
        "delay": delay,
        "queue": queue,
        "unique_key": unique_key,
        "unique_for": unique_for,
    }
    job = app.enqueue(
        task, args=args, kwargs=kwargs, **{k: v for k, v in options.items() if v is not None}
    )
    if as_json:
        render.emit_json(views.job_dict(job))
        return
    if job.deduplicated:
        line = Text.assemble(
            f"job {job.id} already holds unique key {job.unique_key!r}: ",
            (job.task, "cyan"),
            f" on queue {job.queue}, ",
            render.state_text(job.state),
            "; nothing enqueued",
        )
        render.console().print(line)
        return
    line = Text.assemble(
        f"job {job.id} enqueued: ",
        (job.task, "cyan"),
        f" on queue {job.queue}, priority {job.priority}, ",
        render.state_text(job.state),
    )
    if job.state is JobState.SCHEDULED:
        line.append(f" (runs {views.ago(job.run_at, app.clock.now())})")
    render.console().print(line)


# -- jobs ---------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """List, inspect, cancel and retry jobs."""


@jobs.command("list")
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    help="Only jobs in this state (repeat, or comma-separate, for several).",
)
@_list_filters
@pass_ref
def jobs_list(
    ref: AppRef,
    states: tuple[str, ...],
    queue: str | None,
    task: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """Jobs, newest first."""
    app = _app(ref)
    found = app.list_jobs(
        state=_split_states(states), queue=queue, task=task, limit=limit, before_id=before_id
    )
    _print_jobs(app, found, limit, as_json)


@jobs.command("show")
@click.argument("job_id", metavar="ID", type=int)
@json_option
@pass_ref
def jobs_show(ref: AppRef, job_id: int, as_json: bool) -> None:
    """A job's fields, arguments, result, errors with tracebacks, and history."""
    _show_job(_app(ref), job_id, as_json)


@jobs.command("watch")
@click.argument("job_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="A JSON line for every change, for scripts.")
@pass_ref
def jobs_watch(ref: AppRef, job_id: int, as_json: bool) -> None:
    """Follow a job live (state, attempts, progress, stage, message) until it finishes. Exits
    0 if it succeeded, 1 if it ended dead or cancelled."""
    import asyncio

    from conveyor.cli.watch import watch

    try:
        code = asyncio.run(watch(_app(ref), job_id, as_json))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)


def _who() -> str:
    """Who runs this command, for the notes it leaves in the history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment or the password database
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


@jobs.command("cancel")
@click.argument("job_ids", metavar="[ID...]", type=int, nargs=-1)
@click.option(
    "--all",
    "cancel_all",
    is_flag=True,
    help="Cancel every job not started yet of --queue and/or --task, in one statement.",
)
@click.option("-q", "--queue", help="With --all: this queue's jobs.")
@click.option("-t", "--task", help="With --all: this task's jobs.")
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    help="With --all: only jobs in this state (waiting, scheduled, queued, retrying).",
)
@pass_ref
def jobs_cancel(
    ref: AppRef,
    job_ids: tuple[int, ...],
    cancel_all: bool,
    queue: str | None,
    task: str | None,
    states: tuple[str, ...],
) -> None:
    """Cancel jobs that have not run yet; ask running ones to stop. The history notes who."""
    if cancel_all == bool(job_ids):
        raise click.UsageError("give job ids, or --all with --queue or --task (not both)")
    if (queue or task or states) and not cancel_all:
        raise click.UsageError("--queue, --task and --state go with --all")
    app = _app(ref)
    note = f"cancelled by {_who()}"
    out = render.console()
    if cancel_all:
        with render.bulk_progress(out, "cancelling") as progress:
            count = app.cancel_jobs(
                queue=queue, task=task, state=_split_states(states), note=note, progress=progress
            )
        out.print(f"cancelled {count} job{'' if count == 1 else 's'}")
        return
    refused: list[str] = []
    for job_id in job_ids:
        before = app.get_job(job_id)
        job = app.cancel_job(job_id, note=note)
        if before.state is JobState.CANCELLED:
            out.print(f"job {job_id} was already cancelled")
        elif job.state is JobState.CANCELLED:
            out.print(f"job {job_id} cancelled (it was {before.state.value})")
        elif job.state is JobState.RUNNING:
            out.print(f"job {job_id} is running: asked its worker to stop it")
        else:
            refused.append(f"job {job_id} already {job.state.value}; nothing to cancel")
    if refused:
        raise click.ClickException("; ".join(refused))


@jobs.command("retry")
@click.argument("job_ids", metavar="ID...", type=int, nargs=-1, required=True)
@pass_ref
def jobs_retry(ref: AppRef, job_ids: tuple[int, ...]) -> None:
    """Put dead or cancelled jobs back in their queue, attempts starting again."""
    _retry_ids(_app(ref), job_ids)


def _retry_ids(app: App, job_ids: tuple[int, ...]) -> None:
    out = render.console()
    refused: list[str] = []
    for job_id in job_ids:
        try:
            job = app.retry_job(job_id)
        except InvalidTransition as exc:
            refused.append(str(exc))
            continue
        out.print(f"job {job.id} ({job.task}) is {job.state.value} again")
    if refused:
        raise click.ClickException("; ".join(refused))


# -- the dead-letter queue ----------------------------------------------------------------


@click.group()
def dlq() -> None:
    """The dead-letter queue: jobs that ran out of attempts or gave up."""


@dlq.command("list")
@_list_filters
@pass_ref
def dlq_list(
    ref: AppRef,
    queue: str | None,
    task: str | None,
    limit: int,
    before_id: int | None,
    as_json: bool,
) -> None:
    """Dead jobs, newest first, with their last error."""
    app = _app(ref)
    found = app.list_jobs(
        state=JobState.DEAD, queue=queue, task=task, limit=limit, before_id=before_id
    )
    _print_jobs(app, found, limit, as_json, dead=True)


@dlq.command("show")
@click.argument("job_id", metavar="ID", type=int)
@json_option
@pass_ref
def dlq_show(ref: AppRef, job_id: int, as_json: bool) -> None:
    """A dead job in full: arguments, every attempt's error and traceback, history."""
    _show_job(_app(ref), job_id, as_json)


@dlq.command("retry")
@click.argument("job_ids", metavar="[ID...]", type=int, nargs=-1)
@click.option(
    "--all", "retry_all", is_flag=True, help="Retry every dead job (see --queue, --task)."
)
@click.option("-q", "--queue", help="With --all: only this queue.")
@click.option("-t", "--task", help="With --all: only this task.")
@pass_ref
def dlq_retry(
    ref: AppRef, job_ids: tuple[int, ...], retry_all: bool, queue: str | None, task: str | None
) -> None:
    """Retry dead jobs by id, or all of them with --all."""
    if retry_all == bool(job_ids):
        raise click.UsageError("give job ids, or --all (not both)")
    if (queue or task) and not retry_all:
        raise click.UsageError("--queue and --task go with --all")
    app = _app(ref)
    if job_ids:
        _retry_ids(app, job_ids)
        return
    out = render.console()
    with render.bulk_progress(out, "retrying") as progress:
        count = app.retry_jobs(state=JobState.DEAD, queue=queue, task=task, progress=progress)
    out.print(f"retried {count} dead job{'' if count == 1 else 's'}")


@dlq.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete dead jobs that died longer ago than this (30d, 12h, 90s).",
)
@click.option("-q", "--queue", help="Only this queue.")
@click.option("-t", "--task", help="Only this task.")
@pass_ref
def dlq_purge(ref: AppRef, older_than: float, queue: str | None, task: str | None) -> None:
    """Delete dead jobs (and their history) older than --older-than."""
    out = render.console()
    with render.bulk_progress(out, "purging") as progress:
        count = _app(ref).purge(
            state=JobState.DEAD, older_than=older_than, queue=queue, task=task, progress=progress
        )
    plural = "" if count == 1 else "s"
    out.print(f"purged {count} dead job{plural} older than {render.duration(older_than)}")


# -- the rest -----------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Jobs per queue and state, which queues are paused and their concurrency limits.
    Subcommands pause and resume."""
    if ctx.invoked_subcommand is not None:
        return
    ref = ctx.find_object(AppRef)
    assert ref is not None, "main() puts the AppRef on the context"
    app = _app(ref)
    found = views.queues_dict(app.queue_stats(), app.paused_queues(), app.queue_limits())
    if as_json:
        render.emit_json(found)
    elif not found:
        render.console().print("no jobs yet", style="dim")
    else:
        render.console().print(render.queues_table(found))


@queues.command("pause")
@click.argument("names", metavar="QUEUE...", nargs=-1, required=True)
@pass_ref
def queues_pause(ref: AppRef, names: tuple[str, ...]) -> None:
    """Start nothing new from these queues, on any worker, until resumed (running jobs
    finish). Kept in the store: it outlives worker restarts."""
    app = _app(ref)
    for name in names:
        changed = app.pause_queue(name)
        render.console().print(f"paused {name}" if changed else f"{name} was already paused")


@queues.command("resume")
@click.argument("names", metavar="QUEUE...", nargs=-1, required=True)
@pass_ref
def queues_resume(ref: AppRef, names: tuple[str, ...]) -> None:
    """Let workers start these queues' jobs again."""
    app = _app(ref)
    for name in names:
        changed = app.resume_queue(name)
        render.console().print(f"resumed {name}" if changed else f"{name} was not paused")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def circuits(ctx: click.Context, as_json: bool) -> None:
    """Circuits: state, failures in a row, jobs held, and their latest opens and closes.
    `conveyor circuits close NAME` closes one by hand."""
    if ctx.invoked_subcommand is not None:
        return
    ref = ctx.find_object(AppRef)
    assert ref is not None, "main() puts the AppRef on the context"
    app = _app(ref)
    found = views.circuits_dict(app.circuits, app.circuit_states(), app.circuit_log(limit=20))
    if as_json:
        render.emit_json(found)
    elif not found["circuits"]:
        render.console().print("no circuits declared or recorded", style="dim")
    else:
        now = app.clock.now()
        render.console().print(render.circuits_table(found["circuits"], now))
        if found["log"]:
            render.console().print(render.circuit_log_table(found["log"], now))


@circuits.command("close")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_ref
def circuits_close(ref: AppRef, names: tuple[str, ...]) -> None:
    """Close circuits by hand (their service is back): held jobs run again at once."""
    app = _app(ref)
    for name in names:
        changed = app.close_circuit(name, reason=f"closed by {_who()}")
        render.console().print(f"closed {name}" if changed else f"{name} was not open")


@click.command()
@json_option
@pass_ref
def cron(ref: AppRef, as_json: bool) -> None:
    """Periodic jobs: schedules, next ticks, and what each last fired."""
    app = _app(ref)
    now = app.clock.now()
    records = app.periodic_ticks() if app.periodics else {}
    found = [
        views.cron_dict(e, records.get(e.name), now, app.redact) for e in app.periodics.values()
    ]
    if as_json:
        render.emit_json(found)
    elif not found:
        render.console().print("no periodic jobs declared in this app", style="dim")
    else:
        render.console().print(render.cron_table(found, now))


@click.command()
@json_option
@pass_ref
def workers(ref: AppRef, as_json: bool) -> None:
    """Registered workers; one whose heartbeat is older than the lease is lost."""
    app = _app(ref)
    found = app.list_workers()
    now = app.clock.now()
    lease = app.settings.lease_seconds
    if as_json:
        render.emit_json([views.worker_dict(w, now, lease) for w in found])
    elif not found:
        render.console().print("no workers registered", style="dim")
    else:
        render.console().print(render.workers_table(found, now, lease))


@click.command()
@pass_ref
def migrate(ref: AppRef) -> None:
    """Create or upgrade the database schema."""
    app = _app(ref)
    applied = app.migrate()
    version = app.schema_version()
    if applied:
        versions = ", ".join(str(v) for v in applied)
        click.echo(
            f"applied migration{'s' if len(applied) > 1 else ''} {versions} to {app.url} "
            f"(schema version {version})"
        )
    else:
        click.echo(f"{app.url} is up to date at schema version {version}; nothing to apply")


@click.command()
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete jobs that finished longer ago than this (7d, 12h, 90s).",
)
@click.option(
    "-s",
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(s.value for s in FINISHED_STATES)),
    help="Only this finished state (repeatable); default: all of them.",
)
@click.option("-q", "--queue", help="Only this queue.")
@pass_ref
def prune(ref: AppRef, older_than: float, states: tuple[str, ...], queue: str | None) -> None:
    """Delete finished jobs (succeeded, dead, cancelled) and their history."""
    out = render.console()
    with render.bulk_progress(out, "pruning") as progress:
        count = _app(ref).purge(
            state=list(states) or None, older_than=older_than, queue=queue, progress=progress
        )
    which = "/".join(states) if states else "finished"
    plural = "" if count == 1 else "s"
    out.print(f"pruned {count} {which} job{plural} older than {render.duration(older_than)}")


COMMANDS = [enqueue, jobs, dlq, queues, circuits, cron, workers, migrate, prune]
