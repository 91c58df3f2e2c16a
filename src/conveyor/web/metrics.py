"""Prometheus metrics for `conveyor serve`: `GET /metrics` in the Prometheus text format.

Counters and histograms come from the store's event stream: each scrape reads every state
change since the one before, so they count what every worker of the cluster finished since
this process started. Gauges are read from the store at each scrape. Every API instance has
a registry of its own.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from conveyor.app import App
from conveyor.circuit import CircuitState
from conveyor.errors import BackendUnavailable, ConfigurationError
from conveyor.events import Cursor, Event
from conveyor.job import JobState
from conveyor.web.common import Shared
from conveyor.web.stats import Stats

#: Job latencies, from a few milliseconds to four hours (seconds).
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    float("inf"),
)
#: State changes read from the store per round trip while a scrape catches up.
EVENT_PAGE = 1000


class JobMetrics:
    """The metrics of one app in a registry of their own; `scrape` brings them up to date."""

    def __init__(self, app: App, stats: Stats) -> None:
        self.app, self.stats = app, stats
        self.registry = CollectorRegistry()
        self.finished = Counter(
            "conveyor_jobs_finished",
            "Jobs that reached a finished state.",
            ["queue", "task", "state"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "conveyor_job_queue_wait_seconds",
            "How long a finished job's last attempt waited after it was due.",
            ["queue", "task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "conveyor_job_run_seconds",
            "How long a finished job's last attempt ran.",
            ["queue", "task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Gauge(
            "conveyor_jobs",
            "Jobs in the store now, per queue and state.",
            ["queue", "state"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "conveyor_workers", "Workers that heartbeat within a lease.", registry=self.registry
        )
        self.circuit_open = Gauge(
            "conveyor_circuit_open",
            "1 while a circuit holds its jobs (open or half-open).",
            ["circuit"],
            registry=self.registry,
        )
        # queues seen since start: one that empties out shows zeros instead of vanishing
        self._queues: set[str] = set()
        # one scrape at a time: two reading from the same cursor would count twice
        self._lock = threading.Lock()
        self._cursor = self._stream_end()

    def _stream_end(self) -> Cursor | None:
        """Where the event stream ends now; None while the store cannot say (unreachable, or
        its schema not current yet): counting then starts at the first scrape."""
        try:
            return self.app.backend.sync.event_cursor()
        except (BackendUnavailable, ConfigurationError):
            return None

    def scrape(self) -> bytes:
        """Read what happened since the last scrape and the store's state now; the text."""
        with self._lock:
            self._read_events()
            self._read_gauges()
            return generate_latest(self.registry)

    def _read_events(self) -> None:
        store = self.app.backend.sync
        if self._cursor is None:
            self._cursor = store.event_cursor()
            return
        # progress reports are not counted: not read
        cursor, more = self._cursor, True
        while more:
            events, cursor = store.read_events(cursor, None, None, EVENT_PAGE, progress=False)
            for event in events:
                if event.finished:
                    self._observe(event)
            more = len(events) == EVENT_PAGE
        self._cursor = cursor

    def _observe(self, event: Event) -> None:
        assert event.state is not None
        # a job purged before this scrape read its events has no queue or task any more
        queue, task = event.queue or "", event.task or ""
        self.finished.labels(queue, task, event.state.value).inc()
        if event.wait is not None:
            self.queue_wait.labels(queue, task).observe(event.wait)
        if event.run_time is not None:
            self.run_time.labels(queue, task).observe(event.run_time)

    def _read_gauges(self) -> None:
        snapshot = self.stats.snapshot()
        self._queues.update(snapshot.queues)
        self.jobs.clear()
        for queue in sorted(self._queues):
            counts = snapshot.queues.get(queue, {}).get("jobs", {})
            for state in JobState:
                self.jobs.labels(queue, state.value).set(counts.get(state.value, 0))
        self.workers.set(snapshot.live_workers)
        circuits = {name: 0 for name in self.app.circuits}
        for info in self.app.circuit_states():
            circuits[info.name] = int(info.state is not CircuitState.CLOSED)
        self.circuit_open.clear()
        for name, is_open in circuits.items():
            self.circuit_open.labels(name).set(is_open)


def router(shared: Shared) -> APIRouter:
    """`GET /metrics`: the metrics of `shared.app`, behind the read role; the gauges of jobs and
    workers come from the shared snapshot (`shared.stats`)."""
    metrics = JobMetrics(shared.app, shared.stats)
    routes = APIRouter()

    @routes.get("/metrics", dependencies=[shared.read], include_in_schema=False)
    def scrape() -> Response:
        """The Prometheus text format; Prometheus sends `Authorization: Bearer <token>`."""
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return routes
