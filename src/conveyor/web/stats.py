"""What the overview shows, read from the store at most every few seconds, whoever asks.

Every page and API call that shows counts reads one shared snapshot; a snapshot older than its
time to live is taken again (by one caller; the others wait for it). Counts come from indexes:
jobs per state and queue from the (state, queue) index — the unfinished and dead ones at every
snapshot, the succeeded and cancelled ones (most of a big table) again only after a hundred
times as long as counting them took, and at least once a minute — throughput from
the (state, finished_at) index. Throughput of minutes that ended is kept, so a refresh reads
only the last two minutes' finished jobs; the day before the last two hours is read once, in the
background, when the first snapshot is taken.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor import views
from conveyor.app import App
from conveyor.errors import ConveyorError
from conveyor.job import JobState, WorkerInfo
from conveyor.logging import get_logger

log = get_logger(__name__)

DAY = 86_400
#: A minute this long past is complete: every job that finished in it has been written.
SETTLED_AFTER_S = 120
#: The states a throughput chart shows.
DONE_STATES = (JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED)
#: The states that hold most of a big table: counted again after a hundred times as long as
#: counting them took (every snapshot on a small store), and at least once a minute.
BULK_STATES = (JobState.SUCCEEDED, JobState.CANCELLED)
BULK_EVERY_S = 60.0


@dataclass(frozen=True)
class Bar:
    """One bar of a throughput chart: jobs finished per state from `start`, for `seconds`."""

    start: float
    seconds: int
    counts: Mapping[JobState, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    #: `{queue: {"paused", "concurrency", "jobs": {state: n}, "oldest_queued_s",
    #: "finished_5m": {state: n}}}`
    queues: dict[str, dict[str, Any]]
    #: the last hour, a bar per minute, oldest first
    minutes: list[Bar]
    #: the last day, a bar per hour, oldest first
    hours: list[Bar]
    #: the workers that heartbeat within a lease
    workers: list[WorkerInfo]
    totals: dict[str, int] = field(default_factory=dict)
    #: False while the day before the last two hours is still being read
    day_complete: bool = True

    @property
    def live_workers(self) -> int:
        return len(self.workers)


class Stats:
    """The shared snapshot of one App's store."""

    def __init__(self, app: App, ttl: float = 2.0) -> None:
        self.app = app
        self.ttl = ttl
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._took = self._taken = 0.0
        #: finished jobs per minute bucket: {bucket start: {(queue, state): n}}
        self._per_minute: dict[float, dict[tuple[str, JobState], int]] = {}
        #: buckets from here on are read again at each refresh
        self._settled = 0.0
        self._day_complete = False
        self._bulk: dict[str, dict[JobState, int]] = {}
        self._bulk_taken = -math.inf
        self._bulk_took = 0.0

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            # a slow store is asked less often: never more than a tenth of the time
            fresh_for = max(self.ttl, 10 * self._took)
            if self._snapshot is None or now - self._taken >= fresh_for:
                self._snapshot = self._take()
                self._took = time.monotonic() - now
                self._taken = now
            return self._snapshot

    def forget(self) -> None:
        """The next snapshot is taken afresh (something was just changed by hand); the
        succeeded and cancelled counts keep their minute."""
        with self._lock:
            self._snapshot = None

    def _take(self) -> Snapshot:
        app = self.app
        now = app.clock.now()
        self._read_throughput(now)
        since = app.queued_since()
        queues = views.queues_dict(self._counts(), app.paused_queues(), app.queue_limits())
        recent: dict[str, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys((s.value for s in DONE_STATES), 0)
        )
        for start, counts in self._per_minute.items():
            if start >= now - 300:
                for (queue, state), n in counts.items():
                    recent[queue][state.value] += n
        for name in set(recent) - set(queues):
            queues[name] = views.queues_dict({name: {}}, [])[name]
        for name, shown in queues.items():
            oldest = since.get(name)
            shown["oldest_queued_s"] = None if oldest is None else max(now - oldest, 0.0)
            shown["finished_5m"] = dict(recent[name])
        live = app.live_workers()
        totals = {s.value: sum(q["jobs"][s.value] for q in queues.values()) for s in JobState}
        return Snapshot(
            now,
            dict(sorted(queues.items())),
            self._bars(now, 60, 60),
            self._bars(now, 3600, 24),
            live,
            totals,
            self._day_complete,
        )

    def _counts(self) -> dict[str, dict[JobState, int]]:
        counts = self.app.queue_stats([s for s in JobState if s not in BULK_STATES])
        started = time.monotonic()
        if started - self._bulk_taken >= min(BULK_EVERY_S, 100 * self._bulk_took):
            self._bulk = self.app.queue_stats(BULK_STATES)
            self._bulk_taken = time.monotonic()
            self._bulk_took = self._bulk_taken - started
        for queue, by_state in self._bulk.items():
            counts.setdefault(queue, {}).update(by_state)
        return counts

    def _read_throughput(self, now: float) -> None:
        first = math.floor((now - DAY) / 3600) * 3600
        if not self._settled:  # the first snapshot: the last two hours now, the rest later
            self._settled = math.floor((now - 7200) / 3600) * 3600
            threading.Thread(
                target=self._read_day,
                args=(first, self._settled),
                daemon=True,
                name="conveyor-day-throughput",
            ).start()
        since = max(first, self._settled)
        fresh: dict[float, dict[tuple[str, JobState], int]] = defaultdict(dict)
        for row in self.app.finished_counts(since, 60):
            fresh[row.bucket][(row.queue, row.state)] = row.count
        self._per_minute = {b: c for b, c in self._per_minute.items() if first <= b < since}
        self._per_minute.update(fresh)
        self._settled = math.floor((now - SETTLED_AFTER_S) / 60) * 60

    def _read_day(self, first: float, until: float) -> None:
        """The finished jobs from `first` to `until`: read once, in the background."""
        try:
            found: dict[float, dict[tuple[str, JobState], int]] = defaultdict(dict)
            for row in self.app.finished_counts(first, 60):
                if row.bucket < until:
                    found[row.bucket][(row.queue, row.state)] = row.count
        except ConveyorError as exc:
            log.warning("dashboard.day_throughput_failed", error=str(exc))
            return
        with self._lock:
            for bucket, counts in found.items():
                self._per_minute.setdefault(bucket, counts)
            self._day_complete = True
            self._snapshot = None

    def _bars(self, now: float, seconds: int, count: int) -> list[Bar]:
        last = math.floor(now / seconds) * seconds
        bars: dict[float, dict[JobState, int]] = {
            last - seconds * i: dict.fromkeys(DONE_STATES, 0) for i in range(count)
        }
        for start, counts in self._per_minute.items():
            bar = bars.get(math.floor(start / seconds) * seconds)
            if bar is not None:
                for (_, state), n in counts.items():
                    bar[state] += n
        return [Bar(start, seconds, counts) for start, counts in sorted(bars.items())]
