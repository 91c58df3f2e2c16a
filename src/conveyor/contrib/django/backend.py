"""`ConveyorBackend`: Django's Tasks framework on conveyor's store and workers.

```python
TASKS = {"default": {"BACKEND": "conveyor.contrib.django.ConveyorBackend"}}
```

See docs/integrations/django.md: OPTIONS, the priority mapping, transactions, the worker."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

import conveyor
from conveyor.config import QUEUE_NAME
from conveyor.contrib.django import api, results
from conveyor.contrib.django.runner import DjangoTasks
from conveyor.contrib.django.stores import Store, app_for


class ConveyorBackend(api.BaseTaskBackend):  # type: ignore[misc]
    """A Django task backend whose tasks are conveyor jobs: stored in PostgreSQL or SQLite, run
    by `manage.py conveyor_worker`, with their results, errors and attempts read back by
    `get_result`.

    OPTIONS: `url` (a conveyor URL), or `database` (the DATABASES alias the store is in or
    beside, "default"); any other key is a `conveyor.App` keyword argument (`postgres_schema`,
    `max_attempts`, `lease_seconds`, ...)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.store = Store.from_options(alias, self.options)
        self._app: conveyor.App | None = None

    @property
    def app(self) -> conveyor.App:
        """The conveyor App this backend enqueues on and its worker runs (made on first use:
        no connection before)."""
        if self._app is None:
            self._app = app_for(self.store)
        return self._app

    def validate_task(self, task: Any) -> None:
        """Django's checks, and a queue name conveyor can keep."""
        super().validate_task(task)
        if not isinstance(task.queue_name, str) or not QUEUE_NAME.fullmatch(task.queue_name):
            raise api.InvalidTask(
                f"Queue name {task.queue_name!r} is not valid for conveyor: use 1-128 "
                "characters of A-Z a-z 0-9 _ . : -"
            )

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Store a job that runs `task(*args, **kwargs)`. On PostgreSQL inside
        `transaction.atomic()` (the store in the Django database, psycopg 3), the job is
        written in that transaction: it exists if and only if the transaction commits."""
        self.validate_task(task)
        # Django's checks and JSON form of the arguments (TypeError for what it cannot store)
        unsent = api.TaskResult(
            task=task,
            id="",
            status=api.TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        call = (
            self._registry()
            .register(task)
            .configure(
                queue=task.queue_name,
                priority=results.conveyor_priority(task.priority),
                run_at=None if task.run_after is None else results.aware(task.run_after),
                meta={results.META_KEY: results.django_meta(task, self.alias)},
                connection=self._transaction(),
            )
        )
        job = call.enqueue(*unsent.args, **unsent.kwargs)
        result = results.result_of(job, task)
        api.task_enqueued.send(type(self), task_result=result)
        return result

    def _registry(self) -> DjangoTasks:
        tasks = self.app.tasks
        assert isinstance(tasks, DjangoTasks)  # every store's App has one (stores.app_for)
        return tasks

    def _transaction(self) -> Any:
        """The psycopg connection of the Django transaction the job joins, if there is one to
        join: the store is in the Django database, PostgreSQL on psycopg 3, inside atomic()."""
        if not self.store.shares_database:
            return None
        connection = connections[self.store.database]
        if connection.vendor != "postgresql" or not connection.in_atomic_block:
            return None
        import psycopg

        raw = connection.connection
        return raw if isinstance(raw, psycopg.Connection) else None

    def get_result(self, result_id: Any) -> Any:
        """The TaskResult of a job, as the store has it now. `TaskResultDoesNotExist` for an id
        no job has, a job not enqueued through Django, or one whose transaction has not
        committed (it does not exist yet)."""
        job_id = _job_id(result_id)
        if job_id is None:
            raise api.TaskResultDoesNotExist(result_id)
        try:
            job = self.app.get_job(job_id)
        except conveyor.JobNotFound:
            raise api.TaskResultDoesNotExist(result_id) from None
        if results.META_KEY not in job.meta:
            raise api.TaskResultDoesNotExist(result_id)
        return results.result_of(job)

    def check(self, **kwargs: Any) -> list[Any]:
        """Django's system checks (`manage.py check`): the store's URL can be found, and an
        enqueue on PostgreSQL can join Django's transactions."""
        try:
            url = self.store.resolve_url()
        except ImproperlyConfigured as exc:
            return [checks.Error(str(exc), id="conveyor.E001")]
        if self.store.shares_database and url.startswith("postgresql") and not _on_psycopg3():
            return [
                checks.Warning(
                    f"TASKS[{self.alias!r}] cannot enqueue inside Django's transactions: "
                    "Django uses psycopg2; with psycopg 3 it would",
                    hint="pip install 'psycopg[binary]' (Django prefers it to psycopg2)",
                    id="conveyor.W001",
                )
            ]
        return []


def _job_id(result_id: Any) -> int | None:
    """A TaskResult id (the job's id, as text) as the job's id; None if it cannot be one."""
    if isinstance(result_id, int) and not isinstance(result_id, bool):
        return result_id if result_id > 0 else None
    text = str(result_id)
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
    return None


def _on_psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)
