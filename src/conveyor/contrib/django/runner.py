"""Django tasks as conveyor tasks: the registry a store's App finds them in by name, and the
function a worker runs for each, which gives Django's side of an attempt its due.

conveyor's worker looks a job's task up by name in `app.tasks`; a Django task's name is its
module path (`shop.tasks.send_receipt`), so a worker finds any Django task that it can import,
as Django's own `Task` does when unpickled, without a list of task modules. What is imported
must be a Django Task, or the job fails as conveyor's do for an unknown task.

Around each attempt the worker does what Django's request cycle does around a request: it
resets the query log and closes the database connections that are broken or past their
CONN_MAX_AGE (`close_old_connections`) before and after; it sends Django's `task_started` and
`task_finished` signals; a `takes_context` task gets its `TaskContext` (the attempt, and the
TaskResult as it runs)."""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, reset_queries
from django.utils import timezone
from django.utils.module_loading import import_string

import conveyor
from conveyor.contrib.django import api, results
from conveyor.logging import get_logger
from conveyor.retry import decide

log = get_logger("conveyor.django")

#: The attribute that marks an error of a return value Django cannot store (see `NotStorable`).
_NOT_STORABLE = "_conveyor_result_not_storable"


class _MarkedErrors(type):
    """`isinstance` by a mark on the error, not by its class (see `NotStorable`)."""

    def __instancecheck__(cls, instance: Any) -> bool:
        return getattr(instance, _NOT_STORABLE, False) is True


class NotStorable(Exception, metaclass=_MarkedErrors):
    """Every error raised because a task's return value cannot be stored as JSON, whatever its
    class: given to conveyor as `give_up_on`, so such a job is failed at once, not retried (its
    work is done; running it again would repeat its effects). The error itself keeps its class
    (TypeError, as Django's own backends record it)."""


class DjangoTasks(dict[str, conveyor.Task[Any, Any]]):
    """`app.tasks` of a store's App: conveyor's tasks by name, each Django task registered the
    first time it is enqueued or a worker meets a job of it (imported by its module path)."""

    def __init__(self, app: conveyor.App) -> None:
        super().__init__()
        self._app = app
        self._lock = threading.Lock()

    def get(self, name: str, default: Any = None) -> Any:
        found = super().get(name)
        if found is None:
            found = self._import(name)
        return default if found is None else found

    def __missing__(self, name: str) -> conveyor.Task[Any, Any]:
        found = self._import(name)
        if found is None:
            raise KeyError(name)
        return found

    def _import(self, name: str) -> conveyor.Task[Any, Any] | None:
        """The Django task `name` points to, registered; None if it points to none. Never
        raises: the worker asks on its event loop, where an error would stop it."""
        try:
            found = import_string(name)
        except ImportError:
            return None
        except Exception as exc:  # the task's module is broken: the job fails as unknown
            log.error("django.task_import_failed", task=name, error=repr(exc))
            return None
        return self.register(found) if api.is_task(found) else None

    def register(self, task: Any) -> conveyor.Task[Any, Any]:
        """The conveyor task that runs a Django task, registered once under its module path."""
        name = task.module_path
        with self._lock:
            known = super().get(name)
            if known is not None:
                return known
            return self._app.task(name=name, pass_context=True, give_up_on=NotStorable)(
                attempt_runner(task)
            )


def attempt_runner(task: Any) -> Callable[..., Any]:
    """The function a worker calls for each attempt of a Django task: async for an async task
    (run on the worker's event loop), else sync (run on the worker's threads). Its signature
    is the task's (less `context`), after conveyor's context, so enqueue checks arguments."""
    run = _async_runner(task) if inspect.iscoroutinefunction(task.func) else _sync_runner(task)
    parameters = list(inspect.signature(task.func).parameters.values())
    if task.takes_context:
        parameters = parameters[1:]
    context = inspect.Parameter("_conveyor_context", inspect.Parameter.POSITIONAL_ONLY)
    run.__signature__ = inspect.Signature([context, *parameters])  # type: ignore[attr-defined]
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(run, name, getattr(task.func, name))
    return run


def _sync_runner(task: Any) -> Callable[..., Any]:
    def run(ctx: conveyor.Context, *args: Any, **kwargs: Any) -> Any:
        _tidy_connections()
        try:
            running = _running_result(ctx, task)
            api.task_started.send(sender=_sender(running), task_result=running)
            try:
                value = _storable(_call(task, running, args, kwargs))
            except BaseException as exc:
                # sent inside the handler: Django's receivers log the error from sys.exc_info()
                api.task_finished.send(
                    sender=_sender(running), task_result=_failed(running, ctx, exc)
                )
                raise
            api.task_finished.send(sender=_sender(running), task_result=_succeeded(running, value))
            return value
        finally:
            _tidy_connections()

    return run


def _async_runner(task: Any) -> Callable[..., Any]:
    tidy = sync_to_async(_tidy_connections)  # on the thread the task's ORM calls run on

    async def run(ctx: conveyor.Context, *args: Any, **kwargs: Any) -> Any:
        await tidy()
        try:
            running = _running_result(ctx, task)
            await api.task_started.asend(sender=_sender(running), task_result=running)
            try:
                value = _storable(await _call(task, running, args, kwargs))
            except asyncio.CancelledError:
                raise  # stopped by conveyor (a cancel, a timeout, a shutdown): not the task's end
            except BaseException as exc:
                failed = _failed(running, ctx, exc)
                await api.task_finished.asend(sender=_sender(running), task_result=failed)
                raise
            succeeded = _succeeded(running, value)
            await api.task_finished.asend(sender=_sender(running), task_result=succeeded)
            return value
        finally:
            await tidy()

    return run


def _tidy_connections() -> None:
    """What Django does at each request's start and end: forget the queries logged (DEBUG) and
    close the connections that are broken or older than CONN_MAX_AGE."""
    reset_queries()
    close_old_connections()


def _call(task: Any, running: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if task.takes_context:
        return task.func(api.TaskContext(task_result=running), *args, **kwargs)
    return task.func(*args, **kwargs)


def _storable(value: Any) -> Any:
    """The return value as Django stores it (tuples as lists, bytes as text); an error marked
    `NotStorable` if it cannot be."""
    try:
        return api.normalize_json(value)
    except (TypeError, ValueError) as exc:
        setattr(exc, _NOT_STORABLE, True)
        raise


def _sender(result: Any) -> type:
    """Django's signals name the backend's class as their sender."""
    return type(result.task.get_backend())


def _running_result(ctx: conveyor.Context, task: Any) -> Any:
    """The TaskResult of the attempt now running, for the signals and the TaskContext."""
    job = ctx.job
    result = results.result_of(job, results.task_of(job), api.TaskResultStatus.RUNNING)
    if result.started_at is None:  # the store learns of the start a moment after it
        now = timezone.now()
        object.__setattr__(result, "started_at", now)
        object.__setattr__(result, "last_attempted_at", now)
    return result


def _succeeded(running: Any, value: Any) -> Any:
    object.__setattr__(running, "status", api.TaskResultStatus.SUCCESSFUL)
    object.__setattr__(running, "finished_at", timezone.now())
    object.__setattr__(running, "_return_value", value)
    return running


def _failed(running: Any, ctx: conveyor.Context, exc: BaseException) -> Any:
    """The TaskResult after a failed attempt: READY if conveyor will retry it (the same
    decision the worker takes next), else FAILED."""
    job = ctx.job
    app = job.app
    assert app is not None  # the worker binds every job it runs
    decision = decide(app.get_task(job.task).retry, exc, job.attempt, job.max_attempts)
    kind = type(exc)
    error = api.TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )
    running.errors.append(error)
    if decision.state is conveyor.JobState.RETRYING:
        object.__setattr__(running, "status", api.TaskResultStatus.READY)
    else:
        object.__setattr__(running, "status", api.TaskResultStatus.FAILED)
        object.__setattr__(running, "finished_at", timezone.now())
    return running
