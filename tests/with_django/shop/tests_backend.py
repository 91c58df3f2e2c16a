# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its test cases and decorators are Any here)
"""ConveyorBackend without a worker: settings, enqueue, the priority mapping, run_after, queues,
validation and get_result, as Django's Tasks API offers them."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, override_settings
from django.utils import timezone

import conveyor
from conveyor.contrib.django import api, results, stores
from conveyor.contrib.django.backend import ConveyorBackend
from conveyor.job import JobState
from shop import tasks
from shop.helpers import backend, conveyor_logs, on_postgres


class SettingsTests(SimpleTestCase):
    def test_the_backend_says_what_it_supports(self) -> None:
        found = backend()
        self.assertIsInstance(found, ConveyorBackend)
        self.assertEqual(
            (
                found.supports_defer,
                found.supports_async_task,
                found.supports_get_result,
                found.supports_priority,
            ),
            (True, True, True, True),
        )

    def test_the_store_is_found_from_the_django_database(self) -> None:
        from django.db import connection

        url = backend().store.resolve_url()
        name = connection.settings_dict["NAME"]
        if on_postgres():  # the same database: enqueue can join its transactions
            self.assertTrue(url.startswith("postgresql://"), url)
            self.assertIn(f"/{name}?", url)
        else:  # a file of conveyor's own, beside Django's
            beside = Path(name).with_name("django-conveyor.sqlite3")
            self.assertEqual(url, f"sqlite:///{beside}")
        self.assertGreater(backend().app.schema_version(), 0, "manage.py migrate made it")

    def test_every_thread_shares_one_app(self) -> None:
        """Django makes a backend per thread; each would otherwise open pools of its own."""
        here = backend()
        there: list[ConveyorBackend] = []
        thread = threading.Thread(target=lambda: there.append(backend()))
        thread.start()
        thread.join()
        self.assertIsNot(there[0], here)
        self.assertIs(there[0].app, here.app)

    def test_an_unknown_option_is_refused_with_the_known_ones(self) -> None:
        with self.assertRaisesMessage(ImproperlyConfigured, "unknown option(s) lease"):
            ConveyorBackend("bad", {"OPTIONS": {"lease": 30}})

    def test_a_bad_conveyor_setting_is_a_configuration_error(self) -> None:
        bad = ConveyorBackend("bad", {"OPTIONS": {"url": "sqlite:///x.db", "max_attempts": 0}})
        with self.assertRaisesMessage(ImproperlyConfigured, "max_attempts"):
            bad.app  # noqa: B018 (made on first use)

    def test_the_system_check_is_clean(self) -> None:
        self.assertEqual(backend().check(), [])

    def test_a_store_it_cannot_find_fails_the_system_check(self) -> None:
        lost = ConveyorBackend("lost", {"OPTIONS": {"database": "nowhere"}})
        [error] = lost.check()
        self.assertEqual(error.id, "conveyor.E001")
        self.assertIn("no database 'nowhere'", error.msg)


class DatabaseUrlTests(SimpleTestCase):
    """How Django's DATABASES entries become conveyor URLs."""

    def test_postgres_credentials_host_port_and_libpq_options(self) -> None:
        url = stores._postgres_url(
            {
                "NAME": "shop",
                "USER": "app",
                "PASSWORD": "p@ss:w/rd",
                "HOST": "db.internal",
                "PORT": 6432,
                "OPTIONS": {"sslmode": "require", "pool": True, "options": "-c a=b"},
            }
        )
        self.assertEqual(
            url,
            "postgresql://app:p%40ss%3Aw%2Frd@db.internal:6432/shop"
            "?sslmode=require&options=-c%20a%3Db",
        )

    def test_a_postgres_socket_directory_is_a_host_parameter(self) -> None:
        url = stores._postgres_url({"NAME": "shop", "HOST": "/var/run/postgresql"})
        self.assertEqual(url, "postgresql:///shop?host=%2Fvar%2Frun%2Fpostgresql")

    def test_sqlite_gets_a_file_of_its_own_beside_djangos(self) -> None:
        self.assertEqual(
            stores._sqlite_url("default", "/srv/app/db.sqlite3"),
            "sqlite:////srv/app/db-conveyor.sqlite3",
        )
        self.assertEqual(
            stores._sqlite_url("default", Path("/srv/app/data")),
            "sqlite:////srv/app/data-conveyor.db",
        )

    def test_in_memory_sqlite_is_refused(self) -> None:
        for name in (":memory:", "file:memorydb_default?mode=memory&cache=shared", ""):
            with self.subTest(name), self.assertRaisesMessage(ImproperlyConfigured, "in-memory"):
                stores._sqlite_url("default", name)


class PriorityTests(SimpleTestCase):
    def test_djangos_priorities_map_onto_conveyors_ten_levels(self) -> None:
        expected = {100: 1, 76: 1, 75: 2, 51: 2, 50: 3, 26: 3, 25: 4, 1: 4, 0: 5}
        expected |= {-1: 6, -20: 6, -21: 7, -40: 7, -41: 8, -60: 8, -61: 9, -80: 9}
        expected |= {-81: 10, -100: 10}
        self.assertEqual({p: results.conveyor_priority(p) for p in expected}, expected)

    def test_a_higher_django_priority_never_runs_later(self) -> None:
        mapped = [results.conveyor_priority(p) for p in range(-100, 101)]
        self.assertEqual(mapped, sorted(mapped, reverse=True))

    def test_the_job_is_stored_with_the_mapped_priority(self) -> None:
        for django_priority, conveyor_priority in ((100, 1), (0, 5), (-100, 10), (30, 3)):
            with self.subTest(django_priority):
                result = tasks.add.using(priority=django_priority).enqueue(1, 2)
                job = backend().app.get_job(int(result.id))
                self.assertEqual(job.priority, conveyor_priority)
                self.assertEqual(backend().get_result(result.id).task.priority, django_priority)


class EnqueueTests(SimpleTestCase):
    def test_enqueue_stores_a_ready_job(self) -> None:
        result = tasks.add.enqueue(2, b=3)
        self.assertEqual(result.status, api.TaskResultStatus.READY)
        self.assertEqual((result.args, result.kwargs), ([2], {"b": 3}))
        self.assertEqual(result.backend, "default")
        self.assertTrue(timezone.is_aware(result.enqueued_at))
        self.assertEqual((result.attempts, result.errors), (0, []))
        job = backend().app.get_job(int(result.id))
        self.assertEqual(
            (job.task, job.queue, job.state), ("shop.tasks.add", "default", JobState.QUEUED)
        )
        self.assertEqual(job.args, [2])

    def test_get_result_reads_back_what_enqueue_returned(self) -> None:
        result = tasks.describe_attempt.using(priority=-7, queue_name="reports").enqueue("x")
        self.assertEqual(backend().get_result(result.id), result)
        self.assertEqual(tasks.describe_attempt.get_result(result.id), result)

    async def test_aenqueue_and_aget_result(self) -> None:
        result = await tasks.multiply.aenqueue(6, 7)
        self.assertEqual(await tasks.multiply.aget_result(result.id), result)

    def test_arguments_are_stored_as_django_normalizes_them(self) -> None:
        result = tasks.record.enqueue(("a", b"b"))  # a tuple is a list, bytes are text
        self.assertEqual(result.args, [["a", "b"]])
        self.assertEqual(backend().app.get_job(int(result.id)).args, [["a", "b"]])

    def test_arguments_django_cannot_store_are_refused(self) -> None:
        with self.assertRaisesMessage(TypeError, "Unsupported type"):
            tasks.record.enqueue(timezone.now())

    def test_arguments_that_do_not_fit_the_function_are_refused_before_anything_is_stored(
        self,
    ) -> None:
        before = len(backend().app.list_jobs(task="shop.tasks.add", limit=10_000))
        with self.assertRaisesMessage(
            conveyor.ValidationError, "bad arguments for task shop.tasks.add"
        ):
            tasks.add.enqueue(1, 2, 3)
        with self.assertRaisesMessage(conveyor.ValidationError, "missing a required argument"):
            tasks.add.enqueue(1)
        with self.assertRaisesMessage(conveyor.ValidationError, "unexpected keyword argument"):
            tasks.describe_attempt.enqueue(unknown=1)
        after = len(backend().app.list_jobs(task="shop.tasks.add", limit=10_000))
        self.assertEqual(after, before)

    def test_the_context_is_not_an_argument_to_give(self) -> None:
        result = tasks.describe_attempt.enqueue(note="n")
        self.assertEqual(result.kwargs, {"note": "n"})

    def test_the_queue_is_djangos_queue_name(self) -> None:
        result = tasks.send_receipt.enqueue(7)
        self.assertEqual(backend().app.get_job(int(result.id)).queue, "emails")

    def test_a_queue_not_in_queues_is_refused(self) -> None:
        with self.assertRaisesMessage(api.InvalidTask, "Queue 'archive' is not valid for backend"):
            tasks.add.using(queue_name="archive")

    @override_settings(
        TASKS={"default": {"BACKEND": "conveyor.contrib.django.ConveyorBackend", "QUEUES": []}}
    )
    def test_a_queue_name_conveyor_cannot_keep_is_refused(self) -> None:
        with self.assertRaisesMessage(api.InvalidTask, "is not valid for conveyor"):
            tasks.add.using(queue_name="no spaces")


class RunAfterTests(SimpleTestCase):
    def test_a_deferred_task_waits_until_run_after(self) -> None:
        later = timezone.now() + dt.timedelta(hours=2)
        result = tasks.add.using(run_after=later).enqueue(1, 1)
        job = backend().app.get_job(int(result.id))
        self.assertEqual(job.state, JobState.SCHEDULED)
        self.assertAlmostEqual(job.run_at, later.timestamp(), delta=1)
        read = backend().get_result(result.id)
        self.assertEqual(read.status, api.TaskResultStatus.READY)
        self.assertEqual(read.task.run_after, later)

    def test_run_after_in_the_past_runs_at_once(self) -> None:
        result = tasks.add.using(run_after=timezone.now() - dt.timedelta(days=1)).enqueue(1, 1)
        self.assertEqual(backend().app.get_job(int(result.id)).state, JobState.QUEUED)

    @override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
    def test_without_use_tz_a_naive_run_after_is_in_time_zone(self) -> None:
        naive = dt.datetime(2100, 7, 1, 12, 0)
        result = tasks.add.using(run_after=naive).enqueue(1, 1)
        job = backend().app.get_job(int(result.id))
        paris_noon = dt.datetime(2100, 7, 1, 10, 0, tzinfo=dt.UTC)  # CEST is UTC+2
        # within a second: on PostgreSQL a moment is set on the server's clock
        self.assertAlmostEqual(job.run_at, paris_noon.timestamp(), delta=1)
        read = backend().get_result(result.id)
        self.assertEqual(read.task.run_after, naive)
        self.assertTrue(timezone.is_naive(read.enqueued_at))


class TaskLookupTests(SimpleTestCase):
    """How a worker finds a Django task: by its module path, imported if need be."""

    def test_a_django_task_is_found_by_its_module_path(self) -> None:
        found = backend().app.get_task("shop.tasks.pair")
        self.assertEqual((found.name, found.is_async), ("shop.tasks.pair", False))
        self.assertTrue(backend().app.get_task("shop.tasks.multiply").is_async)

    def test_a_path_to_no_django_task_is_an_unknown_task(self) -> None:
        for name in ("shop.tasks.RAN", "shop.tasks.missing", "no.such.module", "nodots"):
            with self.subTest(name), self.assertRaises(conveyor.UnknownTask):
                backend().app.get_task(name)

    def test_a_task_module_that_fails_to_import_is_logged_and_unknown(self) -> None:
        with conveyor_logs() as logs, self.assertRaises(conveyor.UnknownTask):
            backend().app.get_task("shop.broken_tasks.anything")
        [event] = [e for e in logs if e["event"] == "django.task_import_failed"]
        self.assertIn("broken on purpose", event["error"])


class GetResultTests(SimpleTestCase):
    def test_an_id_no_job_has_does_not_exist(self) -> None:
        for missing in ("999999999", "not-a-number", "", "-1", 0, "١٢"):
            with self.subTest(missing), self.assertRaises(api.TaskResultDoesNotExist):
                backend().get_result(missing)

    def test_a_conveyor_job_not_enqueued_through_django_is_no_task_result(self) -> None:
        app = backend().app
        name = "shop.tests_backend.plain"
        if name not in app.tasks:
            app.task(name=name)(_plain)
        job = app.enqueue(name)
        with self.assertRaises(api.TaskResultDoesNotExist):
            backend().get_result(str(job.id))

    def test_the_result_of_another_task_is_a_mismatch(self) -> None:
        result = tasks.add.enqueue(1, 2)
        with self.assertRaisesMessage(api.TaskResultMismatch, "Task does not match"):
            tasks.multiply.get_result(result.id)

    def test_a_cancelled_job_reads_as_failed(self) -> None:
        result = tasks.add.enqueue(1, 2)
        backend().app.cancel_job(int(result.id))
        result.refresh()
        self.assertEqual(result.status, api.TaskResultStatus.FAILED)
        self.assertIsNotNone(result.finished_at)
        self.assertEqual(result.errors, [])


def _plain(*args: Any) -> None:
    """A conveyor task of the store that Django knows nothing of."""
