"""How a conveyor job reads as a Django `TaskResult`, and Django's task options as conveyor's:
priorities, moments, states, errors and attempts. Pure functions of their inputs, so the
mapping is written (and documented, docs/integrations/django.md) in one place."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from conveyor.contrib.django import api
from conveyor.job import Job, JobState

#: The key of a job's `meta` under which the Django side of the job is kept: which TASKS alias
#: enqueued it, with which Django priority, and its `run_after`. A job without it was not
#: enqueued through Django, and is no Django task result.
META_KEY = "django"

#: conveyor's priority for Django's default (0): conveyor's own default, "normal".
DEFAULT_PRIORITY = 5


def conveyor_priority(priority: int) -> int:
    """Django's priority (-100 lowest ... 100 highest, 0 by default) as conveyor's (10 lowest ...
    1 highest, 5 by default): 0 is 5; 1-25 is 4, 26-50 is 3, 51-75 is 2, 76-100 is 1;
    -1 to -20 is 6, -21 to -40 is 7, ... -81 to -100 is 10. Higher still runs first; within
    one of conveyor's ten levels, jobs run in the order they became runnable."""
    priority = int(priority)
    if priority > 0:
        return DEFAULT_PRIORITY - _ceil_div(priority, 25)
    if priority < 0:
        return DEFAULT_PRIORITY + _ceil_div(-priority, 20)
    return DEFAULT_PRIORITY


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def status_of(job: Job) -> Any:
    """The Django status of a job's state. Waiting, scheduled, queued and retrying are READY
    (Django: "enqueued, or ready to be executed again"); a job a worker has claimed is RUNNING;
    dead and cancelled (Django has no "cancelled") are FAILED."""
    state = job.state
    if state is JobState.SUCCEEDED:
        return api.TaskResultStatus.SUCCESSFUL
    if state in (JobState.DEAD, JobState.CANCELLED):
        return api.TaskResultStatus.FAILED
    if state is JobState.RUNNING:
        return api.TaskResultStatus.RUNNING
    return api.TaskResultStatus.READY


def moment(seconds: float | None) -> dt.datetime | None:
    """Epoch seconds as Django's datetimes: aware in UTC with USE_TZ, else naive local time (in
    TIME_ZONE), as `timezone.now()` gives them."""
    if seconds is None:
        return None
    when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return when if settings.USE_TZ else timezone.make_naive(when)


def aware(when: dt.datetime) -> dt.datetime:
    """A `run_after` as an aware datetime: a naive one (allowed without USE_TZ) is in
    TIME_ZONE, as Django reads naive datetimes then."""
    return when if timezone.is_aware(when) else timezone.make_aware(when)


def django_meta(task: Any, alias: str) -> dict[str, Any]:
    """What a job keeps of the Django task it runs, beyond what conveyor keeps itself."""
    kept: dict[str, Any] = {"backend": alias, "priority": int(task.priority)}
    if task.run_after is not None:
        kept["run_after"] = aware(task.run_after).isoformat()
    return kept


def task_of(job: Job) -> Any:
    """The Django Task a job runs, with the options it was enqueued with: the module-level
    task its name points to, `using()` its priority, queue, `run_after` and backend."""
    found = import_string(job.task)
    if not api.is_task(found):
        raise ValueError(f"Expected {job.task!r} to point to a Task instance.")
    kept = job.meta[META_KEY]
    run_after = kept.get("run_after")
    when = None if run_after is None else dt.datetime.fromisoformat(run_after)
    if when is not None and not settings.USE_TZ:
        when = timezone.make_naive(when)
    return found.using(
        priority=kept["priority"], queue_name=job.queue, run_after=when, backend=kept["backend"]
    )


def task_error(entry: dict[str, Any]) -> Any:
    """One attempt's error as Django's TaskError: the exception's import path (builtins are
    stored by bare name) and its traceback."""
    kind = str(entry.get("type") or "Exception")
    path = kind if "." in kind else f"builtins.{kind}"
    trace = entry.get("traceback") or f"{kind}: {entry.get('message', '')}\n"
    return api.TaskError(exception_class_path=path, traceback=trace)


def worker_ids(job: Job) -> list[str]:
    """One worker id per attempt made (Django counts attempts by them): the worker an attempt's
    error names, else the job's latest worker."""
    by_attempt = {e.get("attempt"): e.get("worker") for e in job.errors}
    return [by_attempt.get(n) or job.worker_id or "" for n in range(1, job.attempt + 1)]


def result_of(job: Job, task: Any = None, status: Any = None) -> Any:
    """The Django TaskResult of a job: of `task` (the Task it runs, found again by its name if
    not given), in `status` (the job's own, if not given).

    `started_at` and `last_attempted_at` are both when the latest attempt began (conveyor keeps
    that one); a job claimed by a worker that has not begun it yet has none."""
    started = moment(job.started_at)
    result = api.TaskResult(
        task=task_of(job) if task is None else task,
        id=str(job.id),
        status=status_of(job) if status is None else status,
        enqueued_at=moment(job.created_at),
        started_at=started,
        finished_at=moment(job.finished_at) if job.state.is_finished else None,
        last_attempted_at=started,
        args=job.args,
        kwargs=job.kwargs,
        backend=job.meta[META_KEY]["backend"],
        errors=[task_error(entry) for entry in job.errors],
        worker_ids=worker_ids(job),
    )
    if job.state is JobState.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.result)
    return result
