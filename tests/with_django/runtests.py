#!/usr/bin/env python
"""Run the Django tests — the shop app's (tests of the backend through a small project) and
tasks/ (Django's own tests of task backends, adapted to ConveyorBackend) — with Django's test
runner, once on each store:

- sqlite: Django's database a SQLite file in a temporary directory, conveyor's store the file
  ConveyorBackend puts beside it;
- postgres: both in the database of CONVEYOR_TEST_POSTGRES_URL
  (postgresql://postgres@127.0.0.1:5432/test), in two schemas of this run's own, made here and
  dropped afterwards. If PostgreSQL cannot be reached the run fails under CI=true and is
  skipped otherwise.

    python tests/with_django/runtests.py [--store sqlite|postgres|all] [--upstream DIR] [-v 2]
                                    [--failfast] [test labels...]

--upstream names the directory Django's own tests/tasks was unpacked into (mk/django.mk does
it), so tasks/tests_upstream.py can check that each of its tests is adapted or listed in
tasks/LEFT_OUT.md. The last line is the run's count: `django-X.Y: N passed, N failed, N skipped`.

The test files are named tests_*.py, which Django's runner finds and pytest (`make test`, in a
virtualenv without Django) does not."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
POSTGRES_URL = os.environ.get(
    "CONVEYOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: Running in CI (.ci/run sets CI=true): a server that cannot be reached fails the run.
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
STORES = ("sqlite", "postgres")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--store", choices=[*STORES, "all"], default="all")
    parser.add_argument("--upstream", help="Django's tests/tasks, unpacked (see mk/django.mk)")
    parser.add_argument("-v", "--verbosity", default="1")
    parser.add_argument("--failfast", action="store_true")
    parser.add_argument("labels", nargs="*", help="test labels (default: all)")
    args = parser.parse_args()

    import django

    name = f"django-{django.get_version()}"
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    started = time.monotonic()
    ok = True
    for store in STORES if args.store == "all" else (args.store,):
        if store == "postgres" and (problem := postgres_problem()) is not None:
            message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {problem}"
            if IN_CI:
                print(f"{name} [postgres]: FAILED: {message}", flush=True)
                totals["failed"] += 1
                ok = False
            else:
                print(f"{name} [postgres]: skipped: {message}", flush=True)
            continue
        print(f"== {name} on {store} ==", flush=True)
        counts, passed = run_on(store, args)
        ok = ok and passed
        for key in totals:
            totals[key] += counts.get(key, 0)
    print(f"({time.monotonic() - started:.1f} s)")
    print(
        f"{name}: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return 0 if ok else 1


def run_on(store: str, args: argparse.Namespace) -> tuple[dict[str, int], bool]:
    """Django's test runner in a process of its own, on `store`, in a directory (and, on
    PostgreSQL, schemas) of the run's own, removed afterwards."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"conveyor-django-{store}-"))
    schema = f"django_{uuid.uuid4().hex[:12]}"
    summary = run_dir / "summary.json"
    env = {
        **os.environ,
        "CONVEYOR_DJANGO_STORE": store,
        "CONVEYOR_DJANGO_RUN_DIR": str(run_dir),
        "CONVEYOR_DJANGO_SCHEMA": schema,
        "CONVEYOR_DJANGO_SUMMARY": str(summary),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    if args.upstream:
        env["CONVEYOR_DJANGO_UPSTREAM"] = str(Path(args.upstream).resolve())
    command = [sys.executable, "-m", "django", "test", "-v", args.verbosity, *args.labels]
    if args.failfast:
        command.append("--failfast")
    try:
        if store == "postgres":
            postgres(f'CREATE SCHEMA "{schema}"')
        code = subprocess.run(command, cwd=HERE, env=env, check=False).returncode
        counts = json.loads(summary.read_text()) if summary.exists() else {"failed": 1}
    finally:
        if store == "postgres":
            postgres(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            postgres(f'DROP SCHEMA IF EXISTS "{schema}_conveyor" CASCADE')
        shutil.rmtree(run_dir, ignore_errors=True)
    return counts, code == 0


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be reached (None: it can)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        return str(exc).strip()
    return None


def postgres(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(statement)


if __name__ == "__main__":
    sys.exit(main())
