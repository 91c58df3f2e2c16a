"""The `conveyor` command: run workers, enqueue, inspect and steer jobs."""

from __future__ import annotations

import sys
from typing import Any

import click

from conveyor.cli.commands import COMMANDS
from conveyor.cli.loading import AppRef, app_spec, load_app
from conveyor.config import SERVE_CONNECTION_LIMIT, SERVE_REQUEST_TIMEOUT_S
from conveyor.errors import ConveyorError
from conveyor.limits import MAX_COUNT

__all__ = ["load_app", "main"]


class ConveyorGroup(click.Group):
    """Turns every conveyor error into a one-line message and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=ConveyorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    "app_option",
    metavar="MODULE:APP",
    envvar="CONVEYOR_APP",
    help="The conveyor.App to use (default: $CONVEYOR_APP).",
)
@click.version_option(package_name="conveyor")
@click.pass_context
def main(ctx: click.Context, app_option: str | None) -> None:
    """conveyor: durable background jobs."""
    from conveyor.logging import configure_logging

    # Logs to stderr, warnings and up: a command's stdout is its answer (or its JSON). The
    # long-running commands (worker, serve) set their own level.
    configure_logging("WARNING")
    ref = AppRef(app_option)
    ctx.obj = ref
    ctx.call_on_close(ref.close)


@main.command()
@click.argument("app_spec_arg", metavar="MODULE:APP", required=False)
@click.option("-q", "--queues", help="Comma-separated queues to work (default: all).")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1, max=MAX_COUNT),
    default=10,
    show_default=True,
    help="Jobs run at once by each worker process.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to start and supervise.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Most jobs claimed ahead of free slots, used only as far as jobs are short beside a "
    "claim (default: 20 per slot; 0: none).",
)
@click.option("--burst", is_flag=True, help="Stop once nothing is runnable.")
@click.option(
    "--name",
    help="Name the worker (its id is NAME:suffix, in `conveyor workers`, the dashboard and the "
    "job history); unique among live workers. With -p N: NAME-1 ... NAME-N.",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(min=1, max=MAX_COUNT),
    default=None,
    help="Exit after running this many jobs (with -p N, a fresh process takes its place): "
    "for task code that leaks memory.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM before they are handed back.",
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["logfmt", "json", "console"]),
    default="logfmt",
    show_default=True,
)
@click.pass_obj
def worker(
    ref: AppRef,
    app_spec_arg: str | None,
    queues: str | None,
    concurrency: int,
    processes: int,
    prefetch: int | None,
    burst: bool,
    name: str | None,
    max_jobs: int | None,
    grace: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run a worker for MODULE:APP (default: --app or $CONVEYOR_APP)."""
    from conveyor.logging import configure_logging

    configure_logging(log_level, log_format)
    spec = app_spec(app_spec_arg or ref.spec)
    app = load_app(spec)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if processes > 1:
        from conveyor.cli.supervisor import Supervisor
        from conveyor.task import check_queue
        from conveyor.worker.worker import check_worker_name

        if burst and max_jobs is not None:
            # a process that ran its jobs and one that found nothing left both exit 0
            raise click.UsageError(
                "--max-jobs with --burst needs -p 1: the supervisor could not tell a process "
                "that ran its jobs (to be replaced) from one that found nothing left"
            )
        for queue in queue_list or ():
            check_queue(queue)  # fail here, once, rather than in every child forever
        if name is not None:
            check_worker_name(f"{name}-{processes}")

        command = [
            sys.executable,
            "-m",
            "conveyor",
            "worker",
            spec,
            "-c",
            str(concurrency),
            "-p",
            "1",
            "--grace",
            str(grace),
            "--log-level",
            log_level,
            "--log-format",
            log_format,
        ]
        if queue_list:
            command += ["-q", ",".join(queue_list)]
        if burst:
            command.append("--burst")
        if prefetch is not None:
            command += ["--prefetch", str(prefetch)]
        if max_jobs is not None:
            command += ["--max-jobs", str(max_jobs)]
        supervisor = Supervisor(
            command, processes, replace_finished=max_jobs is not None, name=name
        )
        sys.exit(supervisor.run())
    app.run_worker(
        queues=queue_list,
        concurrency=concurrency,
        burst=burst,
        grace=grace,
        prefetch=prefetch,
        max_jobs=max_jobs,
        name=name,
    )
    _exit_even_if_stuck()


#: After the worker stopped, how long a thread still inside a call to the store may keep the
#: process from exiting.
STUCK_THREAD_WAIT_S = 2.0


def _exit_even_if_stuck() -> None:
    """The worker has stopped and written what it could. A thread still inside a call to a
    store that does not answer (a hung server, a file system that stalls) would keep the
    process alive until the call's own timeout: exit without it. Nothing is lost — the jobs
    of outcomes not written are rescued when their leases run out."""
    import os
    import threading
    import time

    from conveyor.logging import get_logger

    deadline = time.monotonic() + STUCK_THREAD_WAIT_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    if len(stuck) > 1:  # this thread is one of them
        get_logger("conveyor.worker").warning("worker.exit_forced", stuck_threads=stuck)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@main.command()
@click.argument("app_spec_arg", metavar="MODULE:APP", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=SERVE_REQUEST_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Close a connection that has not sent a complete request in this time.",
)
@click.option(
    "--limit-concurrency",
    type=click.IntRange(min=8),
    default=SERVE_CONNECTION_LIMIT,
    show_default=True,
    metavar="N",
    help="Connections open at once; more are closed.",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="CONVEYOR_FORWARDED_ALLOW_IPS",
    metavar="IPS",
    help="Comma-separated addresses of reverse proxies whose X-Forwarded-For and "
    "X-Forwarded-Proto are believed ('*': any). Default: none.",
)
@click.option(
    "--public-url",
    envvar="CONVEYOR_PUBLIC_URL",
    metavar="URL",
    help="The URL browsers use to reach the server (behind a proxy), e.g. "
    "https://jobs.example.com: its origin is the one actions may come from, and "
    "https makes the cookies Secure.",
)
@click.pass_obj
def serve(
    ref: AppRef,
    app_spec_arg: str | None,
    host: str,
    port: int,
    log_level: str,
    request_timeout: float,
    limit_concurrency: int,
    forwarded_allow_ips: str | None,
    public_url: str | None,
) -> None:
    """Serve MODULE:APP over HTTP: the dashboard at /, the JSON API under /api (schema at
    /api/openapi.json), /metrics and /health.

    With CONVEYOR_API_TOKENS (or CONVEYOR_API_TOKENS_FILE) every request needs a token (a
    bearer token for the API, a sign-in for the dashboard); without, only a loopback address
    may be bound, and only this machine's own clients are answered (no proxy)."""
    from conveyor.logging import configure_logging
    from conveyor.web import Tokens, create_api, server
    from conveyor.web.guard import is_loopback

    configure_logging(log_level, "logfmt")
    tokens = Tokens.from_environment()
    if tokens is None and not is_loopback(host):
        raise click.UsageError(
            f"refusing to serve on {host} without API tokens: set CONVEYOR_API_TOKENS "
            "(role:token,...) or bind 127.0.0.1"
        )
    if public_url is not None and not public_url.lower().startswith(("http://", "https://")):
        raise click.BadParameter("an http:// or https:// URL", param_hint="--public-url")
    app = load_app(app_spec(app_spec_arg or ref.spec))
    server.run(
        create_api(app, tokens, public_url=public_url),
        host=host,
        port=port,
        log_level=log_level,
        request_timeout=request_timeout,
        limit=limit_concurrency,
        forwarded_allow_ips=forwarded_allow_ips or None,
    )


for _command in COMMANDS:
    main.add_command(_command)
