"""The Redis backend: every state change one Lua script, every key in one hash slot.

`RedisOperations` writes each operation as a plan of `Script` and `Cmd` steps (see
`conveyor.backends.redis.scripts`); the key layout is described at the top of `lua/lib.lua`.
`RedisEngine` runs plans on redis-py's blocking and asyncio clients. Time is the server's
(`TIME`), unless the App was given a clock of its own (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError

from conveyor import redact
from conveyor.backends.base import Beat, Engine, outcome_array
from conveyor.backends.plan import Call
from conveyor.backends.redis.admin import AdminOperations
from conveyor.backends.redis.flow import FlowOperations
from conveyor.backends.redis.rows import job_of, queues_arg
from conveyor.backends.redis.scripts import Cmd, RedisPlan, Script, lua
from conveyor.backends.redis.wakeups import BlockingWake, StreamWake
from conveyor.clock import Clock, SystemClock
from conveyor.config import Settings
from conveyor.errors import (
    BackendUnavailable,
    ConfigurationError,
    NotAConveyorDatabase,
    ValidationError,
)
from conveyor.job import JOB_COLUMNS, Job, NewJob, Outcome, Start, WorkerInfo

T = TypeVar("T")
log = logging.getLogger("conveyor.redis")

#: The newest layout of the keyspace this conveyor writes.
LATEST_VERSION = 1
#: The policies under which Redis deletes keys by itself when it is full: jobs would vanish.
EVICTING = ("allkeys-", "volatile-")
#: The servers this process has warned keep nothing on disk (once a process, not an App).
_WARNED_VOLATILE: set[str] = set()
#: Keys every conveyor store soon has, and nothing else would name so.
OWN_KEYS = ("next_id", "workers", "beats", "counts", "events", "leadership")
#: How long a blocking wait lasts at most in one call (the client's socket outlives it).
LONGEST_WAIT_S = 30.0
#: The most jobs one enqueue stores. A call is one script, all or none, and the server runs
#: nothing else meanwhile: 100,000 jobs hold it for some 2-6 s; millions would stall every
#: worker for a minute and outlast `statement_timeout` (the caller told "unavailable" of a
#: call the server then carried out whole).
MOST_JOBS_A_CALL = 100_000


class RedisOperations(AdminOperations, FlowOperations):
    """Every operation as a plan of Lua scripts and commands."""

    latest_version = LATEST_VERSION

    def __init__(self, prefix: str, settings: Settings, clock: Clock) -> None:
        self.prefix = prefix
        self.settings = settings
        self.clock = clock
        self.checked = False
        self.use_clock(clock)

    def use_clock(self, clock: Clock) -> None:
        self.clock = clock
        #: the server's clock, unless a test gave the App a clock of its own
        self.server_time = isinstance(clock, SystemClock)

    # -- schema -----------------------------------------------------------------------------

    def migrate(self, down_to: int | None = None) -> Call[list[int]]:
        return Call(self._migrate_plan(down_to), check=False)

    def _migrate_plan(self, down_to: int | None) -> RedisPlan[list[int]]:
        version = yield from self._version_plan()
        if down_to is None:
            if version >= LATEST_VERSION:
                return []
            yield Cmd(("SET", self.key("version"), LATEST_VERSION))
            self.checked = True
            return list(range(version + 1, LATEST_VERSION + 1))
        if version <= down_to:
            return []
        yield Script("drop")
        self.checked = False
        return list(range(version, down_to, -1))

    def schema_version(self) -> Call[int]:
        return Call(self._version_plan(), check=False)

    def _version_plan(self) -> RedisPlan[int]:
        found = yield Cmd(("GET", self.key("version")))
        return 0 if found is None else int(found)

    def check_schema(self) -> Call[None]:
        return Call(self._check_plan(), check=False)

    def _check_plan(self) -> RedisPlan[None]:
        version = yield from self._version_plan()
        if version > LATEST_VERSION:
            raise ConfigurationError(
                f"Redis keys {self.prefix}:* have layout version {version}, newer than this "
                f"conveyor knows ({LATEST_VERSION}); upgrade conveyor"
            )
        if version == 0 and (yield from self._holds_keys_plan()):
            # Keys under the prefix, with no version: not conveyor's — unless another process
            # set the version meanwhile (several starting on a new prefix at once), or they are
            # conveyor's own, written by processes still running after the server lost its
            # data (a restart without persistence, a failover to an empty replica).
            if (yield from self._version_plan()) == 0 and not (yield from self._ours_plan()):
                raise NotAConveyorDatabase(
                    f"Redis holds keys under {self.prefix}: that are not conveyor's; give "
                    "conveyor a prefix of its own (redis_prefix / CONVEYOR_REDIS_PREFIX)"
                )
        elif version == 0:
            if self.settings.auto_migrate is False:
                raise ConfigurationError(
                    f"Redis keys {self.prefix}:* need migrations 1..{LATEST_VERSION}: run "
                    "`conveyor migrate` (or pass auto_migrate=True)"
                )
            yield Cmd(("SET", self.key("version"), LATEST_VERSION, "NX"))
        self.checked = True

    def _ours_plan(self) -> RedisPlan[bool]:
        """Whether the prefix holds keys only conveyor writes (then its version is restored)."""
        found = yield Cmd(("EXISTS", *(self.key(k) for k in OWN_KEYS)))
        if not found:
            return False
        yield Cmd(("SET", self.key("version"), LATEST_VERSION, "NX"))
        return True

    def _holds_keys_plan(self) -> RedisPlan[bool]:
        """Whether any key under the prefix exists (a whole SCAN: only on a store's first use)."""
        cursor = 0
        while True:
            cursor, found = yield Cmd(
                ("SCAN", cursor, "MATCH", f"{self.prefix}:*", "COUNT", 10_000)
            )
            if found:
                return True
            if int(cursor) == 0:
                return False

    # -- enqueue ----------------------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> Call[list[Job]]:
        if connection is not None:
            raise ValidationError(
                "enqueue inside your own transaction (connection=...) needs PostgreSQL"
            )
        if len(jobs) > MOST_JOBS_A_CALL:
            raise ValidationError(
                f"{len(jobs):,} jobs in one call: Redis stores at most {MOST_JOBS_A_CALL:,} a "
                "call (a call is one script, which holds the server while it runs); split it"
            )
        return Call(self._enqueue_plan(jobs))

    def _enqueue_plan(self, jobs: Sequence[NewJob]) -> RedisPlan[list[Job]]:
        args = yield from self._enqueue_args(jobs)
        now = jobs[0].created_at if jobs else None
        reply = yield from self._refusing_missing(Script("enqueue", tuple(args), now=now))
        return self._stored(jobs, reply)

    # -- reading one job --------------------------------------------------------------------

    def get_job(self, job_id: int) -> Call[Job | None]:
        return Call(self._get_job_plan(job_id))

    def _get_job_plan(self, job_id: int) -> RedisPlan[Job | None]:
        row = yield Cmd(("HMGET", self.key("job", job_id), *JOB_COLUMNS))
        return None if row[0] is None else job_of(row)

    # -- the worker's hot path --------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int = 0,
    ) -> Call[list[Job]]:
        return Call(self._claim_plan(worker_id, queues, limit, lease_until, now, ahead))

    def _claim_plan(
        self,
        worker_id: str,
        queues: Sequence[str] | None,
        limit: int,
        lease_until: float,
        now: float,
        ahead: int,
    ) -> RedisPlan[list[Job]]:
        args = (worker_id, queues_arg(queues), limit, ahead, repr(lease_until))
        rows = yield Script("claim", args, now=now)
        return [job_of(r) for r in rows]

    def complete(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start] = ()
    ) -> Call[list[int]]:
        return Call(self._complete_plan(outcomes, starts))

    def _complete_plan(
        self, outcomes: Sequence[Outcome], starts: Sequence[Start]
    ) -> RedisPlan[list[int]]:
        rows = [outcome_array(o) for o in outcomes]
        started = [[s.job_id, s.worker_id, s.attempt, s.at, s.ago] for s in starts]
        # "now" is the App's clock as the script is sent: the outcomes' times, on the server's
        # clock, are as long before its TIME as before that (complete.lua)
        applied = yield Script("complete", (json.dumps(rows), json.dumps(started)))
        return [int(i) for i in applied]

    def heartbeat(
        self,
        worker: WorkerInfo,
        running: Sequence[tuple[int, int]],
        lease_until: float,
        look: bool = True,
    ) -> Call[Beat]:
        return Call(self._heartbeat_plan(worker, running, lease_until, look))

    def _heartbeat_plan(
        self, worker: WorkerInfo, running: Sequence[tuple[int, int]], lease_until: float, look: bool
    ) -> RedisPlan[Beat]:
        running = sorted(running)
        record = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "queues": worker.queues,
            "concurrency": worker.concurrency,
            "started_at": worker.started_at,
            "last_beat": worker.last_beat,
            "running": sorted({job_id for job_id, _ in running}),
        }
        args = (
            worker.id,
            json.dumps(record),
            ",".join(f"{i}:{a}" for i, a in running),
            repr(lease_until),
            "1" if look else "0",
        )
        renewed, under = yield Script("heartbeat", args, now=worker.last_beat)
        extended = [{"id": i, "attempt": a, "cancel_requested": c} for i, a, c in renewed]
        looked = None if not look else [{"id": i, "attempt": a} for i, a in under or []]
        return Beat.read(extended, running, looked)

    def deregister_worker(self, worker_id: str) -> Call[None]:
        return Call(self._script_plan(Script("deregister", (worker_id,))))

    def _script_plan(self, step: Script) -> RedisPlan[Any]:
        return (yield step)

    def find_expired(self, now: float, limit: int) -> Call[list[Job]]:
        return Call(self._find_expired_plan(now, limit))

    def _find_expired_plan(self, now: float, limit: int) -> RedisPlan[list[Job]]:
        rows = yield Script("find_expired", (limit,), now=now)
        return [job_of(r) for r in rows]

    def try_lead(self, name: str, holder: str, until: float, now: float) -> Call[bool]:
        return Call(self._lead_plan(name, holder, until, now))

    def _lead_plan(self, name: str, holder: str, until: float, now: float) -> RedisPlan[bool]:
        return bool((yield Script("lead", (name, holder, repr(until - now)), now=now)))

    def resign(self, name: str, holder: str) -> Call[None]:
        return Call(self._script_plan(Script("resign", (name, holder))))

    def after_short_claim(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        return Call(self._due_plan(queues, now))

    def _due_plan(self, queues: Sequence[str] | None, now: float) -> RedisPlan[float | None]:
        due = yield Script("due", (queues_arg(queues),), now=now)
        return None if due is None else float(due)

    def held_back(self, queues: Sequence[str] | None, now: float) -> Call[float | None]:
        return Call(self._held_back_plan(queues, now))

    def _held_back_plan(self, queues: Sequence[str] | None, now: float) -> RedisPlan[float | None]:
        held = yield Script("held_back", (queues_arg(queues),), now=now)
        return None if held is None else float(held)


def _unavailable(exc: BaseException) -> BackendUnavailable | None:
    """The outage an error of redis-py means, if it means one."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return BackendUnavailable(f"Redis: {exc}")
    if isinstance(exc, redis.ReadOnlyError):
        return BackendUnavailable(f"Redis is read-only here (a replica?): {exc}")
    if isinstance(exc, ResponseError):
        text = str(exc)
        if text.startswith("OOM") or "maxmemory" in text:
            return BackendUnavailable(f"Redis is out of memory (maxmemory reached): {text}")
        # BUSY: another client's script has run past lua-time-limit (a huge enqueue_many)
        if text.startswith(("MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "BUSY")):
            return BackendUnavailable(f"Redis: {text}")
    return None


def _reraise(exc: BaseException) -> BaseException:
    error = _unavailable(exc)
    return exc if error is None else error


class RedisEngine(Engine):
    """Runs plans on a blocking client (the sync API) and one asyncio client per event loop
    (workers and services); blocking waits have clients of their own."""

    ops: RedisOperations

    def __init__(self, url: str, settings: Settings, clock: Clock) -> None:
        self.url = url
        self.settings = settings
        self.clock = clock
        self.prefix = "{" + settings.redis_prefix + "}"
        self.ops = RedisOperations(self.prefix, settings, clock)
        self._client: redis.Redis | None = None
        self._aclient: aredis.Redis | None = None
        self._wait_client: aredis.Redis | None = None
        self._token = uuid.uuid4().hex
        self._seen = ""
        self._warned = False
        self._listener: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._armed = asyncio.Event()  # registered among the idle: the listener pops
        self._registered = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: per async client, the calls running on it; and the released ones they keep open
        self._calls: dict[aredis.Redis, int] = {}
        self._retired: set[aredis.Redis] = set()

    def use_clock(self, clock: Clock) -> None:
        self.clock = clock
        self.ops.use_clock(clock)

    def _options(self, blocking: bool) -> dict[str, Any]:
        timeout = self.settings.statement_timeout
        return {
            "decode_responses": True,
            "socket_connect_timeout": self.settings.connect_timeout,
            # a blocking wait lasts up to LONGEST_WAIT_S; its socket waits a little longer
            "socket_timeout": LONGEST_WAIT_S + timeout if blocking else timeout,
            "health_check_interval": 30,
        }

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, **self._options(False))
        return self._client

    def _on_this_loop(self) -> None:
        """Clients, listener and wake-up bound to another event loop (one that has ended: a
        test's, say) are left behind, not used: this loop gets its own."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._aclient = self._wait_client = None
            self._listener = None
            self._calls.clear()
            self._retired.clear()

    def aclient(self) -> aredis.Redis:
        self._on_this_loop()
        if self._aclient is None:
            self._aclient = aredis.Redis.from_url(self.url, **self._options(False))
        return self._aclient

    def wait_client(self) -> aredis.Redis:
        self._on_this_loop()
        if self._wait_client is None:
            self._wait_client = aredis.Redis.from_url(self.url, **self._options(True))
        return self._wait_client

    # -- drivers ----------------------------------------------------------------------------

    def _args(self, step: Script) -> tuple[Any, ...]:
        now = self.clock.now() if step.now is None else step.now
        server = "1" if self.ops.server_time else "0"
        return (self.prefix, server, repr(float(now)), *step.args)

    def _step(self, client: Any, step: Any) -> Any:
        if isinstance(step, list):
            pipe = client.pipeline(transaction=False)
            for cmd in step:
                pipe.execute_command(*cmd.args)
            return pipe.execute()
        if isinstance(step, Cmd):
            return client.execute_command(*step.args)
        script = lua(step.name)
        args = self._args(step)
        try:
            return client.evalsha(script.sha, 1, *args)
        except NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, 1, *args)

    async def _astep(self, client: Any, step: Any) -> Any:
        if isinstance(step, list):
            pipe = client.pipeline(transaction=False)
            for cmd in step:
                pipe.execute_command(*cmd.args)
            return await pipe.execute()
        if isinstance(step, Cmd):
            return await client.execute_command(*step.args)
        script = lua(step.name)
        args = self._args(step)
        try:
            return await client.evalsha(script.sha, 1, *args)
        except NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, 1, *args)

    def _drive(self, client: Any, plan: RedisPlan[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            error = None
            try:
                value = self._step(client, step)
            except redis.RedisError as exc:
                error = exc

    async def _adrive(self, client: Any, plan: RedisPlan[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            error = None
            try:
                value = await self._astep(client, step)
            except redis.RedisError as exc:
                error = exc

    def run(self, call: Call[T]) -> T:
        try:
            if not self._warned:
                self._warn_durability()
            if call.check and not self.ops.checked:
                self._drive(self.client(), self.ops.check_schema().plan)
            return self._drive(self.client(), call.plan)
        except redis.RedisError as exc:
            raise _reraise(exc) from exc

    async def arun(self, call: Call[T]) -> T:
        if not self._warned or (call.check and not self.ops.checked):
            await asyncio.to_thread(self.run, self.ops.check_schema())
        client = self.aclient()
        self._calls[client] = self._calls.get(client, 0) + 1
        try:
            return await self._adrive(client, call.plan)
        except redis.RedisError as exc:
            raise _reraise(exc) from exc
        finally:
            self._calls[client] -= 1
            if not self._calls[client]:
                del self._calls[client]
                if client in self._retired:  # released while this call ran on it
                    self._retired.discard(client)
                    await client.aclose()

    def _warn_durability(self) -> None:
        """Refuse a server that evicts keys when full; warn once when it keeps nothing on
        disk."""
        if self._warned:
            return
        client: Any = self.client()  # (redis-py's stubs mix its sync and async replies)
        try:
            info = client.info("memory")
            policy = str(info.get("maxmemory_policy", "noeviction"))
            if policy.startswith(EVICTING):
                raise ConfigurationError(
                    f"Redis at {redact.url(self.url)} has maxmemory-policy {policy}: it would "
                    "delete jobs when full. Set maxmemory-policy noeviction (then a full server "
                    "refuses new jobs instead)"
                )
            persistence = client.info("persistence")
            aof = bool(int(persistence.get("aof_enabled", 0)))
            rdb = _rdb_on(client)
        except redis.RedisError as exc:
            raise _reraise(exc) from exc
        self._warned = True
        if not aof and rdb is False and self.url not in _WARNED_VOLATILE:
            _WARNED_VOLATILE.add(self.url)
            log.warning(
                "Redis at %s keeps nothing on disk (neither AOF nor RDB snapshots): a restart "
                "loses every job. See docs/redis.md",
                redact.url(self.url),
            )

    # -- wake-ups -------------------------------------------------------------------------------

    async def wait_for_change(self, timeout: float) -> None:
        """Return soon after a job becomes runnable (or after `timeout`).

        The engine registers its token among the idle (`idle.lua`) and a listener task per
        event loop blocks on its wake-up list; a signal unregisters it. A registration lasts
        until then: a busy worker, which waits again and again while its jobs run, makes no
        round trip for it. The registration itself is shielded: a wait given up while the
        script is on its way (the worker woke for another reason) does not cut the connection
        under it."""
        self._on_this_loop()
        if self._listener is None or self._listener.done():
            self._woken = asyncio.Event()
            self._armed = asyncio.Event()
            self._registered = False
            self._listener = asyncio.create_task(self._listen(), name="conveyor-redis-wake")
        if self._woken.is_set():  # signalled since the last wait: look at once
            self._woken.clear()
            return
        if not self._registered:
            try:
                registered, seq = await asyncio.shield(
                    asyncio.ensure_future(
                        self._adrive(self.aclient(), _idle_plan(self._token, self._seen))
                    )
                )
            except redis.RedisError as exc:
                # out of reach: wait as asked; the worker's next call says so
                log.debug("conveyor.redis.wait_failed", exc_info=exc)
                await asyncio.sleep(timeout)
                return
            self._seen = seq
            if not registered:  # something became runnable since the last registration
                return
            self._registered = True
            self._armed.set()
        # (asyncio.timeout, not wait_for: a wait the worker gives up ends at once)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._woken.wait()
        self._woken.clear()

    async def _listen(self) -> None:
        """Pop this engine's wake-up list while it is registered among the idle, for as long as
        the event loop runs. After a signal it pops again only once registered again (nothing
        is pushed to the list before that): the claim the signal calls for goes out first."""
        wake = self.ops.key("wake", self._token)
        while True:
            await self._armed.wait()
            try:
                if await self.wait_client().blpop([wake], timeout=LONGEST_WAIT_S):  # type: ignore[arg-type,misc]
                    self._signalled()  # a signal ends the registration
            except redis.RedisError as exc:
                log.debug("conveyor.redis.listen_failed", exc_info=exc)
                self._signalled()  # the server may have lost it (a restart): the waiter looks
                await asyncio.sleep(self.settings.poll_interval)

    def _signalled(self) -> None:
        self._registered = False
        self._armed.clear()
        self._woken.set()

    async def subscribe(self) -> StreamWake:
        return StreamWake(
            self.url, self._options(True), self.ops.key("events"), self.ops.key("progress")
        )

    def subscribe_blocking(self) -> BlockingWake:
        return BlockingWake(
            self.url, self._options(True), self.ops.key("events"), self.ops.key("progress")
        )

    async def release(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                await self._listener
            self._listener = None
        # A client still running calls of others sharing this App on the loop (a worker that
        # ends while the App's code waits for a job) is closed by the last of them.
        for client in (self._aclient, self._wait_client):
            if client in self._calls:
                self._retired.add(client)
            elif client is not None:
                await client.aclose()
        self._aclient = self._wait_client = None
        self._loop = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _idle_plan(token: str, seen: str) -> RedisPlan[tuple[bool, str]]:
    registered, seq = yield Script("idle", (token, seen))
    return bool(registered), str(seq)


def _rdb_on(client: Any) -> bool | None:
    """Whether RDB snapshots are configured (None: the server does not say: CONFIG is off)."""
    try:
        save = client.config_get("save").get("save", "")
    except ResponseError:
        return None
    return bool(str(save).strip())
