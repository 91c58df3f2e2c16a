# mypy: allow-untyped-defs, allow-untyped-calls
# mypy: disable-error-code="misc,untyped-decorator,var-annotated"
# (upstream's code, untyped; Django ships no type information)
# ruff: noqa: B018 (upstream reads properties that raise, as statements)
"""Adapted from Django's tests/tasks/test_dummy_backend.py: DummyBackend stores tasks and runs
none; here ConveyorBackend with no worker running does the same (jobs stay READY), and a worker
run where upstream edits DummyBackend's stored results. Adaptations are marked "conveyor:"."""

from typing import cast

from django.db import transaction
from django.test import SimpleTestCase, TransactionTestCase, override_settings
from shop.helpers import on_postgres

from conveyor.contrib.django.api import (
    LOGGER_NAME,
    InvalidTask,
    Task,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    task_backends,
)
from conveyor.contrib.django.backend import ConveyorBackend

from . import tasks as test_tasks
from .backends import (
    ASYNC_UNSUPPORTED,
    ConveyorBackendWithoutAsync,
    conveyor_tasks,
    run_worker,
)
from .backends import BACKEND as CONVEYOR_BACKEND


@override_settings(TASKS={"default": conveyor_tasks(queues=[])})
class DummyBackendTestCase(SimpleTestCase):
    def test_using_correct_backend(self):
        self.assertEqual(default_task_backend, task_backends["default"])
        self.assertIsInstance(task_backends["default"], ConveyorBackend)
        self.assertEqual(default_task_backend.alias, "default")
        # conveyor: the store's options, where DummyBackend has none
        self.assertEqual(default_task_backend.options, conveyor_tasks()["OPTIONS"])

    def test_enqueue_task(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            with self.subTest(task):
                result = cast(Task, task).enqueue(1, two=3)

                self.assertEqual(result.status, TaskResultStatus.READY)
                self.assertIs(result.is_finished, False)
                self.assertIsNone(result.started_at)
                self.assertIsNone(result.last_attempted_at)
                self.assertIsNone(result.finished_at)
                with self.assertRaisesMessage(ValueError, "Task has not finished yet"):
                    result.return_value
                self.assertEqual(result.task, task)
                self.assertEqual(result.args, [1])
                self.assertEqual(result.kwargs, {"two": 3})
                self.assertEqual(result.attempts, 0)

                # conveyor: stored, where DummyBackend keeps a list
                self.assertEqual(default_task_backend.get_result(result.id), result)

    async def test_enqueue_task_async(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            with self.subTest(task):
                result = await cast(Task, task).aenqueue()

                self.assertEqual(result.status, TaskResultStatus.READY)
                self.assertIs(result.is_finished, False)
                self.assertIsNone(result.started_at)
                self.assertIsNone(result.last_attempted_at)
                self.assertIsNone(result.finished_at)
                with self.assertRaisesMessage(ValueError, "Task has not finished yet"):
                    result.return_value
                self.assertEqual(result.task, task)
                self.assertEqual(result.args, [])
                self.assertEqual(result.kwargs, {})
                self.assertEqual(result.attempts, 0)

                # conveyor: stored, where DummyBackend keeps a list
                self.assertEqual(await default_task_backend.aget_result(result.id), result)

    def test_get_result(self):
        result = default_task_backend.enqueue(test_tasks.noop_task, (), {})

        new_result = default_task_backend.get_result(result.id)

        self.assertEqual(result, new_result)

    async def test_get_result_async(self):
        result = await default_task_backend.aenqueue(test_tasks.noop_task, (), {})

        new_result = await default_task_backend.aget_result(result.id)

        self.assertEqual(result, new_result)

    def test_refresh_result(self):
        result = default_task_backend.enqueue(test_tasks.calculate_meaning_of_life, (), {})

        # conveyor: a worker runs it, where upstream sets DummyBackend's stored result
        run_worker()

        self.assertEqual(result.status, TaskResultStatus.READY)
        result.refresh()
        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
        self.assertEqual(result.return_value, 42)  # conveyor

    async def test_refresh_result_async(self):
        from asgiref.sync import sync_to_async

        result = await default_task_backend.aenqueue(test_tasks.calculate_meaning_of_life, (), {})

        # conveyor: a worker runs it, on a thread of its own
        await sync_to_async(run_worker, thread_sensitive=False)()

        self.assertEqual(result.status, TaskResultStatus.READY)
        await result.arefresh()
        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)

    async def test_get_missing_result(self):
        with self.assertRaises(TaskResultDoesNotExist):
            default_task_backend.get_result("123456789")  # conveyor: an id no job has yet

        with self.assertRaises(TaskResultDoesNotExist):
            await default_task_backend.aget_result("123456789")

    def test_enqueue_logs(self):
        with self.assertLogs(LOGGER_NAME, level="DEBUG") as captured_logs:
            result = test_tasks.noop_task.enqueue()

        self.assertEqual(len(captured_logs.output), 1)
        self.assertIn("enqueued", captured_logs.output[0])
        self.assertIn(result.id, captured_logs.output[0])

    def test_errors(self):
        result = test_tasks.noop_task.enqueue()
        self.assertEqual(result.errors, [])

    @override_settings(
        TASKS={
            "default": {
                **conveyor_tasks(queues=[]),
                "BACKEND": f"{ConveyorBackendWithoutAsync.__module__}."
                f"{ConveyorBackendWithoutAsync.__qualname__}",
            }
        }
    )
    def test_validate_disallowed_async_task(self):
        # conveyor: a subclass says it, where upstream patches the backend's attribute
        with self.assertRaisesMessage(InvalidTask, ASYNC_UNSUPPORTED):
            default_task_backend.validate_task(test_tasks.noop_task_async)

    def test_check(self):
        errors = list(default_task_backend.check())
        self.assertEqual(len(errors), 0, errors)

    def test_takes_context(self):
        result = test_tasks.get_task_id.enqueue()
        self.assertEqual(result.status, TaskResultStatus.READY)

    def test_validate_on_enqueue(self):
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="unknown_queue")

        with (
            override_settings(
                TASKS={
                    "default": {
                        "BACKEND": CONVEYOR_BACKEND,
                        "QUEUES": ["queue-1"],
                    }
                }
            ),
            self.assertRaisesMessage(InvalidTask, "Queue 'unknown_queue' is not valid for backend"),
        ):
            task_with_custom_queue_name.enqueue()

    async def test_validate_on_aenqueue(self):
        task_with_custom_queue_name = test_tasks.noop_task.using(queue_name="unknown_queue")

        with (
            override_settings(
                TASKS={
                    "default": {
                        "BACKEND": CONVEYOR_BACKEND,
                        "QUEUES": ["queue-1"],
                    }
                }
            ),
            self.assertRaisesMessage(InvalidTask, "Queue 'unknown_queue' is not valid for backend"),
        ):
            await task_with_custom_queue_name.aenqueue()


class DummyBackendTransactionTestCase(TransactionTestCase):
    available_apps = []

    @override_settings(TASKS={"default": conveyor_tasks()})
    def test_doesnt_wait_until_transaction_commit_by_default(self):
        # conveyor: so on SQLite, whose store is a file of its own; on PostgreSQL the job is
        # part of the transaction (see test_waits_until_transaction_commit_on_postgres)
        if on_postgres():
            self.skipTest("PostgreSQL: enqueue joins the transaction")
        with transaction.atomic():
            result = test_tasks.noop_task.enqueue()

            self.assertIsNotNone(result.enqueued_at)

            # conveyor: stored at once, where upstream counts DummyBackend's list
            self.assertEqual(default_task_backend.get_result(result.id), result)

        self.assertEqual(default_task_backend.get_result(result.id), result)

    @override_settings(TASKS={"default": conveyor_tasks()})
    def test_waits_until_transaction_commit_on_postgres(self):
        # conveyor: the PostgreSQL counterpart of the test above (not upstream's)
        if not on_postgres():
            self.skipTest("SQLite: the store is a file of its own")
        with transaction.atomic():
            result = test_tasks.noop_task.enqueue()

            self.assertIsNotNone(result.enqueued_at)
            with self.assertRaises(TaskResultDoesNotExist):
                default_task_backend.get_result(result.id)

        self.assertEqual(default_task_backend.get_result(result.id), result)
