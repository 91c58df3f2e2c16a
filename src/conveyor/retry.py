"""Backoff policies and the one place that decides what a failed attempt leads to."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from conveyor.errors import Discard, Retry
from conveyor.job import JobState
from conveyor.logging import get_logger

log = get_logger("conveyor.worker")


class Backoff(Protocol):
    """How long to wait before the next attempt, given the attempt that just failed (1-based)."""

    def delay(self, attempt: int) -> float: ...


@dataclass(frozen=True)
class Exponential:
    """`base * 2**(attempt-1)` seconds, at most `cap`; with jitter, a uniform pick in [d/2, d]."""

    base: float = 2.0
    cap: float = 3600.0
    jitter: bool = True
    rng: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("exponential backoff needs base >= 0 and cap >= 0")

    def delay(self, attempt: int) -> float:
        # Cap the exponent first: 2**attempt overflows a float long before attempts run out.
        raw = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 64))
        if not self.jitter:
            return raw
        return raw / 2 + self.rng() * raw / 2


@dataclass(frozen=True)
class Fixed:
    """The same delay after every attempt."""

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"fixed backoff needs seconds >= 0, got {self.seconds!r}")

    def delay(self, attempt: int) -> float:
        return self.seconds


@dataclass(frozen=True)
class Explicit:
    """Delays listed per attempt; the last one repeats."""

    delays: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError("a backoff list needs at least one delay, none negative")

    def delay(self, attempt: int) -> float:
        return self.delays[min(max(attempt - 1, 0), len(self.delays) - 1)]


@dataclass(frozen=True)
class _FromCallable:
    fn: Callable[[int], float]

    def delay(self, attempt: int) -> float:
        return float(self.fn(attempt))


BackoffLike = Backoff | Sequence[float] | Callable[[int], float]


def exponential(base: float = 2.0, cap: float = 3600.0, jitter: bool = True) -> Exponential:
    """Exponential backoff: `base`, `2*base`, `4*base`, ... seconds, capped, jittered."""
    return Exponential(base=base, cap=cap, jitter=jitter)


def fixed(seconds: float) -> Fixed:
    """The same delay before every retry."""
    return Fixed(seconds)


def as_backoff(value: BackoffLike) -> Backoff:
    """Accept a policy, a list of delays (`[2, 4, 8]`) or a function of the attempt number."""
    if hasattr(value, "delay"):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return Explicit(tuple(float(d) for d in value))
    if callable(value):
        return _FromCallable(value)
    raise TypeError(f"backoff must be a policy, a list of delays or a callable, not {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """A task's retry rules."""

    backoff: Backoff
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class Decision:
    """`retrying` after `delay` seconds, or `dead`, with the reason noted in the history."""

    state: JobState
    delay: float = 0.0
    note: str | None = None


def decide(policy: RetryPolicy, exc: BaseException, attempt: int, max_attempts: int) -> Decision:
    """What a failed attempt leads to. `attempt` is the one that just failed (1-based)."""
    if isinstance(exc, Discard):
        return Decision(JobState.DEAD, note=f"discarded: {exc.reason}")
    if isinstance(exc, Retry):
        retryable = True
    elif policy.give_up_on and isinstance(exc, policy.give_up_on):
        return Decision(JobState.DEAD, note=f"gave up on {type(exc).__name__}")
    else:
        retryable = isinstance(exc, policy.retry_on)
    if not retryable:
        return Decision(JobState.DEAD, note=f"{type(exc).__name__} is not retried")
    if attempt >= max_attempts:
        return Decision(JobState.DEAD, note=f"no attempts left ({attempt}/{max_attempts})")
    if isinstance(exc, Retry) and exc.delay is not None:
        return Decision(JobState.RETRYING, delay=exc.delay)
    return Decision(JobState.RETRYING, delay=_delay(policy.backoff, attempt))


def downstream_down(policy: RetryPolicy, attempt: int, circuit: str) -> Decision:
    """A task behind a circuit failed because its downstream is down: not the job's fault, so
    it is retried after the usual backoff and the attempt does not count."""
    return Decision(
        JobState.RETRYING,
        delay=_delay(policy.backoff, attempt),
        note=f"{circuit} is down: retried, the attempt does not count",
    )


_FALLBACK = Exponential()


def _delay(backoff: Backoff, attempt: int) -> float:
    """The policy's delay; a policy that fails or answers nonsense gets the default one."""
    try:
        delay = float(backoff.delay(attempt))
    except Exception as exc:
        log.error("backoff.failed", backoff=repr(backoff), attempt=attempt, error=repr(exc))
        return _FALLBACK.delay(attempt)
    if not math.isfinite(delay) or delay < 0:
        log.error("backoff.failed", backoff=repr(backoff), attempt=attempt, delay=delay)
        return _FALLBACK.delay(attempt)
    return delay
