"""What every system's workloads share: the worker subprocess (started, timed until the store
says the work is done, stopped), the tasks that stamp their start time into a file (from
`stamps`), and the paced enqueue of the latency workload, from plain or async code.

Nothing here imports a peer, so each system's module stays small and the parts are testable
without the peers' virtualenv.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.stamps import STAMPS_ENV as STAMPS_ENV
from benchmarks.peers.stamps import astamp as astamp
from benchmarks.peers.stamps import noop as noop
from benchmarks.peers.stamps import stamp as stamp

#: The folder that holds the `benchmarks` package: a worker subprocess imports it from there.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The Redis URL (database included) a Redis peer's worker reads, set by the workload.
REDIS_ENV = "CONVEYOR_BENCH_REDIS_URL"
#: How often the benchmark asks a store how much work is left. Every system is polled the same
#: way, so the figures carry the same (small) cost and rounding.
POLL_S = 0.02
WORKER_START_TIMEOUT_S = 60.0
STDERR_FD = 2


def command(script: str) -> list[str]:
    """A console script of the running interpreter's environment (`conveyor`, `pgq`,
    `huey_consumer`, `dramatiq`, `rq`, ...): the command a user would type."""
    path = Path(sys.executable).with_name(script)
    if not path.exists():
        raise RuntimeError(f"{script} not found beside {sys.executable}: run `make bench-peers`")
    return [str(path)]


def worker_environ(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


@dataclass
class Worker:
    """A worker subprocess and the signal that stops it gracefully."""

    process: subprocess.Popen[bytes]
    stop_signal: signal.Signals
    name: str

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def worker(
    argv: list[str], env: dict[str, str], stop_signal: signal.Signals = signal.SIGTERM
) -> Iterator[Worker]:
    """Run `argv` (from the project root, `env` added to the environment) until the block
    ends, then stop it with `stop_signal` (and kill it if it does not stop in 30 s). What the
    worker prints goes to stderr (Celery prints a banner on stdout), so stdout is the report."""
    process = subprocess.Popen(
        argv,
        cwd=PROJECT_ROOT,
        env=worker_environ(env),
        stdin=subprocess.DEVNULL,
        stdout=STDERR_FD,
    )
    running = Worker(process, stop_signal, Path(argv[0]).name)
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Drain:
    """A drain timed from the worker's start: when the first job was seen done, when all were."""

    jobs: int
    first_s: float
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


def timed_drain(
    jobs: int,
    argv: list[str],
    env: dict[str, str],
    remaining: Callable[[], int],
    stop_signal: signal.Signals = signal.SIGTERM,
    slowest: float = 100.0,
) -> Drain:
    """Start the worker command and poll `remaining()` (jobs the store does not yet show as
    done) every POLL_S until it is 0. The clock starts just before the process does, so the
    interpreter's start-up, the imports and the first connection are part of every system's
    figure alike. A drain slower than `slowest` jobs/s (after a minute to start) fails."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S + jobs / slowest
    first = 0.0
    started = time.perf_counter()
    with worker(argv, env, stop_signal) as running:
        while (left := remaining()) > 0:
            if not first and left < jobs:
                first = time.perf_counter() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"{running.name}: {left} of {jobs} jobs still not done")
            code = running.process.poll()
            if code is not None and remaining() > 0:  # a burst worker stops when it is done
                raise RuntimeError(f"{running.name} exited (code {code}) with {left} jobs left")
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    return Drain(jobs, first or seconds, seconds)


@contextlib.contextmanager
def stamps_file() -> Iterator[Path]:
    """An empty file for the stamping tasks to append to, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-stamps-") as folder:
        path = Path(folder) / "stamps.txt"
        path.touch()
        yield path


def read_stamps(path: Path) -> dict[int, float]:
    stamps: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        number, _, started = line.partition(" ")
        if started:  # a line being written may be incomplete
            stamps[int(number)] = float(started)
    return stamps


def wait_for_stamps(path: Path, wanted: set[int], running: Worker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not wanted <= read_stamps(path).keys():
        running.check_alive()
        if time.monotonic() > deadline:
            missing = len(wanted - read_stamps(path).keys())
            raise RuntimeError(f"{running.name}: {missing} of {len(wanted)} jobs never started")
        time.sleep(POLL_S)


def wait_until_started(path: Path, running: Worker, enqueue: Callable[[int], object]) -> None:
    """Start one job (-1) and wait for it: the worker is then known to be up."""
    enqueue(-1)
    wait_for_stamps(path, {-1}, running, WORKER_START_TIMEOUT_S)


def paced(rate: float, seconds: float) -> Iterator[int]:
    """Job numbers 0, 1, ... handed out at `rate` per second for `seconds`, sleeping between
    them (an async caller may sleep this way too: nothing else runs on its loop)."""
    interval = 1.0 / rate
    began = time.perf_counter()
    for i in range(max(1, round(rate * seconds))):
        pause = began + i * interval - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        yield i


def latencies(path: Path, running: Worker, enqueued: dict[int, float]) -> list[float]:
    """Once every job has stamped its start: start minus enqueue time per job, in seconds
    (both read from this machine's clock)."""
    wait_for_stamps(path, set(enqueued), running, 60.0)
    started = read_stamps(path)
    return [started[i] - at for i, at in sorted(enqueued.items())]


def paced_latency(
    rate: float, seconds: float, path: Path, running: Worker, enqueue: Callable[[int], object]
) -> list[float]:
    """With the worker running and warmed up, `enqueue(i)` at `rate` jobs/s for `seconds`;
    the latency of each job, in seconds."""
    wait_until_started(path, running, enqueue)
    enqueued: dict[int, float] = {}
    for i in paced(rate, seconds):
        enqueued[i] = time.time()
        enqueue(i)
    return latencies(path, running, enqueued)


async def one_by_one(enqueue: Callable[[int], Awaitable[object]], jobs: int) -> float:
    """`await enqueue(i)` for every job number below `jobs`, one after the other, after one
    unmeasured call (job -1: the first on the connection); the seconds they took."""
    await enqueue(-1)
    started = time.perf_counter()
    for i in range(jobs):
        await enqueue(i)
    return time.perf_counter() - started


async def gather_in_batches(call: Callable[[int], Awaitable[object]], jobs: int, size: int) -> None:
    """`await call(i)` for every job number below `jobs`, `size` calls at a time, concurrently:
    the untimed fill of an async system's drain."""
    for first in range(0, jobs, size):
        await asyncio.gather(*(call(i) for i in range(first, min(first + size, jobs))))


async def paced_async(
    rate: float, seconds: float, enqueue: Callable[[int], Awaitable[object]]
) -> dict[int, float]:
    """`await enqueue(i)` at `rate` jobs/s for `seconds`, all in one coroutine (no event loop
    entered per job); the time read just before each call."""
    enqueued: dict[int, float] = {}
    for i in paced(rate, seconds):
        enqueued[i] = time.time()
        await enqueue(i)
    return enqueued


def paced_latency_async(
    rate: float,
    seconds: float,
    path: Path,
    running: Worker,
    runner: asyncio.Runner,
    enqueue: Callable[[int], Awaitable[object]],
) -> list[float]:
    """`paced_latency` for a system enqueued by a coroutine, run on `runner`'s loop."""
    wait_until_started(path, running, lambda i: runner.run(_awaited(enqueue(i))))
    enqueued = runner.run(paced_async(rate, seconds, enqueue))
    return latencies(path, running, enqueued)


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable
