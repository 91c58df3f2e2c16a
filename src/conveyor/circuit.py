"""Circuits: a downstream service's state, shared by every worker through the store.

After `failure_threshold` downstream failures in a row (connection refused or reset, timeouts,
HTTP 502/503/504, `DownstreamDown`) of tasks behind it, a circuit opens: their jobs stay queued,
held, and no attempt is spent on them. The elected leader probes the service on a schedule; when
it answers, the circuit goes half-open (a few jobs run), and the first of those to succeed
closes it. The failures that count are recognised here, once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import inspect
import urllib.error
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.config import QUEUE_NAME, parse_duration
from conveyor.errors import DownstreamDown, TaskTimeout, ValidationError, describe
from conveyor.job import epoch_seconds
from conveyor.limits import check_count
from conveyor.redact import url as shown_url

#: HTTP statuses that mean "the service behind this one is down", not "your request is bad".
DOWN_STATUSES = frozenset({502, 503, 504})
#: How long one probe may take.
PROBE_TIMEOUT_S = 10.0
#: Every minute for the first hour, then every ten minutes.
DEFAULT_SCHEDULE = ((3600.0, 60.0), (None, 600.0))

Probe = str | Callable[[], Any] | Callable[[], Awaitable[Any]]
Duration = float | int | str | dt.timedelta


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _seconds(value: Duration, what: str) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValidationError(f"{what}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValidationError(f"{what} must be a duration, got {describe(value)}")
    return float(value)


def parse_schedule(
    steps: Iterable[tuple[Duration | None, Duration]],
) -> tuple[tuple[float | None, float], ...]:
    """`[("1h", "1m"), (None, "10m")]`: probe every minute while the circuit has been open for
    less than an hour, then every ten minutes. The last step must be open-ended (None)."""
    parsed: list[tuple[float | None, float]] = []
    for step in steps:
        if not isinstance(step, tuple | list) or len(step) != 2:
            raise ValidationError(f"a probe schedule step is (for, every), got {describe(step)}")
        until, every = step
        until_s = None if until is None else _seconds(until, "schedule 'for'")
        every_s = _seconds(every, "schedule 'every'")
        if every_s <= 0 or (until_s is not None and until_s <= 0):
            raise ValidationError(f"probe schedule durations must be > 0, got {describe(step)}")
        previous = parsed[-1][0] if parsed else 0.0
        if previous is None or (until_s is not None and until_s <= previous):
            raise ValidationError("probe schedule steps must cover longer and longer times")
        parsed.append((until_s, every_s))
    if not parsed or parsed[-1][0] is not None:
        raise ValidationError("the last probe schedule step must be (None, every)")
    return tuple(parsed)


@dataclass(frozen=True)
class Circuit:
    """A downstream service, as `app.circuit(...)` declares it."""

    name: str
    failure_threshold: int = 5
    probe: Probe | None = None
    schedule: tuple[tuple[float | None, float], ...] = DEFAULT_SCHEDULE
    #: how many held jobs may run at once while the circuit is half-open
    half_open_jobs: int = 1

    @classmethod
    def declare(
        cls,
        name: str,
        *,
        failure_threshold: int = 5,
        probe: Probe | None = None,
        schedule: Sequence[tuple[Duration | None, Duration]] | None = None,
        half_open_jobs: int = 1,
    ) -> Circuit:
        if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
            raise ValidationError(
                f"bad circuit name {describe(name)}: use 1-128 characters of A-Z a-z 0-9 _ . : -"
            )
        check_count(failure_threshold, "failure_threshold")
        check_count(half_open_jobs, "half_open_jobs")
        if probe is not None and not (
            (isinstance(probe, str) and probe.startswith(("http://", "https://")))
            or callable(probe)
        ):
            raise ValidationError(f"probe must be an http(s) URL or a callable, got {probe!r}")
        return cls(
            name,
            failure_threshold,
            probe,
            DEFAULT_SCHEDULE if schedule is None else parse_schedule(schedule),
            half_open_jobs,
        )

    def probe_every(self, open_for: float) -> float:
        """Seconds between probes once the circuit has been open `open_for` seconds."""
        for until, every in self.schedule:
            if until is None or open_for < until:
                return every
        return self.schedule[-1][1]

    async def run_probe(self) -> str | None:
        """None when the service answers; else why not."""
        if self.probe is None:
            return "no probe declared: close the circuit by hand"
        try:
            if isinstance(self.probe, str):
                await asyncio.to_thread(_get, self.probe)
                return None
            answer = self.probe()
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, PROBE_TIMEOUT_S)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if answer is None or answer else f"the probe answered {answer!r}"


def _get(url: str) -> None:
    """A GET that succeeds on 2xx and 3xx; anything else raises."""
    import urllib.request  # here, not at import: only a probe needs it (and ssl)

    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "conveyor-probe"})
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
        if response.status >= 400:
            # the reason is logged: the URL without its credentials and query values
            raise DownstreamDown(f"{shown_url(url)} answered {response.status}")


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (urllib, requests, httpx, aiohttp spell it apart)."""
    for holder in (getattr(exc, "response", None), exc):
        for attr in ("status_code", "status", "code"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def is_downstream_failure(exc: BaseException) -> bool:
    """Whether a task's exception means the service it called is down: DownstreamDown,
    connection refused/reset/aborted, a timeout (other than the task's own `timeout`), or an
    HTTP 502/503/504 — looked for along the exception's causes too (client libraries wrap the
    socket's error in their own)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DownstreamDown | ConnectionError):
            return True
        if isinstance(current, TimeoutError) and not isinstance(current, TaskTimeout):
            return True
        if isinstance(current, urllib.error.URLError) and isinstance(
            current.reason, ConnectionError | TimeoutError
        ):
            return True
        if _status(current) in DOWN_STATUSES:
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    """A circuit as the store has it."""

    name: str
    state: CircuitState
    failures: int
    opened_at: float | None
    reason: str | None
    probed_at: float | None
    #: queued jobs of tasks behind it
    held: int

    @classmethod
    def from_row(cls, row: Any) -> CircuitInfo:
        r = CircuitRow.from_row(row)
        return cls(
            row["name"], r.state, r.failures, r.opened_at, r.reason, r.probed_at, int(row["held"])
        )


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """One change of a circuit, as recorded: opened, half-open, closed."""

    name: str
    at: float
    event: str
    reason: str | None
    #: queued jobs behind the circuit at that moment
    held: int
    #: for a close: how long the circuit had been open
    open_for: float | None

    @classmethod
    def from_row(cls, row: Any) -> CircuitEvent:
        return cls(
            row["name"],
            epoch_seconds(row["at"]),
            row["event"],
            row["reason"],
            row["held"],
            row["open_for"],
        )

    @classmethod
    def after(
        cls, name: str, before: CircuitRow, now: CircuitRow, event: str, at: float, held: int
    ) -> CircuitEvent:
        open_for = None
        if event == "closed" and before.opened_at is not None:
            open_for = max(at - before.opened_at, 0.0)
        return cls(name, at, event, now.reason, held, open_for)

    def params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "at": self.at,
            "event": self.event,
            "reason": self.reason,
            "held": self.held,
            "open_for": self.open_for,
        }


@dataclass(frozen=True, slots=True)
class CircuitRow:
    """A circuit's stored state (what `transition` reads and writes)."""

    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float | None = None
    reason: str | None = None
    probed_at: float | None = None
    half_open_jobs: int = 1

    @classmethod
    def from_row(cls, row: Any) -> CircuitRow:
        return cls(
            CircuitState(row["state"]),
            row["failures"],
            epoch_seconds(row["opened_at"]),
            row["reason"],
            epoch_seconds(row["probed_at"]),
            row["half_open_jobs"],
        )

    def params(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "state": self.state.value,
            "failures": self.failures,
            "opened_at": self.opened_at,
            "reason": self.reason,
            "probed_at": self.probed_at,
            "half_open_jobs": self.half_open_jobs,
        }


class Action(enum.StrEnum):
    #: a job behind the circuit failed because the downstream is down
    FAILURE = "failure"
    #: a job behind the circuit succeeded
    SUCCESS = "success"
    #: the probe got an answer: let a few held jobs through
    ANSWERED = "answered"
    #: closed from outside (`app.close_circuit`, the HTTP API)
    CLOSE = "close"


def transition(
    row: CircuitRow,
    action: Action,
    now: float,
    *,
    threshold: int = 5,
    reason: str | None = None,
    half_open_jobs: int = 1,
) -> tuple[CircuitRow, str | None]:
    """The one place a circuit's rules live: the row after `action`, and the event to record
    ("opened", "half_open", "closed") if the state changed."""
    state = row.state
    if action is Action.FAILURE:
        failures = row.failures + 1
        if state is CircuitState.HALF_OPEN or (
            state is CircuitState.CLOSED and failures >= threshold
        ):
            opened = CircuitRow(CircuitState.OPEN, failures, now, reason, now, row.half_open_jobs)
            return opened, "opened"
        return CircuitRow(
            state, failures, row.opened_at, row.reason, row.probed_at, row.half_open_jobs
        ), None
    if action is Action.ANSWERED:
        if state is not CircuitState.OPEN:
            return row, None
        return CircuitRow(
            CircuitState.HALF_OPEN, 0, row.opened_at, reason, now, half_open_jobs
        ), "half_open"
    if action is Action.SUCCESS and state is CircuitState.OPEN:
        # a job claimed before the circuit opened: the probe, not this, says when it is back
        return row, None
    if state is CircuitState.CLOSED:
        return (row, None) if row.failures == 0 else (CircuitRow(), None)
    closing = reason or ("a held job succeeded" if action is Action.SUCCESS else "closed by hand")
    return CircuitRow(reason=closing), "closed"
