"""The conveyor App of each TASKS alias on ConveyorBackend, by alias, for the `conveyor`
command: `conveyor --app conveyor.contrib.django.backends:default jobs list`, or `conveyor
worker conveyor.contrib.django.backends:default -p 4`. Django is set up on first use, from
DJANGO_SETTINGS_MODULE (the current directory is on the import path, as with manage.py)."""

from __future__ import annotations

from conveyor.app import App
from conveyor.errors import ConfigurationError


def __getattr__(alias: str) -> App:
    if alias.startswith("__"):  # Python's own look-ups (__path__, __file__, ...)
        raise AttributeError(alias)
    return app_of(alias)


def app_of(alias: str) -> App:
    """The App of TASKS[alias], Django set up first if it is not yet."""
    import django
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    try:
        if not apps.ready:
            django.setup()
        from conveyor.contrib.django import api
        from conveyor.contrib.django.backend import ConveyorBackend

        backend = api.task_backends[alias]
    except ImproperlyConfigured as exc:
        raise ConfigurationError(f"Django task backend {alias!r}: {exc}") from exc
    if not isinstance(backend, ConveyorBackend):
        raise ConfigurationError(
            f"TASKS[{alias!r}] is {type(backend).__name__}, not "
            "conveyor.contrib.django.ConveyorBackend"
        )
    return backend.app
