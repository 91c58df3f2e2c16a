# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its test cases and decorators are Any here)
"""Django tasks run by a conveyor worker in the test's process (`conveyor.testing.drain`), read
back through `get_result`: results, errors, retries and attempts, the task context, priorities,
queues and Django's signals."""

from __future__ import annotations

from typing import Any

from django.test import SimpleTestCase

from conveyor.contrib.django import api
from shop import tasks
from shop.helpers import backend, run_until_finished


class ResultTests(SimpleTestCase):
    def test_sync_and_async_tasks_run_and_return(self) -> None:
        added, multiplied = tasks.add.enqueue(2, 3), tasks.multiply.enqueue(4, 5)
        run_until_finished([added, multiplied])
        for result, value in ((added, 5), (multiplied, 20)):
            with self.subTest(result.task.name):
                self.assertEqual(result.status, api.TaskResultStatus.SUCCESSFUL)
                self.assertEqual(result.return_value, value)
                self.assertEqual(result.attempts, 1)
                self.assertEqual(result.errors, [])
                self.assertLessEqual(result.enqueued_at, result.started_at)
                self.assertEqual(result.started_at, result.last_attempted_at)
                self.assertLessEqual(result.started_at, result.finished_at)

    def test_the_return_value_is_stored_as_django_normalizes_it(self) -> None:
        result = tasks.pair.enqueue()
        run_until_finished([result])
        self.assertEqual(result.return_value, [1, "two"])

    def test_a_failing_task_is_retried_then_failed_with_every_attempts_error(self) -> None:
        result = tasks.decline_card.enqueue(42)  # settings: max_attempts 3
        run_until_finished([result])
        self.assertEqual(result.status, api.TaskResultStatus.FAILED)
        self.assertEqual(result.attempts, 3)
        self.assertEqual(len(result.errors), 3)
        for error in result.errors:
            self.assertIs(error.exception_class, ValueError)
            self.assertTrue(error.traceback.endswith("ValueError: card declined for 42\n"))
        with self.assertRaisesMessage(ValueError, "Task failed"):
            result.return_value  # noqa: B018

    def test_a_retry_reads_as_ready_with_the_error_so_far(self) -> None:
        result = tasks.flaky.enqueue(failures=1)
        # one attempt only: a drain would go on to run the retry, were it due by its last look
        backend().app.run_worker(burst=True, max_jobs=1)
        result.refresh()
        self.assertEqual(result.status, api.TaskResultStatus.READY)
        self.assertEqual([e.exception_class for e in result.errors], [ConnectionError])
        self.assertEqual(result.attempts, 1)
        self.assertIsNone(result.finished_at)
        run_until_finished([result])
        self.assertEqual(result.status, api.TaskResultStatus.SUCCESSFUL)
        self.assertEqual(result.return_value, 2)  # the attempt it succeeded on
        self.assertEqual(result.attempts, 2)
        self.assertEqual(len(result.worker_ids), 2)

    def test_an_async_task_is_retried_too(self) -> None:
        result = tasks.flaky_async.enqueue(failures=2)
        run_until_finished([result])
        self.assertEqual((result.status, result.return_value), (api.TaskResultStatus.SUCCESSFUL, 3))

    def test_a_return_value_django_cannot_store_fails_at_once(self) -> None:
        """Its work is done: running it again would repeat it, whatever max_attempts says."""
        result = tasks.unstorable_result.enqueue()
        run_until_finished([result])
        self.assertEqual(result.status, api.TaskResultStatus.FAILED)
        self.assertEqual(result.attempts, 1)
        [error] = result.errors
        self.assertIs(error.exception_class, TypeError)
        self.assertIn("Unsupported type", error.traceback)

    def test_the_task_context_has_the_running_result_and_attempt(self) -> None:
        result = tasks.describe_attempt.enqueue(note="hello")
        run_until_finished([result])
        self.assertEqual(
            result.return_value,
            {"id": result.id, "attempt": 1, "status": "RUNNING", "workers": 1, "note": "hello"},
        )

    async def test_an_async_test_enqueues_and_reads_back(self) -> None:
        from asgiref.sync import sync_to_async

        result = await tasks.multiply.aenqueue(3, 3)
        # the worker on a thread of its own: not the one this test's sync calls run on (its
        # async tasks' sync_to_async calls could not be served there)
        await sync_to_async(run_until_finished, thread_sensitive=False)([result])
        read = await tasks.multiply.aget_result(result.id)
        self.assertEqual(read.errors, [])
        self.assertEqual(read.return_value, 9)
        await result.arefresh()
        self.assertEqual(read, result)


class OrderTests(SimpleTestCase):
    def test_higher_django_priorities_run_first(self) -> None:
        tasks.RAN.clear()
        low = tasks.record.using(priority=-100).enqueue("low")
        normal = tasks.record.enqueue("normal")
        high = tasks.record.using(priority=100).enqueue("high")
        run_until_finished([low, normal, high], concurrency=1)
        self.assertEqual(tasks.RAN, ["high", "normal", "low"])

    def test_a_worker_on_some_queues_runs_only_their_tasks(self) -> None:
        receipt, sum_ = tasks.send_receipt.enqueue(9), tasks.add.enqueue(1, 1)
        run_until_finished([receipt], queues=["emails"])
        sum_.refresh()
        self.assertEqual(receipt.return_value, "receipt for order 9")
        self.assertEqual(sum_.status, api.TaskResultStatus.READY)
        run_until_finished([sum_])


class SignalTests(SimpleTestCase):
    def test_enqueued_started_and_finished_are_sent_for_each_attempt(self) -> None:
        seen: list[tuple[str, str, str]] = []

        def receiver(signal: Any, sender: type, task_result: Any, **kwargs: Any) -> None:
            name = {api.task_enqueued: "enqueued", api.task_started: "started"}.get(
                signal, "finished"
            )
            seen.append((name, task_result.id, str(task_result.status)))
            self.assertIs(sender, type(backend()))

        signals = (api.task_enqueued, api.task_started, api.task_finished)
        for signal in signals:
            signal.connect(receiver)
        try:
            result = tasks.flaky.enqueue(failures=1)
            run_until_finished([result])
        finally:
            for signal in signals:
                signal.disconnect(receiver)
        mine = [(name, status) for name, id_, status in seen if id_ == result.id]
        self.assertEqual(
            mine,
            [
                ("enqueued", "READY"),
                ("started", "RUNNING"),
                ("finished", "READY"),  # to be retried
                ("started", "RUNNING"),
                ("finished", "SUCCESSFUL"),
            ],
        )
