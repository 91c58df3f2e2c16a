"""What only the SQLite backend has: its file, its schema and its migrations."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

import conveyor
from conveyor.backends import open_backend
from conveyor.backends.sqlite import watch
from conveyor.backends.sqlite.backend import MIGRATIONS, SqliteEngine
from conveyor.worker import worker as worker_module

#: Longer than any wait here: a wake-up that comes only from looking again would come too late.
NEVER_S = 120.0


def schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(
            conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
        )


def test_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    app = conveyor.App(f"sqlite:///{path}")

    with pytest.raises(conveyor.NotAConveyorDatabase, match="is not a SQLite database"):
        app.queue_stats()
    assert path.read_text().startswith("these are my notes")


def test_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    app = conveyor.App(f"sqlite:///{path}")

    with pytest.raises(conveyor.NotAConveyorDatabase, match=r"holds other tables \(customers\)"):
        app.queue_stats()
    with pytest.raises(conveyor.NotAConveyorDatabase):
        app.migrate()
    assert [t for _, t, _ in schema(path)] == ["customers"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/nope/jobs.db")
    with pytest.raises(conveyor.ConfigurationError, match="does not exist"):
        app.queue_stats()


def test_memory_database_is_refused() -> None:
    app = conveyor.App("sqlite:///:memory:")
    with pytest.raises(conveyor.ConfigurationError, match="temporary file"):
        app.queue_stats()


def test_without_auto_migrate_an_empty_file_asks_for_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    app = conveyor.App(url, auto_migrate=False)
    with pytest.raises(conveyor.ConfigurationError, match="run `conveyor migrate`"):
        app.queue_stats()
    assert app.migrate() == [m.version for m in MIGRATIONS]
    assert app.migrate() == []
    assert app.queue_stats() == {}
    app.close()


def test_the_schema_is_created_on_first_use_and_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    app = conveyor.App(f"sqlite:///{path}")

    @app.task
    def work() -> None: ...

    work.enqueue()
    app.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM conveyor_migrations")]
    assert versions == [m.version for m in MIGRATIONS]


def test_migrations_down_and_up_again_give_the_same_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_backend(f"sqlite:///{path}", conveyor.App().settings, conveyor.SystemClock()).sync
    store.migrate()
    fresh = schema(path)

    assert store.migrate(down_to=0) == [m.version for m in reversed(MIGRATIONS)]
    assert [name for _, name, _ in schema(path)] == ["conveyor_migrations"]
    store.migrate()
    assert schema(path) == fresh
    store.close()


def test_newer_schema_than_this_version_knows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    app = conveyor.App(f"sqlite:///{path}")
    app.migrate()
    app.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO conveyor_migrations VALUES (999, 'future', 0)")
    with pytest.raises(conveyor.ConfigurationError, match="newer than this conveyor knows"):
        conveyor.App(f"sqlite:///{path}").queue_stats()


def test_two_apps_on_one_file_see_each_others_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = conveyor.App(url), conveyor.App(url)

    @a.task(name="t")
    def t() -> None: ...

    job = t.enqueue()
    assert b.get_job(job.id).task == "t"
    a.close()
    b.close()


# -- wake-ups --------------------------------------------------------------------------------


async def test_an_idle_worker_is_woken_by_the_kernels_report_of_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither the worker's re-checks nor the watch's own looks come within the deadline: only
    # the report of the write to the WAL can.
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", NEVER_S)
    monkeypatch.setattr(watch, "REPORTED_INTERVAL_S", NEVER_S)
    url = f"sqlite:///{tmp_path}/jobs.db"
    worker_app, producer = conveyor.App(url), conveyor.App(url)
    worker_app.migrate()
    for app in (worker_app, producer):
        app.task(name="greet")(lambda name: f"hello {name}")
    worker = conveyor.Worker(worker_app)
    running = asyncio.create_task(worker.run_async())
    try:
        while not producer.list_workers():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # its first claims are over: idle, waiting for a change
        job = await producer.enqueue_async("greet", args=["you"])
        assert await job.wait_async(timeout=10, poll=NEVER_S) == "hello you"
    finally:
        worker.stop()
        await running
    await producer.close_async()
    await worker_app.close_async()


@pytest.mark.parametrize("reports", ["reported", "unreported", "lost"])
def test_a_blocking_waiter_and_a_worker_hear_of_commits_with_or_without_the_kernels_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reports: str
) -> None:
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_S", NEVER_S)
    if reports == "reported":  # only a report can wake them
        monkeypatch.setattr(watch, "REPORTED_INTERVAL_S", NEVER_S)
    elif reports == "unreported":  # a kernel without inotify: they look every few milliseconds
        monkeypatch.setattr(watch.WalWrites, "open", classmethod(lambda cls, path: None))
    else:  # every report is lost: they look every REPORTED_INTERVAL_S all the same
        heard = watch.WalWrites.heard
        monkeypatch.setattr(watch.WalWrites, "heard", lambda self: heard(self) and False)
    url = f"sqlite:///{tmp_path}/jobs.db"
    app = conveyor.App(url)
    app.migrate()

    @app.task(name="double")
    def double(n: int) -> int:
        return 2 * n

    worker = conveyor.Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        while not app.list_workers():
            time.sleep(0.02)
        time.sleep(0.3)
        assert [double.enqueue(n).wait(timeout=10, poll=NEVER_S) for n in range(3)] == [0, 2, 4]
    finally:
        worker.stop_threadsafe()
        thread.join(timeout=30)
    assert not thread.is_alive()
    app.close()


def inotify_instances() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd) == "anon_inode:inotify")


def _link(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed since it was listed
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_many_event_streams_share_one_inotify_instance_and_all_hear_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More streams than a user may have inotify instances (128 by default, across all their
    processes): one instance serves them all, every one is woken by a commit, and the instance
    goes with the last of them."""
    monkeypatch.setattr(watch, "REPORTED_INTERVAL_S", NEVER_S)
    url = f"sqlite:///{tmp_path}/jobs.db"
    app, producer = conveyor.App(url), conveyor.App(url)
    app.migrate()
    producer.task(name="t")(lambda: None)
    before = inotify_instances()
    streams = [await app.backend.subscribe() for _ in range(150)]
    assert inotify_instances() == before + 1
    waits = [asyncio.create_task(s.wait(NEVER_S)) for s in streams]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waits)
    await producer.enqueue_async("t")
    _, pending = await asyncio.wait(waits, timeout=10)
    assert not pending
    for s in streams:
        await s.close()
    assert inotify_instances() == before
    await producer.close_async()
    await app.close_async()


async def test_leadership_moves_once_the_lease_is_seen_unrenewed_for_a_lease(
    tmp_path: Path,
) -> None:
    """SQLite has no clock of its own: a follower takes the lead over once it has watched the
    leader's row go unrenewed for a whole lease on its own monotonic clock, whatever the wall
    clocks say."""
    clock = conveyor.FrozenClock(1_800_000_000.0)
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db", clock=clock)
    backend, now = app.backend, clock.now()
    assert await backend.try_lead("maintenance", "a", now + 30, now)
    # b's wall clock is an hour ahead: a's lease looks long gone to it, but it has only just
    # seen the row, so it does not take over
    assert not await backend.try_lead("maintenance", "b", now + 3630, now + 3600)
    clock.advance(29)
    assert not await backend.try_lead("maintenance", "b", now + 3659, now + 3629)
    clock.advance(2)  # 31 s without a renewal, as b has seen it
    assert await backend.try_lead("maintenance", "b", now + 3661, now + 3631)
    assert not await backend.try_lead("maintenance", "a", now + 61, now + 31)
    await app.close_async()


async def test_a_renewed_lease_is_never_taken_whatever_the_clocks_say(tmp_path: Path) -> None:
    clock = conveyor.FrozenClock(1_800_000_000.0)
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db", clock=clock)
    backend, now = app.backend, clock.now()
    for second in range(0, 120, 10):
        # a renews every ten seconds with a wall clock an hour behind; b looks in between
        assert await backend.try_lead("maintenance", "a", now - 3600 + second + 30, now - 3600)
        clock.advance(5)
        assert not await backend.try_lead("maintenance", "b", now + second + 30, now + second)
        clock.advance(5)
    await app.close_async()


def test_a_full_database_is_an_outage_that_ends_when_space_is_freed(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself when the disk (here: the file's page limit) is
    full; the error the user sees is that one, as BackendUnavailable — never a failed second
    rollback — and nothing of the refused call is stored."""
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")

    @app.task(name="t")
    def t(payload: str) -> None: ...

    app.migrate()
    engine = app.backend.engine
    assert isinstance(engine, SqliteEngine)
    conn = engine._conn()  # its own connection: the page limit holds for the store's writes
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    stored = 0
    with pytest.raises(conveyor.BackendUnavailable, match="database or disk is full") as full:
        for _ in range(1000):
            t.enqueue("x" * 2000)
            stored += 1
    assert "cannot rollback" not in str(full.value)
    assert isinstance(full.value.__cause__, sqlite3.OperationalError)
    assert app.queue_stats() == {"default": {conveyor.JobState.QUEUED: stored}}
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert t.enqueue("x").id
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    app.close()


async def test_a_clock_ahead_never_rescues_a_worker_that_still_beats(tmp_path: Path) -> None:
    """Two processes on one file, one with its clock an hour ahead of the other. The one ahead
    sees every lease of the other as long gone, but leaves the jobs of a worker whose beat it
    sees change; once that worker stops beating, its jobs are rescued within a lease, whatever
    their leases say."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    behind = conveyor.FrozenClock(1_800_000_000.0)
    ahead = conveyor.FrozenClock(behind.now() + 3600)
    worker_app = conveyor.App(url, clock=behind, lease_seconds=30)
    leader_app = conveyor.App(url, clock=ahead, lease_seconds=30)

    @worker_app.task(name="t", backoff=conveyor.fixed(0))
    def t() -> None: ...

    job = t.enqueue()
    now = behind.now()
    [claimed] = await worker_app.backend.claim("w", None, 1, now + 30, now)

    async def beat() -> None:
        info = conveyor.WorkerInfo(
            id="w",
            host="h",
            pid=1,
            queues=None,
            concurrency=1,
            started_at=now,
            last_beat=behind.now(),
            running=[job.id],
        )
        await worker_app.backend.heartbeat(info, [(job.id, 1)], behind.now() + 30)

    await beat()
    for _ in range(10):  # a minute of beats every 6 s, as the leader (ahead) looks in between
        for clock in (behind, ahead):
            clock.advance(3)
        assert await leader_app.backend.find_expired(ahead.now(), 10) == []
        await beat()
    # The worker dies right after its last beat, which the leader sees at its next look; a
    # lease after that look, the job is rescued.
    for clock in (behind, ahead):
        clock.advance(3)
    assert await leader_app.backend.find_expired(ahead.now(), 10) == []
    for clock in (behind, ahead):
        clock.advance(29)
    assert await leader_app.backend.find_expired(ahead.now(), 10) == []
    for clock in (behind, ahead):
        clock.advance(2)
    assert [j.id for j in await leader_app.backend.find_expired(ahead.now(), 10)] == [claimed.id]
    await worker_app.close_async()
    await leader_app.close_async()


async def test_a_dead_worker_whose_clock_was_ahead_is_rescued_within_a_lease(
    tmp_path: Path,
) -> None:
    """Its leases read an hour ahead, so no look at the lease alone finds them run out: its beat
    seen to stop does."""
    url = f"sqlite:///{tmp_path}/jobs.db"
    normal = conveyor.FrozenClock(1_800_000_000.0)
    ahead = conveyor.FrozenClock(normal.now() + 3600)
    worker_app = conveyor.App(url, clock=ahead, lease_seconds=30)
    leader_app = conveyor.App(url, clock=normal, lease_seconds=30)

    @worker_app.task(name="t")
    def t() -> None: ...

    t.enqueue()
    now = ahead.now()
    [claimed] = await worker_app.backend.claim("w", None, 1, now + 30, now)
    info = conveyor.WorkerInfo(
        id="w",
        host="h",
        pid=1,
        queues=None,
        concurrency=1,
        started_at=now,
        last_beat=now,
        running=[claimed.id],
    )
    await worker_app.backend.heartbeat(info, [(claimed.id, 1)], now + 30)
    assert await leader_app.backend.find_expired(normal.now(), 10) == []  # first sight
    for clock in (normal, ahead):  # the worker is gone: its beat stays where it was
        clock.advance(31)
    assert [j.id for j in await leader_app.backend.find_expired(normal.now(), 10)] == [claimed.id]
    await worker_app.close_async()
    await leader_app.close_async()
