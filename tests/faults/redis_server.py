"""A throwaway Redis server, started by the suite for the suite: `redis-server` on a free port
(127.0.0.1 only) with its files in a temporary folder, one per session, removed at the end.
Destructive faults (SHUTDOWN NOSAVE, a full memory, killed client connections, an evicting
policy) happen here and never on a shared server. It keeps nothing on disk unless a scenario
asks for it (`configure(appendonly="yes")`); what a scenario configures also holds across its
restarts, and `reset` puts everything back between scenarios.

`store_problems` checks a store's keyspace against the layout of
`conveyor/backends/redis/lua/lib.lua`: every job whole and every index agreeing with the jobs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

START_TIMEOUT_S = 30
#: The server's settings between scenarios: nothing on disk, no memory limit, never evicting.
#: A scenario's `configure` changes are set back to these by `reset`.
DEFAULTS = {
    "save": "",
    "appendonly": "no",
    "appendfsync": "everysec",
    "maxmemory": "0",
    "maxmemory-policy": "noeviction",
    "busy-reply-threshold": "5000",
}
#: Only when the server starts (CONFIG SET cannot change them).
STARTUP = {
    "bind": "127.0.0.1",
    "protected-mode": "no",
    "daemonize": "no",
    "dbfilename": "dump.rdb",
    "appenddirname": "appendonly",
    "maxclients": "4000",
    "loglevel": "notice",
}


class Unavailable(Exception):
    """The server cannot be started here (no `redis-server`)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    program: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    #: what scenarios set (CONFIG SET), kept for restarts and undone by `reset`
    overrides: dict[str, str] = field(default_factory=dict)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    # -- life -------------------------------------------------------------------------------

    @classmethod
    def create(cls) -> RedisServer:
        program = shutil.which("redis-server")
        if program is None:
            raise Unavailable("redis-server is not on PATH")
        root = Path(tempfile.mkdtemp(prefix="conveyor-faults-redis-"))
        server = cls(program, root, _free_port())
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        return server

    def _command(self) -> list[str]:
        settings = {
            **STARTUP,
            **DEFAULTS,
            **self.overrides,
            "port": str(self.port),
            "dir": str(self.root),
            "logfile": str(self.log_path),
        }
        command = [self.program]
        for name, value in settings.items():
            command += [f"--{name}", value]
        return command

    def start(self) -> None:
        """Start it with the defaults and what the scenario configured (so that, say, a
        restart with AOF on loads the AOF), and wait until it answers (its data loaded)."""
        if self.running():
            raise AssertionError(f"redis-server {self.pid} is running already")
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # signals meant for pytest never reach it
        )
        self.starts += 1
        self.wait_ready()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def shutdown_nosave(self) -> None:
        """`SHUTDOWN NOSAVE`: no RDB snapshot is written (with AOF on, Redis still flushes and
        fsyncs the AOF on its way out); wait for the process to end."""
        with self.client() as client, contextlib.suppress(redis.ConnectionError):
            client.execute_command("SHUTDOWN", "NOSAVE")
        self._wait_exit()

    def kill(self) -> None:
        """SIGKILL: a crash. What the server had written to the AOF is in the kernel's page
        cache and survives (only a crash of the machine loses the unsynced second)."""
        assert self.proc is not None
        self.continue_()
        self.proc.kill()
        self._wait_exit()

    def _wait_exit(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"redis-server did not exit within {START_TIMEOUT_S}s\n{self.log_tail()}"
            ) from None

    def restart(self, how: str = "shutdown-nosave") -> None:
        """Stop it (`SHUTDOWN NOSAVE`, or `kill` for SIGKILL) and start it again."""
        if how == "kill":
            self.kill()
        else:
            self.shutdown_nosave()
        self.start()

    def stop(self) -> None:
        """SIGSTOP the server: it hangs, every client waits."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def continue_(self) -> None:
        if self.running():
            assert self.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)

    def destroy(self) -> None:
        try:
            if self.running():
                assert self.proc is not None
                self.continue_()
                self.proc.kill()
                self.proc.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- talking to it ----------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
            **kwargs,
        }
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def ready(self) -> bool:
        try:
            with self.client(socket_timeout=3) as client:
                return bool(client.ping())
        except redis.RedisError:  # refused, or LOADING its data
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.running() or time.monotonic() > deadline:
                raise AssertionError(
                    f"redis-server did not answer within {timeout}s "
                    f"(exit code {None if self.proc is None else self.proc.poll()})\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def configure(self, **settings: str) -> None:
        """CONFIG SET each (names with `_` for `-`); kept for restarts, undone by `reset`. Turning
        AOF on waits for the rewrite that starts the AOF, so that a restart can load it."""
        named = {name.replace("_", "-"): str(value) for name, value in settings.items()}
        unknown = set(named) - set(DEFAULTS)
        assert not unknown, f"reset cannot undo {unknown}: give them a default in DEFAULTS"
        with self.client() as client:
            for name, value in named.items():
                client.config_set(name, value)
        self.overrides.update(named)
        if named.get("appendonly") == "yes":
            self.wait_aof()

    def wait_aof(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info("persistence")
            if (
                int(info.get("aof_enabled", 0))
                and not int(info.get("aof_rewrite_in_progress", 0))
                and not int(info.get("aof_rewrite_scheduled", 0))
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"AOF not on within {timeout}s: {info}\n{self.log_tail()}")
            time.sleep(0.05)

    def used_memory(self) -> int:
        return int(self.info("memory")["used_memory"])

    # -- clients ----------------------------------------------------------------------------

    def clients_of(self, pid: int) -> list[dict[str, Any]]:
        """The server's clients that are connections of process `pid` (matched by the local
        port of each TCP socket the process holds, from /proc)."""
        ports = local_ports(pid, self.port)
        with self.client() as client:
            found = client.client_list()
        return [c for c in found if int(str(c["addr"]).rsplit(":", 1)[1]) in ports]

    def kill_clients_of(self, pid: int) -> int:
        """CLIENT KILL every connection of process `pid`; how many were killed."""
        ids = [str(c["id"]) for c in self.clients_of(pid)]
        killed = 0
        with self.client() as client:
            for client_id in ids:
                # One may have closed meanwhile: 0 killed.
                killed += int(client.execute_command("CLIENT", "KILL", "ID", client_id))
        return killed

    def reset(self) -> None:
        """Back to a usable, empty server after a scenario: running, the defaults set again,
        no key left, no client of the scenario's left."""
        self.continue_()
        if not self.running():
            self.overrides.clear()
            self.start()
        self.wait_ready()
        with self.client() as client:
            for name in self.overrides:
                client.config_set(name, DEFAULTS[name])
            client.flushall()
            client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        self.overrides.clear()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "--- redis-server log ---\n" + "\n".join(text)


def local_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of the TCP connections process `pid` has to `remote_port`."""
    inodes = set()
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- the store's keyspace ----------------------------------------------------------------------

#: Fields every job hash has from its enqueue on (enqueue.lua, and `move`'s `state`/`changed`).
WHOLE = (
    "id",
    "queue",
    "task",
    "args",
    "kwargs",
    "meta",
    "priority",
    "max_attempts",
    "attempt",
    "run_at",
    "created_at",
    "state",
    "changed",
)
STATES = ("waiting", "scheduled", "queued", "running", "retrying", "succeeded", "dead", "cancelled")
FINISHED = ("succeeded", "dead", "cancelled")
#: How many problems of one kind are shown.
SHOW = 5


def store_problems(client: Any, prefix: str) -> list[str]:
    """What is wrong in the keyspace of store `prefix` (its name, without braces): jobs not
    whole (a hash without the fields every job has, or with an id not its own), and indexes
    that disagree with the jobs: `ix:<state>`, `ixq:<queue>`, `counts`, `lanes:<queue>` and
    the lanes, `running`, `wr:<worker>`, `due:<queue>`, `finished`. For a store at rest (no
    worker running, or none able to write): it reads the keyspace with SCAN, not atomically.
    Empty when all is well. `client` is a redis.Redis that decodes responses (typed Any:
    redis-py's sync and async return types are one union)."""
    p = "{" + prefix + "}"
    jobs: dict[str, dict[str, str]] = {}
    keys = [k for k in client.scan_iter(match=f"{p}:job:*", count=1000)]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.hgetall(k)
        for k, fields in zip(chunk, pipe.execute(), strict=True):
            jobs[k.rsplit(":", 1)[1]] = fields
    problems: dict[str, list[str]] = {}

    def bad(kind: str, what: str) -> None:
        problems.setdefault(kind, []).append(what)

    queues = set(client.smembers(f"{p}:queues"))
    per_state: dict[str, set[str]] = {s: set() for s in STATES}
    per_queue: dict[str, set[str]] = {}
    counted: Counter[str] = Counter()
    lane_members: dict[str, set[str]] = {}
    by_worker: dict[str, set[str]] = {}
    for job_id, f in jobs.items():
        missing = [name for name in WHOLE if name not in f]
        if missing or f.get("id") != job_id:
            bad("jobs not whole", f"job {job_id} lacks {missing} (fields: {sorted(f)})")
            continue
        state, queue = f["state"], f["queue"]
        if state not in per_state:
            bad("jobs in no state", f"job {job_id} is {state!r}")
            continue
        per_state[state].add(job_id)
        per_queue.setdefault(queue, set()).add(job_id)
        counted[f"{state}:{queue}"] += 1
        if queue not in queues:
            bad("queues not in `queues`", f"job {job_id} of queue {queue!r}")
        if state == "queued":
            if "lm" not in f:
                bad("queued jobs without a lane member", f"job {job_id}")
            else:
                lane_members.setdefault(queue, set()).add(f["lm"])
        if state == "running":
            if "worker_id" not in f or "lease_until" not in f:
                bad("running jobs without worker or lease", f"job {job_id}: {f}")
            else:
                by_worker.setdefault(f["worker_id"], set()).add(job_id)

    # Every state's index, and the structure each state keeps its jobs in.
    def ids_of(key: str) -> set[str]:
        return set(client.zrange(key, 0, -1))

    for state in STATES:
        indexed = ids_of(f"{p}:ix:{state}")
        if indexed != per_state[state]:
            bad(
                f"ix:{state} disagrees",
                f"not indexed {sorted(per_state[state] - indexed, key=int)[:SHOW]}, "
                f"indexed but not {state} {sorted(indexed - per_state[state], key=int)[:SHOW]}",
            )
    for queue in queues | set(per_queue):
        indexed = ids_of(f"{p}:ixq:{queue}")
        if indexed != per_queue.get(queue, set()):
            bad(
                f"ixq:{queue} disagrees",
                f"{len(indexed)} indexed, {len(per_queue.get(queue, ()))} jobs",
            )
        due = ids_of(f"{p}:due:{queue}")
        waiting_to_run = per_state["scheduled"] | per_state["retrying"]
        expected_due = waiting_to_run & per_queue.get(queue, set())
        if due != expected_due:
            bad(f"due:{queue} disagrees", f"due {sorted(due ^ expected_due, key=int)[:SHOW]}")
        # Each queued job in one of its queue's lanes (`lanes:<queue>`), and nothing else there.
        # Which lane is the claim's business: the key's layout is not checked here.
        members: Counter[str] = Counter()
        for lane in client.smembers(f"{p}:lanes:{queue}"):
            members.update(client.zrange(lane, 0, -1))
        queued = lane_members.get(queue, set())
        if set(members) != queued or any(n > 1 for n in members.values()):
            bad(
                f"lanes of {queue} disagree",
                f"queued, in no lane: {sorted(queued - set(members))[:SHOW]}; in a lane, not "
                f"queued: {sorted(set(members) - queued)[:SHOW]}; in two lanes: "
                f"{[m for m, n in members.items() if n > 1][:SHOW]}",
            )
    running = ids_of(f"{p}:running")
    if running != per_state["running"]:
        bad("running disagrees", f"{sorted(running ^ per_state['running'], key=int)[:SHOW]}")
    for worker, ids in by_worker.items():
        held = set(client.smembers(f"{p}:wr:{worker}"))
        if not ids <= held:
            bad(
                "wr:<worker> disagrees",
                f"{worker}: not listed {sorted(ids - held, key=int)[:SHOW]}",
            )
    finished = ids_of(f"{p}:finished")
    done = set().union(*(per_state[s] for s in FINISHED))
    if finished != done:
        bad("finished disagrees", f"{sorted(finished ^ done, key=int)[:SHOW]}")
    counts = {k: int(v) for k, v in client.hgetall(f"{p}:counts").items() if int(v)}
    if counts != dict(counted):
        differ = {
            k: (counts.get(k, 0), counted.get(k, 0))
            for k in set(counts) | set(counted)
            if counts.get(k, 0) != counted.get(k, 0)
        }
        bad("counts disagree", f"<state>:<queue>: (counted, jobs) {differ}")
    top = max((int(j) for j in jobs), default=0)
    next_id = int(client.get(f"{p}:next_id") or 0)
    if next_id < top:
        bad("next_id behind", f"next_id {next_id} < the highest id {top}")
    return [
        f"{kind}: {len(items)} (e.g. {'; '.join(items[:SHOW])})" for kind, items in problems.items()
    ]
