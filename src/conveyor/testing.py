"""Helpers for tests of an app's tasks: a frozen clock, draining the queues in-process, a worker
running beside the test, and waits on a condition or on the worker's background rounds instead
of sleeps. The guide's "Testing your tasks" shows them at work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from conveyor.app import App
from conveyor.clock import FrozenClock
from conveyor.events import Event
from conveyor.services.base import Service
from conveyor.worker import Worker

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FrozenClock",
    "drain",
    "drain_async",
    "running_worker",
    "subscribe",
    "wait_rounds",
    "wait_until",
]

T = TypeVar("T")

#: How long the waits here give a test by default before they fail it: generous, for a loaded
#: machine. A passing test never waits this long.
DEFAULT_TIMEOUT_S = 30.0
#: How often `wait_until` looks again.
POLL_S = 0.01
#: The longest `drain` waits for the threads of its event loop once the worker has stopped.
LOOP_THREADS_S = 2.0


async def drain_async(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 10,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """Run a worker in this event loop until nothing in `queues` (every queue, by default) is
    runnable now; returns how many attempts ended under it (each with its outcome written).

    Jobs due later (a delay, a retry's backoff, a rate limit's next window) are left: move a
    `FrozenClock` on and drain again. After `timeout` seconds the worker hands back what still
    runs and TimeoutError fails the test."""
    worker = Worker(app, queues=queues, concurrency=concurrency, burst=True)
    run = asyncio.ensure_future(worker.run_async())
    done, _ = await asyncio.wait([run], timeout=timeout)
    if not done:
        worker.stop()
        worker.stop()  # the second stop hands the running jobs back at once
        await run
        raise TimeoutError(f"the queues were not drained within {timeout:g} s")
    await run  # raises what made the worker fail, if anything did
    return worker.processed


def drain(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 10,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """`drain_async` for a test without an event loop: the worker runs on an event loop of its
    own in this thread, until nothing in `queues` is runnable now."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(
            drain_async(app, queues=queues, concurrency=concurrency, timeout=timeout)
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        # a thread still inside a call to a store that does not answer is not waited for
        shutdown = loop.create_task(loop.shutdown_default_executor())
        loop.run_until_complete(asyncio.wait([shutdown], timeout=LOOP_THREADS_S))
        loop.close()


@asynccontextmanager
async def running_worker(
    app_or_worker: App | Worker, *, timeout: float = DEFAULT_TIMEOUT_S, **options: Any
) -> AsyncIterator[Worker]:
    """A worker running in this event loop for the block, as `conveyor worker` runs one: give
    an App (and the `Worker` options: `queues`, `concurrency`, `grace`, ...) or a Worker.

    The block is entered once the worker has started: registered with the store, its
    background services running, its first leader election done — and, if it leads, the first
    rounds of rescuing lost workers' jobs and pruning done. On leaving the block the worker
    stops as on SIGTERM: its running jobs get their grace period, and the block waits for it."""
    if isinstance(app_or_worker, Worker):
        if options:
            raise TypeError("worker options go to Worker(...), not beside a Worker")
        worker = app_or_worker
    else:
        worker = Worker(app_or_worker, **options)
    run = asyncio.ensure_future(worker.run_async())
    try:
        await wait_until(
            lambda: run.done() or _started(worker), timeout, what="the worker to start"
        )
        if run.done():
            await run  # it failed as it started (or, in burst mode, it has finished already)
        yield worker
    finally:
        if not run.done() and not worker.stopping:
            worker.stop()
        await run


def _started(worker: Worker) -> bool:
    # The services exist once the worker runs; they start once it has reached the store.
    elector = getattr(worker, "elector", None)
    if elector is None or elector.rounds < 1:
        return False
    return not elector.is_leader or (worker.rescuer.rounds >= 1 and worker.pruner.rounds >= 1)


async def wait_until(
    check: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_S, *, what: str | None = None
) -> T:
    """Look at `check()` every 10 ms until it returns something true, and return that; after
    `timeout` seconds TimeoutError fails the test, naming `what` was awaited. For a state
    the test can only look at (a job's row, a task's side effect); for "the scheduler has
    looked since", `wait_rounds` says so exactly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := check()):
        if loop.time() > deadline:
            raise TimeoutError(f"{what or 'the condition'} not met within {timeout:g} s")
        await asyncio.sleep(POLL_S)
    return value


async def wait_rounds(
    service: Service, n: int = 1, *, kick: bool = False, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Wait until `n` rounds of one of a running worker's background services, begun after
    this call, have completed: each has seen what the test did before it.

    The services: `worker.elector` (leader election), and while the worker leads
    `worker.rescuer` (rescue of lost workers' jobs), `worker.pruner` (pruning),
    `worker.scheduler` (periodic jobs), `worker.prober` (circuit probes), `worker.watch`
    (alert rules); `worker.heartbeat` always. `kick=True` starts the next round now
    rather than after the service's interval. After `timeout` seconds TimeoutError fails the
    test."""
    try:
        async with asyncio.timeout(timeout):
            await service.wait_rounds(n, kick=kick)
    except TimeoutError:
        raise TimeoutError(
            f"{n} round(s) of the {service.name} service did not complete within {timeout:g} s"
        ) from None


@asynccontextmanager
async def subscribe(
    app: App, job_id: int | None = None, queue: str | None = None
) -> AsyncIterator[AsyncGenerator[Event, None]]:
    """`app.events(job_id, queue)`, subscribed as the block is entered (rather than when the
    stream is first read): every event from then on arrives, however late the test starts
    reading. The subscription ends with the block."""
    stream, _ = await app._open_events(job_id, queue)
    try:
        yield stream
    finally:
        await stream.aclose()
