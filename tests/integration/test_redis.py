"""What only Redis asks of the backend, against the real server: scripts the server forgot,
what each script carries, a prefix holding keys that are not conveyor's, the keyspace's one
hash slot, the layout's version and its removal, the server's clock, the most jobs one call
stores, and wake-ups on a blocking pop.

Every test gets a key prefix of its own, its keys deleted afterwards. The server is never
stopped or reconfigured here (the fault suite does that, on a server of its own).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import conveyor
from conftest import REDIS_URL, drop_prefix, redis_available  # tests/conftest.py
from conveyor import JobState
from conveyor.backends.redis.scripts import _statements, lua
from conveyor.testing import running_worker


@pytest.fixture
def prefix() -> Iterator[str]:
    redis_available()
    name = f"itest_{uuid.uuid4().hex[:12]}"
    yield name
    drop_prefix(name)


@pytest.fixture
def client() -> Iterator[Any]:
    """A blocking client (typed Any: redis-py's stubs mix its sync and async replies)."""
    redis_available()
    found = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield found
    found.close()


@pytest.fixture
def make(prefix: str) -> Iterator[Callable[..., conveyor.App]]:
    apps: list[conveyor.App] = []

    def new(**kwargs: object) -> conveyor.App:
        app = conveyor.App(REDIS_URL, redis_prefix=prefix, **kwargs)  # type: ignore[arg-type]
        app.task(name="echo")(lambda value: value)
        apps.append(app)
        return app

    yield new
    for app in apps:
        app.close()


def test_scripts_the_server_forgot_are_loaded_again(
    make: Callable[..., conveyor.App], client: Any
) -> None:
    app = make()
    first = app.enqueue("echo", args=[1])
    client.script_flush()  # as after a restart of the server
    second = app.enqueue("echo", args=[2])
    assert app.get_job(second.id).args == [2]

    async def drain() -> None:
        client.script_flush()
        async with running_worker(app):
            assert await second.wait_async(timeout=10) == 2

    asyncio.run(drain())
    assert app.get_job(first.id).state is JobState.SUCCEEDED


def test_each_script_carries_the_helpers_it_runs_and_no_others(client: Any) -> None:
    """Every script compiles on the server, with the part of the shared library it calls (and
    what that calls in turn), without the helpers only other scripts use."""
    folder = Path(conveyor.__file__).parent / "backends" / "redis" / "lua"
    names = sorted(f.stem for f in folder.glob("*.lua") if not f.stem.startswith("lib"))
    for name in names:
        assert client.script_load(lua(name).source) == lua(name).sha
    claim = lua("claim").source
    assert "local function move(" in claim and "local function wake(" in claim  # move's own
    assert "local function admin_walk(" not in claim
    assert "local function flow_held(" not in claim
    assert "local function admin_walk(" in lua("admin_list_jobs").source
    # a top-level line the reading would take for part of the statement above it is refused
    with pytest.raises(ValueError, match="begins with local, function or if"):
        _statements("local DIRECT = {}\nDIRECT.zadd = nil\n")


def test_a_prefix_holding_other_keys_is_refused_and_left_alone(
    make: Callable[..., conveyor.App], client: Any, prefix: str
) -> None:
    client.set(f"{{{prefix}}}:session:42", "someone else's")
    with pytest.raises(conveyor.NotAConveyorDatabase, match="not conveyor's"):
        make().enqueue("echo", args=[1])
    assert client.keys(f"{{{prefix}}}:*") == [f"{{{prefix}}}:session:42"]


def test_every_key_of_a_store_lives_in_one_hash_slot(
    make: Callable[..., conveyor.App], client: Any, prefix: str
) -> None:
    app = make()
    app.enqueue("echo", args=[1], unique_key="one")
    app.enqueue("echo", args=[2], delay=60)
    with pytest.raises(conveyor.ValidationError):
        app.enqueue("echo", args=[3], depends_on=[10_000])
    keys = client.keys(f"{{{prefix}}}:*")
    assert len(keys) > 10
    assert {key_slot(k.encode()) for k in keys} == {key_slot(prefix.encode())}


def test_migrate_down_to_zero_removes_every_key_of_the_prefix_and_only_those(
    make: Callable[..., conveyor.App], client: Any, prefix: str
) -> None:
    app = make()
    app.enqueue("echo", args=[1])
    other = f"itest_other_{uuid.uuid4().hex[:8]}"
    client.set(f"{{{other}}}:kept", "1")
    try:
        assert app.schema_version() == 1
        assert app.backend.sync.migrate(down_to=0) == [1]
        assert client.keys(f"{{{prefix}}}:*") == []
        assert client.get(f"{{{other}}}:kept") == "1"
        assert app.schema_version() == 0
    finally:
        client.delete(f"{{{other}}}:kept")


def test_refused_without_auto_migrate_until_migrated(make: Callable[..., conveyor.App]) -> None:
    app = make(auto_migrate=False)
    with pytest.raises(conveyor.ConfigurationError, match="conveyor migrate"):
        app.enqueue("echo", args=[1])
    assert app.migrate() == [1]
    assert app.enqueue("echo", args=[1]).state is JobState.QUEUED


def test_times_are_the_servers(make: Callable[..., conveyor.App], client: Any) -> None:
    seconds, micros = client.time()
    before = seconds + micros / 1e6
    job = make().enqueue("echo", args=[1], delay=30)
    seconds, micros = client.time()
    after = seconds + micros / 1e6
    assert before <= job.created_at <= after
    assert job.run_at == pytest.approx(job.created_at + 30)


def test_enqueue_inside_a_transaction_is_refused(make: Callable[..., conveyor.App]) -> None:
    with pytest.raises(conveyor.ValidationError, match="needs PostgreSQL"):
        make().enqueue("echo", args=[1], connection=object())
    assert make().list_jobs() == []


def test_an_enqueue_of_more_jobs_than_one_call_stores_is_refused_whole(
    make: Callable[..., conveyor.App],
) -> None:
    """A call is one script, which holds the server while it runs: past 100,000 jobs it is
    refused before anything is sent, with a clear error, not stored in part."""
    app = make()
    echo = app.get_task("echo")
    with pytest.raises(conveyor.ValidationError, match=r"100,001 jobs in one call.*split it"):
        echo.enqueue_many([(i,) for i in range(100_001)])
    assert app.list_jobs() == []
    assert len(echo.enqueue_many([(i,) for i in range(3)])) == 3


def test_an_idle_worker_is_woken_by_an_enqueue_not_by_its_own_recheck(
    make: Callable[..., conveyor.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the idle recheck an hour away, only the wake-up list can start the jobs."""
    monkeypatch.setattr(sys.modules["conveyor.worker.worker"], "IDLE_RECHECK_S", 3600.0)
    worker_app, producer = make(), make()

    async def scenario() -> None:
        async with running_worker(worker_app):
            await asyncio.sleep(0.3)  # its claims found nothing: it waits
            for value in range(3):
                job = await producer.enqueue_async("echo", args=[value])
                assert await job.wait_async(timeout=10) == value
                await asyncio.sleep(0.1)

    asyncio.run(scenario())


def test_a_call_in_flight_outlives_a_release_of_the_apps_async_clients(
    make: Callable[..., conveyor.App], prefix: str
) -> None:
    """A worker that ends releases the App's async clients while other code on the same event
    loop may still be waiting on one (`job.wait_async` beside an in-process worker): that call
    completes, and the client is closed after it."""
    from conveyor.backends.plan import Call
    from conveyor.backends.redis.scripts import Cmd, RedisPlan

    app = make()
    app.enqueue("echo", args=[1])
    engine = app.backend.engine

    def slow() -> RedisPlan[Any]:
        # a command that takes a while on the server: a blocking pop that times out
        return (yield Cmd(("BLPOP", f"{{{prefix}}}:nothing", 0.3)))

    async def scenario() -> None:
        call = asyncio.create_task(engine.arun(Call(slow())))
        await asyncio.sleep(0.1)  # the pop is on its way
        await app.backend.release()
        assert await call is None
        assert await app.get_job_async(1) is not None  # a new client serves the next call

    asyncio.run(scenario())


def test_an_idle_worker_is_signalled_once_however_many_jobs_arrive(
    make: Callable[..., conveyor.App], client: Any, prefix: str
) -> None:
    """Wake-ups are a signal to each idle worker, never a message per job: a worker that
    registered as idle gets one signal for a burst of enqueues, and one more only once it has
    registered again."""
    from conveyor.backends.plan import Call
    from conveyor.backends.redis.scripts import RedisPlan, Script

    app = make()
    engine = app.backend.engine
    wake_list = f"{{{prefix}}}:wake:token-1"

    def register() -> RedisPlan[Any]:
        return (yield Script("idle", ("token-1", "")))

    engine.run(Call(register()))
    for value in range(50):
        app.enqueue("echo", args=[value])
    app.tasks["echo"].enqueue_many([(v,) for v in range(50)])
    assert client.llen(wake_list) == 1
    app.enqueue("echo", args=[0], delay=60)  # a scheduled job wakes too, once registered
    assert client.llen(wake_list) == 1

    engine.run(Call(register()))
    app.enqueue("echo", args=[99], delay=60)
    assert client.lrange(wake_list, 0, -1) == ["1"]  # registering again cleared the old one
