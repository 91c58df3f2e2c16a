"""What the adapted tests need of ConveyorBackend: TASKS settings on the run's store (the
upstream tests configure DummyBackend and ImmediateBackend there), a worker that runs what was
enqueued (ImmediateBackend runs it in enqueue), and the few words that differ between Django 6
and the django-tasks backport."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from conveyor.contrib.django import api
from conveyor.contrib.django.backend import ConveyorBackend
from conveyor.testing import drain

BACKEND = "conveyor.contrib.django.ConveyorBackend"

#: InvalidTask's message for an async task on a backend without them: the backport writes
#: "tasks", Django 6 "Tasks".
ASYNC_UNSUPPORTED = (
    "Backend does not support async Tasks."
    if api.BUILT_IN
    else "Backend does not support async tasks."
)


def conveyor_tasks(queues: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """A TASKS entry for ConveyorBackend on the run's store; one attempt per job unless told
    (ImmediateBackend, whose tests these were, runs a task once)."""
    entry: dict[str, Any] = {
        "BACKEND": BACKEND,
        "OPTIONS": {**settings.STORE_OPTIONS, "max_attempts": 1, **options},
    }
    if queues is not None:
        entry["QUEUES"] = queues
    return entry


class ConveyorBackendWithoutAsync(ConveyorBackend):
    """ConveyorBackend said not to support async tasks: Django's validation must refuse them
    (upstream patches the attribute on the backend instead)."""

    supports_async_task = False


def run_worker(alias: str = api.DEFAULT_TASK_BACKEND_ALIAS) -> int:
    """Run a worker in this process until nothing is runnable: what ImmediateBackend did in
    enqueue. Returns how many attempts ran."""
    backend = api.task_backends[alias]
    assert isinstance(backend, ConveyorBackend)
    return drain(backend.app)
