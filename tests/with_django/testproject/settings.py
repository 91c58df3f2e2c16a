"""The test project's settings, on one of two stores (runtests.py runs the tests on each):

- CONVEYOR_DJANGO_STORE=sqlite: Django's database is a SQLite file in CONVEYOR_DJANGO_RUN_DIR,
  and conveyor's store the file the backend puts beside it;
- CONVEYOR_DJANGO_STORE=postgres: both in the PostgreSQL database of CONVEYOR_TEST_POSTGRES_URL
  (postgresql://postgres@127.0.0.1:5432/test), Django's tables in the schema
  CONVEYOR_DJANGO_SCHEMA (its search_path) and conveyor's in that name + "_conveyor".

Django 6 uses its own `django.tasks`; Django 5.2 the `django_tasks` backport, an app."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django

STORE = os.environ.get("CONVEYOR_DJANGO_STORE", "sqlite")
RUN_DIR = Path(os.environ.get("CONVEYOR_DJANGO_RUN_DIR") or tempfile.mkdtemp(prefix="conveyor-dj-"))
SCHEMA = os.environ.get("CONVEYOR_DJANGO_SCHEMA", "conveyor_django_tests")
POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

SECRET_KEY = "conveyor-django-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    *([] if django.VERSION >= (6, 0) else ["django_tasks"]),
    "conveyor.contrib.django",
    "shop",
    "tasks",
]


def _database() -> dict[str, Any]:
    if STORE == "sqlite":
        name = str(RUN_DIR / "django.sqlite3")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            # a file, not the test runner's in-memory database: workers in other processes
            # (manage.py conveyor_worker) must see what the tests wrote
            "TEST": {"NAME": name},
        }
    if STORE == "postgres":
        url = urlsplit(POSTGRES_URL)
        name = url.path.lstrip("/")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": url.username or "",
            "PASSWORD": url.password or "",
            "HOST": url.hostname or "",
            "PORT": url.port or "",
            "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
            # the database itself, kept (the runner passes keepdb): the run's tables are in
            # schemas of its own, dropped afterwards by runtests.py
            "TEST": {"NAME": name},
        }
    raise ValueError(f"CONVEYOR_DJANGO_STORE must be sqlite or postgres, not {STORE!r}")


DATABASES = {"default": _database()}

#: What every ConveyorBackend of the tests is given: its PostgreSQL schema, and retries quick
#: enough for a test to wait for.
STORE_OPTIONS: dict[str, Any] = {
    "postgres_schema": f"{SCHEMA}_conveyor",
    "retry_base_delay": 0.05,
    "retry_cap": 0.2,
}

TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.ConveyorBackend",
        "QUEUES": ["default", "emails", "reports"],
        "OPTIONS": {**STORE_OPTIONS, "max_attempts": 3},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "WARNING"},
}

TEST_RUNNER = "testproject.runner.ConveyorTestRunner"
