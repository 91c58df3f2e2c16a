"""The Django app: `manage.py conveyor_worker` and `conveyor_serve`, and conveyor's schema
created or upgraded by `manage.py migrate`."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate


class ConveyorConfig(AppConfig):  # type: ignore[misc]
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "conveyor"

    def ready(self) -> None:
        post_migrate.connect(migrate_stores, sender=self)


def migrate_stores(using: str = DEFAULT_DB_ALIAS, verbosity: int = 1, **kwargs: Any) -> None:
    """After `manage.py migrate` on a database: migrate conveyor's schema in each store of
    TASKS in that database (a store with a URL of its own: with the default database). On
    PostgreSQL conveyor never migrates by itself; this is when a Django project does."""
    from conveyor.contrib.django import api
    from conveyor.contrib.django.backend import ConveyorBackend

    for alias in api.task_backends.settings:
        backend = api.task_backends[alias]
        if not isinstance(backend, ConveyorBackend):
            continue
        store = backend.store
        if (store.database if store.shares_database else DEFAULT_DB_ALIAS) != using:
            continue
        applied = backend.app.migrate()
        if applied and verbosity >= 1:
            stdout = kwargs.get("stdout")
            message = f"  conveyor ({alias}): applied migrations {applied}\n"
            if stdout is not None:
                stdout.write(message)
