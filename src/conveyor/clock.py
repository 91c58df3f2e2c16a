"""Every "now" goes through a Clock, so tests can freeze and move time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for how long something took or lasted)."""
        return time.monotonic()


class FrozenClock:
    """A clock that only moves when told to; for tests. Its monotonic time moves with it."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when


def monotonic(clock: Clock) -> float:
    """The clock's monotonic time: its own if it keeps one, else the system's."""
    own = getattr(clock, "monotonic", None)
    return float(own()) if own is not None else time.monotonic()
