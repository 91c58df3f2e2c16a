# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its test cases and decorators are Any here)
"""The commands, each in a process of its own as they are run: `manage.py conveyor_worker`,
`manage.py conveyor_serve`, `manage.py migrate`, and `conveyor` itself on a TASKS alias."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.test import TransactionTestCase

from conveyor.contrib.django import api
from shop import tasks
from shop.helpers import PROJECT, TIMEOUT_S, backend, manage
from shop.models import Order


class WorkerCommandTests(TransactionTestCase):
    def test_conveyor_worker_runs_the_projects_tasks(self) -> None:
        order = Order.objects.create(item="book")
        results = [
            tasks.add.enqueue(20, 22),
            tasks.multiply.enqueue(6, 7),
            tasks.confirm_order.enqueue(order.id),
            tasks.describe_attempt.enqueue(),
        ]
        done = manage("conveyor_worker", "--burst", "--concurrency", "2")
        self.assertEqual(done.returncode, 0, done.stderr)
        for result in results:
            result.refresh()
        self.assertEqual([r.status for r in results], [api.TaskResultStatus.SUCCESSFUL] * 4)
        self.assertEqual([r.return_value for r in results[:3]], [42, 42, True])
        self.assertTrue(Order.objects.get(id=order.id).confirmed)
        self.assertIn("event=job.succeeded", done.stderr)

    def test_conveyor_worker_supervises_processes_of_plain_conveyor_workers(self) -> None:
        """-p 2: each process is `conveyor worker conveyor.contrib.django.backends:default`,
        which sets Django up itself."""
        results = [tasks.add.using(queue_name="emails").enqueue(n, n) for n in range(4)]
        done = manage("conveyor_worker", "-p", "2", "--burst", "--queues", "emails")
        self.assertEqual(done.returncode, 0, done.stderr)
        for result in results:
            result.refresh()
        self.assertEqual([r.return_value for r in results], [0, 2, 4, 6])
        self.assertIn("event=supervisor.started", done.stderr)

    def test_conveyor_worker_stops_gracefully_on_sigterm(self) -> None:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "conveyor_worker", "--queues", "reports"],
            cwd=PROJECT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            result = tasks.add.using(queue_name="reports").enqueue(1, 2)
            deadline = time.monotonic() + TIMEOUT_S
            while not result.is_finished and time.monotonic() < deadline:
                time.sleep(0.05)
                result.refresh()
            self.assertEqual(result.return_value, 3)
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=TIMEOUT_S)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        self.assertEqual(worker.returncode, 0, stderr)
        self.assertIn("event=worker.stopped", stderr)

    def test_an_alias_not_on_conveyor_is_a_one_line_error(self) -> None:
        done = manage("conveyor_worker", "--backend", "elsewhere", "--burst")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("Django task backend 'elsewhere'", done.stderr)
        self.assertNotIn("Traceback", done.stderr)


class ConveyorCommandTests(TransactionTestCase):
    def test_the_conveyor_command_reads_the_store_of_an_alias(self) -> None:
        result = tasks.add.enqueue(5, 5)
        conveyor = Path(sys.executable).with_name("conveyor")
        done = subprocess.run(
            [
                str(conveyor),
                *("--app", "conveyor.contrib.django.backends:default"),
                *("jobs", "show", result.id, "--json"),
            ],
            cwd=PROJECT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        shown = json.loads(done.stdout)
        self.assertEqual((shown["task"], shown["args"]), ("shop.tasks.add", [5, 5]))
        self.assertEqual(shown["meta"]["django"]["backend"], "default")

    def test_migrate_migrates_the_store(self) -> None:
        done = manage("migrate", "-v", "1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertGreater(backend().app.schema_version(), 0)


class ServeCommandTests(TransactionTestCase):
    def test_conveyor_serve_serves_the_dashboard_and_api_of_the_store(self) -> None:
        tasks.add.enqueue(1, 1)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "manage.py", "conveyor_serve", "--port", str(port)],
            cwd=PROJECT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            health = _get(f"http://127.0.0.1:{port}/health")
            stats = json.loads(_get(f"http://127.0.0.1:{port}/api/queues"))
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=TIMEOUT_S)
        self.assertTrue(health)
        self.assertIn("default", json.dumps(stats))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> str:
    """The body at `url`, once the server answers (it is starting)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
