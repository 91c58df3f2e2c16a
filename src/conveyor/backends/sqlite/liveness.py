"""Liveness by observation: SQLite has no clock of its own, so whether a worker is alive is
judged by its beat being seen to change, on the observer's own monotonic clock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any


class Sightings:
    """How long a value in the store (a worker's last beat, a leader's lease) has gone unchanged,
    on this process's monotonic clock.

    SQLite has no clock of its own: every process stamps times with its own wall clock, which
    can be off, or jump. So whether a worker is alive is judged by its beat being seen to
    change, never by comparing one process's wall time with another's. A value seen for the
    first time counts as just changed: a newcomer gives everyone one lease of doubt.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._seen: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()

    def unchanged_for(self, key: str, value: Any) -> float:
        """Seconds since `key` was last seen with another value (0: it just changed)."""
        now = self._monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen[0] != value:
                self._seen[key] = (value, now)
                return 0.0
            return now - seen[1]

    def workers(self, beats: Iterable[sqlite3.Row]) -> dict[str, tuple[float, float]]:
        """Per registered worker: its last beat as stored, and how long it has not changed."""
        return {
            r["id"]: (r["last_beat"], self.unchanged_for(f"worker:{r['id']}", r["last_beat"]))
            for r in beats
        }
