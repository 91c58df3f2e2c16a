"""Periodic jobs: cron schedules, checked when they are declared, in a time zone of their own.

Parsing and stepping through the calendar is cronsim's (the cron semantics of Debian's cron,
daylight-saving changes included); this module adds the aliases, the five-field rule, the time
zone and the errors conveyor's users see.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cronsim import CronSim, CronSimError

from conveyor.errors import ValidationError

if TYPE_CHECKING:
    from conveyor.task import Task

ALIASES: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron expression in a time zone. Ticks are epoch seconds."""

    expression: str
    tz: str = "UTC"
    _cron: str = field(default="", repr=False, compare=False)
    _zone: zoneinfo.ZoneInfo = field(default=zoneinfo.ZoneInfo("UTC"), repr=False, compare=False)

    @classmethod
    def parse(cls, expression: str, tz: str = "UTC") -> Schedule:
        """Check the expression and the time zone; raise ValidationError saying what is wrong."""
        if not isinstance(expression, str):
            raise ValidationError(f"a cron schedule must be text, got {expression!r}")
        text = " ".join(expression.split())
        cron = ALIASES.get(text.lower(), text)
        if cron.startswith("@"):
            known = ", ".join(ALIASES)
            raise ValidationError(f"unknown cron alias {text!r} (known: {known})")
        fields = len(cron.split())
        if fields != 5:
            raise ValidationError(
                f"bad cron schedule {expression!r}: {fields} fields; use the five of "
                "'minute hour day-of-month month day-of-week' (or an alias such as @daily)"
            )
        try:
            zone = zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValidationError(f"unknown time zone {tz!r}") from None
        try:
            CronSim(cron, dt.datetime.now(zone))
        except CronSimError as exc:
            raise ValidationError(f"bad cron schedule {expression!r}: {exc}") from None
        return cls(text, tz, cron, zone)

    def next_after(self, t: float) -> float:
        """The first tick strictly after `t`."""
        start = dt.datetime.fromtimestamp(math.floor(t), self._zone)
        return next(CronSim(self._cron, start)).timestamp()

    def latest_at_or_before(self, t: float) -> float:
        """The last tick at or before `t`."""
        start = dt.datetime.fromtimestamp(math.floor(t) + 1, self._zone)
        return next(CronSim(self._cron, start, reverse=True)).timestamp()


@dataclass(frozen=True, slots=True)
class Periodic:
    """A task the leader enqueues on every tick of its schedule."""

    name: str
    schedule: Schedule
    task: Task[Any, Any]
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    #: fire a tick missed while no worker ran (once, however many were missed)
    catch_up: bool = True


@dataclass(frozen=True, slots=True)
class TickRecord:
    """What the store knows of a periodic entry: the latest tick dealt with (fired, skipped,
    or the first one seen), and the latest that stored a job, with that job's state."""

    name: str
    tick: float
    fired_tick: float | None
    job_id: int | None
    job_state: str | None

    @classmethod
    def from_row(cls, row: Any) -> TickRecord:
        return cls(
            name=row["name"],
            tick=float(row["tick"]),
            fired_tick=None if row["fired_tick"] is None else float(row["fired_tick"]),
            job_id=row["job_id"],
            job_state=row["job_state"],
        )
