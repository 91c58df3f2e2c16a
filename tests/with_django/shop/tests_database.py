# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its test cases and decorators are Any here)
"""Tasks and Django's database: the ORM in tasks (sync and async), connections closed between
jobs as between requests, and enqueue inside `transaction.atomic()` — part of the transaction
on PostgreSQL, written at once on SQLite (where `transaction.on_commit` defers it)."""

from __future__ import annotations

import unittest
from functools import partial

from django.db import transaction
from django.test import TransactionTestCase

from conveyor.contrib.django import api
from conveyor.testing import drain
from shop import tasks
from shop.helpers import backend, on_postgres, run_until_finished
from shop.models import Order


class OrmTests(TransactionTestCase):
    def test_tasks_use_the_orm_sync_and_async(self) -> None:
        first, second = Order.objects.create(item="book"), Order.objects.create(item="pen")
        results = [
            tasks.confirm_order.enqueue(first.id),
            tasks.confirm_order_async.enqueue(second.id),
        ]
        run_until_finished(results)
        self.assertEqual([r.return_value for r in results], [True, True])
        self.assertEqual(Order.objects.filter(confirmed=True).count(), 2)

    def test_the_database_connection_is_closed_after_each_job(self) -> None:
        """As after each request (CONN_MAX_AGE 0): the next job on the thread finds it closed."""
        results = [tasks.found_connection_open.enqueue() for _ in range(3)]
        run_until_finished(results, concurrency=1)  # one thread runs all three
        self.assertEqual([r.return_value for r in results], [False, False, False])


@unittest.skipUnless(on_postgres(), "PostgreSQL: the store is in Django's database")
class PostgresTransactionTests(TransactionTestCase):
    def test_a_job_enqueued_in_a_transaction_exists_once_it_commits(self) -> None:
        with transaction.atomic():
            order = Order.objects.create(item="book")
            result = tasks.confirm_order.enqueue(order.id)
            self.assertEqual(result.status, api.TaskResultStatus.READY)
            self.assertEqual(drain(backend().app), 0, "a worker cannot see it yet")
            with self.assertRaises(api.TaskResultDoesNotExist):
                backend().get_result(result.id)
        self.assertEqual(backend().get_result(result.id), result)
        run_until_finished([result])
        self.assertTrue(Order.objects.get(id=order.id).confirmed)

    def test_a_job_enqueued_in_a_transaction_rolled_back_never_exists(self) -> None:
        with self.assertRaises(RuntimeError), transaction.atomic():
            order = Order.objects.create(item="book")
            result = tasks.confirm_order.enqueue(order.id)
            raise RuntimeError("the request failed after it enqueued")
        self.assertFalse(Order.objects.exists())
        with self.assertRaises(api.TaskResultDoesNotExist):
            backend().get_result(result.id)
        self.assertEqual(drain(backend().app), 0)

    def test_a_savepoint_rolled_back_takes_its_job_with_it(self) -> None:
        with transaction.atomic():
            kept = tasks.add.enqueue(1, 1)
            try:
                with transaction.atomic():
                    dropped = tasks.add.enqueue(2, 2)
                    raise RuntimeError("the inner block failed")
            except RuntimeError:
                pass
        backend().get_result(kept.id)
        with self.assertRaises(api.TaskResultDoesNotExist):
            backend().get_result(dropped.id)

    async def test_async_code_enqueues_in_a_transaction_inside_sync_to_async(self) -> None:
        from asgiref.sync import sync_to_async

        def rolled_back() -> str:
            with transaction.atomic():
                Order.objects.create(item="book")
                # as an async view does its transactions: rows and job in one sync function
                result_id = tasks.add.enqueue(1, 2).id
                transaction.set_rollback(True)
            return str(result_id)

        result_id = await sync_to_async(rolled_back)()
        with self.assertRaises(api.TaskResultDoesNotExist):
            await backend().aget_result(result_id)


@unittest.skipIf(on_postgres(), "SQLite: the store is a file of its own")
class SqliteTransactionTests(TransactionTestCase):
    def test_a_job_enqueued_in_a_transaction_is_written_at_once(self) -> None:
        with self.assertRaises(RuntimeError), transaction.atomic():
            result = tasks.add.enqueue(1, 2)
            raise RuntimeError("rolled back")
        self.assertEqual(backend().get_result(result.id).status, api.TaskResultStatus.READY)

    def test_on_commit_enqueues_only_if_the_transaction_commits(self) -> None:
        enqueued: list[str] = []

        def enqueue(order_id: int) -> None:
            enqueued.append(tasks.confirm_order.enqueue(order_id).id)

        with self.assertRaises(RuntimeError), transaction.atomic():
            order = Order.objects.create(item="book")
            transaction.on_commit(partial(enqueue, order.id))
            raise RuntimeError("rolled back")
        self.assertEqual(enqueued, [])
        with transaction.atomic():
            order = Order.objects.create(item="pen")
            transaction.on_commit(partial(enqueue, order.id))
            self.assertEqual(enqueued, [])
        [result_id] = enqueued
        result = backend().get_result(result_id)
        run_until_finished([result])
        self.assertTrue(Order.objects.get(id=order.id).confirmed)
