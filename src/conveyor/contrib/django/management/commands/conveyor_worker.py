"""`manage.py conveyor_worker`: `conveyor worker` for the Django tasks of a TASKS alias."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conveyor.contrib.django.management.commands._cli import (
    add_backend_argument,
    app_spec,
    flags,
    run_conveyor,
)


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run a conveyor worker for Django's tasks on ConveyorBackend: it claims their jobs, "
        "runs them (sync tasks on threads, async ones on its event loop) and records their "
        "results. SIGTERM or Ctrl-C: a graceful shutdown (see --grace)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_backend_argument(parser)
        parser.add_argument("-q", "--queues", help="Comma-separated queues to work (default: all).")
        parser.add_argument(
            "-c", "--concurrency", type=int, help="Jobs run at once by each process (10)."
        )
        parser.add_argument(
            "-p", "--processes", type=int, help="Worker processes to start and supervise (1)."
        )
        parser.add_argument("--prefetch", type=int, help="Most jobs claimed ahead of free slots.")
        parser.add_argument("--burst", action="store_true", help="Stop once nothing is runnable.")
        parser.add_argument("--name", help="Name the worker (unique among live workers).")
        parser.add_argument(
            "--max-jobs", type=int, help="Exit after running this many jobs (memory leaks)."
        )
        parser.add_argument(
            "--grace", type=float, help="Seconds running jobs get to finish on SIGTERM (30)."
        )
        parser.add_argument("--log-level", help="INFO (the default), DEBUG, WARNING, ...")
        parser.add_argument("--log-format", choices=["logfmt", "json", "console"])

    def handle(self, *args: Any, **options: Any) -> None:
        names = ("queues", "concurrency", "processes", "prefetch", "burst", "name", "max_jobs")
        arguments = ["worker", app_spec(options["backend"])]
        arguments += flags(options, (*names, "grace", "log_level", "log_format"))
        run_conveyor(arguments, "manage.py conveyor_worker", options)
