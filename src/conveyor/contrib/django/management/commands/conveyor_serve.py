"""`manage.py conveyor_serve`: `conveyor serve` (dashboard, JSON API, metrics) for the store of
a TASKS alias."""

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
        "Serve conveyor's dashboard at /, its JSON API under /api, /metrics and /health for the "
        "jobs of Django's tasks on ConveyorBackend (needs conveyor's `web` extra). Without "
        "CONVEYOR_API_TOKENS only a loopback address may be bound."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_backend_argument(parser)
        parser.add_argument("--host", help="The address to bind (127.0.0.1).")
        parser.add_argument("--port", type=int, help="The port (8000).")
        parser.add_argument("--log-level", help="INFO (the default), DEBUG, WARNING, ...")
        parser.add_argument("--request-timeout", type=float, help="Seconds to send a request.")
        parser.add_argument("--limit-concurrency", type=int, help="Connections open at once.")
        parser.add_argument(
            "--forwarded-allow-ips", help="Reverse proxies whose X-Forwarded-* are believed."
        )
        parser.add_argument("--public-url", help="The URL browsers reach the server at.")

    def handle(self, *args: Any, **options: Any) -> None:
        names = ("host", "port", "log_level", "request_timeout", "limit_concurrency")
        arguments = ["serve", app_spec(options["backend"])]
        arguments += flags(options, (*names, "forwarded_allow_ips", "public_url"))
        run_conveyor(arguments, "manage.py conveyor_serve", options)
