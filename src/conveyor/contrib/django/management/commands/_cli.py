"""What conveyor's management commands share: they are `conveyor worker` and `conveyor serve`
on the App of a TASKS alias, run by conveyor's own command line so they behave exactly as it
does (options, logs, signals, supervised processes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click
from django.core.management.base import CommandError, CommandParser

from conveyor.contrib.django import api
from conveyor.contrib.django.backends import app_of
from conveyor.errors import ConveyorError


def add_backend_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--backend",
        default=api.DEFAULT_TASK_BACKEND_ALIAS,
        help="The TASKS alias whose store to serve (default: %(default)s).",
    )


def app_spec(alias: str) -> str:
    """The `MODULE:APP` that names the alias's App to conveyor's command line, checked now so
    a wrong alias is a one-line error."""
    try:
        app_of(alias)
    except ConveyorError as exc:
        raise CommandError(str(exc)) from None
    return f"conveyor.contrib.django.backends:{alias}"


def run_conveyor(arguments: Sequence[str], prog_name: str, options: dict[str, Any]) -> None:
    """Run the `conveyor` command with these arguments in this process. Worker processes it
    starts (`--processes`) find the project as this one does: DJANGO_SETTINGS_MODULE, and
    --pythonpath, if given, on their PYTHONPATH."""
    from conveyor.cli import main

    if options.get("pythonpath"):
        inherited = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [options["pythonpath"], *([inherited] if inherited else [])]
        )
    try:
        main.main(args=list(arguments), prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        raise CommandError("aborted") from None
    except click.ClickException as exc:
        raise CommandError(exc.format_message()) from None


def flag(name: str, value: Any) -> list[str]:
    """`--name value` for an option given, nothing for one left to conveyor's default."""
    if value is None or value is False:
        return []
    return [name] if value is True else [name, str(value)]


def flags(options: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The command line's flags for these options (`log_level` → `--log-level`)."""
    return [part for name in names for part in flag("--" + name.replace("_", "-"), options[name])]
