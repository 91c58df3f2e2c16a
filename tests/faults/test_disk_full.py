"""Scenario 9: the SQLite database's disk fills up mid-drain.

The database lives on a small tmpfs mounted for the test (root only). With workers draining,
the WAL is checkpointed to nothing and a filler file takes every free byte: every write now
needs space that is not there. Enqueue must raise BackendUnavailable saying "database or disk
is full" (never "cannot rollback - no transaction is active"); the workers must not exit but
back off, and carry on by themselves once the filler is deleted. At the end the database passes
`PRAGMA integrity_check` and no acknowledged job is lost.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor

from .conftest import require_command, require_root
from .harness import LEASE_S, RESCUE_FRACTION, Scenario

DISK_MB = 24
FULL_S = 3.0
JOBS = 3_000
#: Measured from when the disk has room again: conveyor backs off up to 5 s between failed
#: claims and between failed outcome writes, so the first write after the disk frees may come
#: that late (longer than a lease and a round); 1 s more for the write on a loaded machine.
DISK_SLACK_S = 5.0 + 1.0 - LEASE_S * (1 + RESCUE_FRACTION)
FULL_MESSAGE = "database or disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MB tmpfs in the test's folder; unmounted afterwards (request it before
    `scenario`, so that the scenario's processes are gone first)."""
    require_root("mounting a tmpfs (mount -t tmpfs)")
    require_command("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        from conftest import unreachable  # tests/conftest.py

        unreachable("mount -t tmpfs", OSError(mounted.stderr.strip()))
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write zeros to `path` until the disk refuses another byte; returns how many."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1 << 9):
            chunk = b"\0" * size
            while True:
                try:
                    written += f.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def checkpoint(db: Path) -> None:
    """Fold the WAL into the database and truncate it: any further write must grow it."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def try_enqueue(scenario: Scenario, many: bool) -> None:
    """An enqueue while the disk is full: BackendUnavailable saying the disk is full is
    right; anything else is a problem (a job that did get stored is acknowledged)."""
    what = "enqueue_many" if many else "enqueue"
    try:
        if many:
            ids = scenario.enqueue(50, task="work", first=JOBS + 1_000)
        else:
            ids = scenario.enqueue(1, task="work", first=JOBS + 2_000)
        scenario.extra["stored_while_full"] = scenario.extra.get("stored_while_full", 0) + len(ids)
    except conveyor.BackendUnavailable as exc:
        scenario.extra["refused_while_full"] = scenario.extra.get("refused_while_full", 0) + 1
        if FULL_MESSAGE not in str(exc):
            scenario.problems.append(
                f"{what} on a full disk raised BackendUnavailable without "
                f"saying {FULL_MESSAGE!r}: {exc}"
            )
    except Exception as exc:
        scenario.extra["failed_while_full"] = scenario.extra.get("failed_while_full", 0) + 1
        scenario.problems.append(
            f"{what} on a full disk raised {type(exc).__module__}."
            f"{type(exc).__qualname__}: {exc} (not BackendUnavailable)"
        )


@pytest.mark.parametrize("backend", ["sqlite"])
def test_disk_full_during_enqueue_and_claims(small_disk: Path, scenario: Scenario) -> None:
    db = small_disk / "jobs.db"
    scenario.project.db_path = db
    scenario.open()
    scenario.enqueue(JOBS, task="work", ms=30)
    workers = scenario.start_workers(2)
    scenario.wait_ended(JOBS // 10)
    before = scenario.running_jobs() or {}

    checkpoint(db)
    filler = small_disk / "filler"
    started = time.monotonic()
    scenario.extra["filler_mb"] = round(fill(filler) / 2**20, 1)
    try:
        for many in (False, True, False, True, False):
            try_enqueue(scenario, many)
        if not scenario.extra.get("refused_while_full") and not scenario.extra.get(
            "failed_while_full"
        ):
            scenario.problems.append("no enqueue was refused while the disk was full")
        time.sleep(max(0.0, started + FULL_S - time.monotonic()))
        scenario.expect_alive(workers, "while the disk was full")
    finally:
        filler.unlink()
    scenario.fault(
        "disk full", workers, started, ended=time.monotonic(), server_wide=True, jobs=before
    )

    scenario.drain()
    scenario.expect_alive(workers, "after the disk was full")
    scenario.stop_workers()
    checked = integrity(db)
    scenario.extra["integrity"] = checked[0] if len(checked) == 1 else checked[:3]
    if checked != ["ok"]:
        scenario.problems.append(f"PRAGMA integrity_check: {checked[:10]}")
    scenario.check(slack=DISK_SLACK_S, stop=False)
