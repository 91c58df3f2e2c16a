# mypy: allow-untyped-defs, allow-untyped-calls
# mypy: disable-error-code="misc,untyped-decorator,var-annotated"
# (upstream's code, untyped; Django ships no type information)
# ruff: noqa: B018 (upstream reads properties that raise, as statements)
"""Adapted from Django's tests/tasks/test_immediate_backend.py: ImmediateBackend runs each task
in enqueue; here ConveyorBackend stores it, a worker in the test's process runs it
(`run_worker`), and `refresh()` reads the outcome back: the same statuses, times, errors,
return values, logs and context as upstream expects. One attempt per job, as ImmediateBackend
(conveyor_tasks). Adaptations are marked "conveyor:"."""

from django.db import transaction
from django.test import SimpleTestCase, TransactionTestCase, override_settings
from shop.helpers import on_postgres

from conveyor.contrib.django.api import (
    LOGGER_NAME,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    task_backends,
)
from conveyor.contrib.django.backend import ConveyorBackend

from . import tasks as test_tasks
from .backends import BACKEND as CONVEYOR_BACKEND
from .backends import conveyor_tasks, run_worker


def enqueued_and_run(task, *args, **kwargs):
    """conveyor: what ImmediateBackend's enqueue did: enqueue, a worker runs it, read back."""
    result = task.enqueue(*args, **kwargs)
    run_worker()
    result.refresh()
    return result


@override_settings(TASKS={"default": conveyor_tasks(queues=[])})
class ImmediateBackendTestCase(SimpleTestCase):
    def test_using_correct_backend(self):
        self.assertEqual(default_task_backend, task_backends["default"])
        self.assertIsInstance(task_backends["default"], ConveyorBackend)
        self.assertEqual(default_task_backend.alias, "default")
        # conveyor: the store's options, where ImmediateBackend has none
        self.assertEqual(default_task_backend.options, conveyor_tasks()["OPTIONS"])

    def test_enqueue_task(self):
        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            with self.subTest(task):
                result = enqueued_and_run(task, 1, two=3)

                self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
                self.assertIs(result.is_finished, True)
                self.assertIsNotNone(result.started_at)
                self.assertIsNotNone(result.last_attempted_at)
                self.assertIsNotNone(result.finished_at)
                self.assertGreaterEqual(result.started_at, result.enqueued_at)
                self.assertGreaterEqual(result.finished_at, result.started_at)
                self.assertIsNone(result.return_value)
                self.assertEqual(result.task, task)
                self.assertEqual(result.args, [1])
                self.assertEqual(result.kwargs, {"two": 3})
                self.assertEqual(result.attempts, 1)

    async def test_enqueue_task_async(self):
        from asgiref.sync import sync_to_async

        for task in [test_tasks.noop_task, test_tasks.noop_task_async]:
            with self.subTest(task):
                result = await task.aenqueue()
                # conveyor: a worker runs it, on a thread of its own
                await sync_to_async(run_worker, thread_sensitive=False)()
                await result.arefresh()

                self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
                self.assertIs(result.is_finished, True)
                self.assertIsNotNone(result.started_at)
                self.assertIsNotNone(result.last_attempted_at)
                self.assertIsNotNone(result.finished_at)
                self.assertGreaterEqual(result.started_at, result.enqueued_at)
                self.assertGreaterEqual(result.finished_at, result.started_at)
                self.assertIsNone(result.return_value)
                self.assertEqual(result.task, task)
                self.assertEqual(result.args, [])
                self.assertEqual(result.kwargs, {})
                self.assertEqual(result.attempts, 1)

    def test_catches_exception(self):
        test_data = [
            (
                test_tasks.failing_task_value_error,  # Task function.
                ValueError,  # Expected exception.
                "This Task failed due to ValueError",  # Expected message.
            ),
            (
                test_tasks.failing_task_system_exit,
                SystemExit,
                "This Task failed due to SystemExit",
            ),
        ]
        for task, exception, message in test_data:
            with (
                self.subTest(task),
                self.assertLogs(LOGGER_NAME, level="ERROR") as captured_logs,
            ):
                result = enqueued_and_run(task)

                self.assertEqual(len(captured_logs.output), 1)
                self.assertIn(message, captured_logs.output[0])

                self.assertEqual(result.status, TaskResultStatus.FAILED)
                with self.assertRaisesMessage(ValueError, "Task failed"):
                    result.return_value
                self.assertIs(result.is_finished, True)
                self.assertIsNotNone(result.started_at)
                self.assertIsNotNone(result.last_attempted_at)
                self.assertIsNotNone(result.finished_at)
                self.assertGreaterEqual(result.started_at, result.enqueued_at)
                self.assertGreaterEqual(result.finished_at, result.started_at)
                self.assertEqual(result.errors[0].exception_class, exception)
                traceback = result.errors[0].traceback
                self.assertIs(
                    traceback and traceback.endswith(f"{exception.__name__}: {message}\n"),
                    True,
                    traceback,
                )
                self.assertEqual(result.task, task)
                self.assertEqual(result.args, [])
                self.assertEqual(result.kwargs, {})

    def test_throws_keyboard_interrupt(self):
        # conveyor: in a worker, a task's KeyboardInterrupt is the task's failure, not a
        # Ctrl-C of the worker's (that is SIGINT: a graceful shutdown); the job fails and the
        # worker goes on
        with self.assertLogs(LOGGER_NAME, level="ERROR"):
            result = enqueued_and_run(test_tasks.failing_task_keyboard_interrupt)
        self.assertEqual(result.status, TaskResultStatus.FAILED)
        self.assertEqual(result.errors[0].exception_class, KeyboardInterrupt)

    def test_complex_exception(self):
        with self.assertLogs(LOGGER_NAME, level="ERROR"):
            result = enqueued_and_run(test_tasks.complex_exception)

        self.assertEqual(result.status, TaskResultStatus.FAILED)
        with self.assertRaisesMessage(ValueError, "Task failed"):
            result.return_value
        self.assertIsNotNone(result.started_at)
        self.assertIsNotNone(result.last_attempted_at)
        self.assertIsNotNone(result.finished_at)
        self.assertGreaterEqual(result.started_at, result.enqueued_at)
        self.assertGreaterEqual(result.finished_at, result.started_at)

        self.assertIsNone(result._return_value)
        self.assertEqual(result.errors[0].exception_class, ValueError)
        self.assertIn('ValueError(ValueError("This task failed"))', result.errors[0].traceback)

        self.assertEqual(result.task, test_tasks.complex_exception)
        self.assertEqual(result.args, [])
        self.assertEqual(result.kwargs, {})

    def test_complex_return_value(self):
        with self.assertLogs(LOGGER_NAME, level="ERROR"):
            result = enqueued_and_run(test_tasks.complex_return_value)

        self.assertEqual(result.status, TaskResultStatus.FAILED)
        self.assertIsNotNone(result.started_at)
        self.assertIsNotNone(result.last_attempted_at)
        self.assertIsNotNone(result.finished_at)
        self.assertGreaterEqual(result.started_at, result.enqueued_at)
        self.assertGreaterEqual(result.finished_at, result.started_at)
        self.assertIsNone(result._return_value)
        self.assertEqual(result.errors[0].exception_class, TypeError)
        self.assertIn("Unsupported type", result.errors[0].traceback)

    def test_result(self):
        result = default_task_backend.enqueue(test_tasks.calculate_meaning_of_life, [], {})
        run_worker()  # conveyor
        result.refresh()  # conveyor

        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
        self.assertEqual(result.return_value, 42)

    async def test_result_async(self):
        from asgiref.sync import sync_to_async

        result = await default_task_backend.aenqueue(test_tasks.calculate_meaning_of_life, [], {})
        await sync_to_async(run_worker, thread_sensitive=False)()  # conveyor
        await result.arefresh()  # conveyor

        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
        self.assertEqual(result.return_value, 42)

    def test_enqueue_logs(self):
        with self.assertLogs(LOGGER_NAME, level="DEBUG") as captured_logs:
            result = enqueued_and_run(test_tasks.noop_task)

        self.assertEqual(len(captured_logs.output), 3)

        self.assertIn("enqueued", captured_logs.output[0])
        self.assertIn(result.id, captured_logs.output[0])

        self.assertIn("state=RUNNING", captured_logs.output[1])
        self.assertIn(result.id, captured_logs.output[1])

        self.assertIn("state=SUCCESSFUL", captured_logs.output[2])
        self.assertIn(result.id, captured_logs.output[2])

    def test_failed_logs(self):
        with self.assertLogs(LOGGER_NAME, level="DEBUG") as captured_logs:
            result = enqueued_and_run(test_tasks.failing_task_value_error)

        self.assertEqual(len(captured_logs.output), 3)
        self.assertIn("state=RUNNING", captured_logs.output[1])
        self.assertIn(result.id, captured_logs.output[1])

        self.assertIn("state=FAILED", captured_logs.output[2])
        self.assertIn(result.id, captured_logs.output[2])

    def test_successful_task_no_none_in_logs(self):
        with self.assertLogs(LOGGER_NAME, level="DEBUG") as captured_logs:
            result = enqueued_and_run(test_tasks.noop_task)

        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)

        for log_output in captured_logs.output:
            self.assertNotIn("None", log_output)

    def test_takes_context(self):
        result = enqueued_and_run(test_tasks.get_task_id)

        self.assertEqual(result.return_value, result.id)

    def test_context(self):
        result = enqueued_and_run(test_tasks.test_context, 1)
        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)

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


class ImmediateBackendTransactionTestCase(TransactionTestCase):
    available_apps = []

    @override_settings(TASKS={"default": conveyor_tasks()})
    def test_doesnt_wait_until_transaction_commit_by_default(self):
        # conveyor: so on SQLite (a store of its own); on PostgreSQL the job is part of the
        # transaction: it runs once the transaction commits
        with transaction.atomic():
            result = test_tasks.noop_task.enqueue()

            self.assertIsNotNone(result.enqueued_at)

            # conveyor: a worker runs what it can see
            run_worker()
            if on_postgres():
                with self.assertRaises(TaskResultDoesNotExist):
                    result.refresh()
            else:
                result.refresh()
                self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)

        run_worker()  # conveyor
        result.refresh()  # conveyor
        self.assertEqual(result.status, TaskResultStatus.SUCCESSFUL)
