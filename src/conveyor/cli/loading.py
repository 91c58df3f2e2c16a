"""Finding the user's App from `MODULE:APP` (or `CONVEYOR_APP`), once per command."""

from __future__ import annotations

import importlib
import os
import sys

import click

from conveyor.app import App
from conveyor.errors import ConveyorError


def app_spec(spec: str | None) -> str:
    """The `MODULE:APP` to use: the one given, else `CONVEYOR_APP`; a usage error if neither."""
    spec = spec or os.environ.get("CONVEYOR_APP")
    if not spec:
        raise click.UsageError("name the app as MODULE:APP (or set CONVEYOR_APP)")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.UsageError(f"app must be given as MODULE:APP, got {spec!r}")
    return spec


def load_app(spec: str | None) -> App:
    """`module:attribute` (or `CONVEYOR_APP`) to the App it names."""
    spec = app_spec(spec)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from None
    except ConveyorError as exc:
        raise click.ClickException(f"{module_name!r} failed to set up its App: {exc}") from None
    if not hasattr(module, attr):
        raise click.UsageError(f"module {module_name!r} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, App):
        raise click.UsageError(f"{spec!r} is not a conveyor.App (found {type(app).__name__})")
    return app


class AppRef:
    """The app named by the global `--app` option, imported on first use and closed at exit."""

    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: App | None = None

    def get(self) -> App:
        if self._app is None:
            self._app = load_app(self.spec)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
