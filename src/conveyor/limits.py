"""Rate and concurrency limits: how they are written, and which held-back jobs a claim may take.

A limit applies to a *bucket*. A task's `concurrency=N` is one bucket for the whole task (or,
with `concurrency_key`, one per key value); its `rate_limit="N/period"` likewise. A queue's
`concurrency` is a bucket for the queue. The store keeps each job's buckets on its row, so every
worker, whatever code it runs, counts the same jobs; `pick` decides what one claim may start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.config import parse_duration
from conveyor.errors import ValidationError, describe

_RATE = re.compile(r"\s*(\d+)\s*/\s*(.+?)\s*")

#: The longest key value a limit is kept per, in characters.
MAX_LIMIT_KEY = 200

#: Separates the task name from the key value in a bucket's name (no key value contains it).
BUCKET_SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` starts in any `period` seconds."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`100/m`, `5/s`, `1000/h`, `10/30s`, `2/5m`: starts per period."""
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(
                f"rate_limit must look like 100/m, 5/s, 1000/h or 10/30s, got {describe(text)}"
            )
        count, unit = int(match.group(1)), match.group(2)
        try:
            period = parse_duration(unit if unit[0].isdigit() else f"1{unit}")
        except ValueError:
            raise ValidationError(
                f"rate_limit {text!r}: the period must be s, m, h, d or a duration like 30s"
            ) from None
        if count < 1 or period <= 0:
            raise ValidationError(f"rate_limit {text!r} must allow at least 1 start per period")
        if count > MAX_COUNT:
            raise ValidationError(f"rate_limit {text!r} allows more than {MAX_COUNT:,} starts")
        return cls(count, period)

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


#: The largest count a setting may have: every store keeps it as a 32-bit integer.
MAX_COUNT = 2**31 - 1


def check_count(value: Any, what: str) -> int:
    """A count of at least one: attempts, a limit, a threshold."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ValidationError(f"{what} must be an integer from 1 to {MAX_COUNT:,}, got {value!r}")
    return value


def check_key_value(value: Any, what: str) -> str:
    """A key value a limit is kept per: text or an integer, printable, not too long."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_LIMIT_KEY
        or not value.isprintable()
    ):
        raise ValidationError(
            f"{what} must be text or an integer of 1-{MAX_LIMIT_KEY} printable characters, "
            f"got {describe(value)}"
        )
    return value


def bucket(task: str, key: str | None) -> str:
    """The bucket of a task's limit: the task's own, or the task's for one key value."""
    return task if key is None else f"{task}{BUCKET_SEPARATOR}{key}"


def bucket_label(name: str) -> str:
    """A bucket's name as people read it: `task[key]`."""
    task, _, key = name.partition(BUCKET_SEPARATOR)
    return f"{task}[{key}]" if key else task


@dataclass(frozen=True, slots=True)
class Candidate:
    """A queued job a claim could start, with the buckets it counts against."""

    id: int
    priority: int
    run_at: float
    queue: str
    concurrency_key: str | None = None
    concurrency_max: int | None = None
    rate_key: str | None = None
    rate_max: int | None = None
    circuit: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Candidate:
        return cls(
            row["id"],
            row["priority"],
            row["run_at"],
            row["queue"],
            row["concurrency_key"],
            row["concurrency_max"],
            row["rate_key"],
            row["rate_max"],
            row["circuit"],
        )

    @property
    def order(self) -> tuple[int, float, int]:
        return (self.priority, self.run_at, self.id)


def best_buckets(buckets: Iterable[Any], limit: int) -> list[Any]:
    """Of buckets (rows with `used`, `max` and their head's `priority`, `run_at`, `id`), the
    first `limit` with room, by their heads: the best `limit` jobs that fit are theirs."""
    open_ = [b for b in buckets if b["max"] - b["used"] > 0]
    open_.sort(key=lambda b: (b["priority"], b["run_at"], b["id"]))
    return open_[:limit]


def pick(
    candidates: Iterable[Candidate],
    limit: int,
    *,
    queue_free: Mapping[str, int],
    running: Mapping[str, int],
    started: Mapping[str, int],
    circuit_free: Mapping[str, int] | None = None,
) -> list[int]:
    """The ids of up to `limit` candidates to start, best first (priority, then run_at, then
    id), skipping any whose queue has no free slot (`queue_free`, for queues with a limit), whose
    concurrency bucket has `running` jobs up to its maximum, whose rate bucket has `started`
    jobs in its window up to its maximum, or whose half-open circuit has no free slot
    (`circuit_free`). Each job taken counts against its buckets."""
    free = dict(queue_free)
    trial = dict(circuit_free or {})
    busy = dict(running)
    spent = dict(started)
    chosen: list[int] = []
    seen: set[int] = set()
    for c in sorted(candidates, key=lambda c: c.order):
        if c.id in seen:
            continue
        seen.add(c.id)
        if free.get(c.queue, 1) <= 0:
            continue
        if c.circuit is not None and trial.get(c.circuit, 1) <= 0:
            continue
        if c.concurrency_key is not None and busy.get(c.concurrency_key, 0) >= (
            c.concurrency_max or 0
        ):
            continue
        if c.rate_key is not None and spent.get(c.rate_key, 0) >= (c.rate_max or 0):
            continue
        if c.queue in free:
            free[c.queue] -= 1
        if c.circuit in trial:
            trial[c.circuit] -= 1
        if c.concurrency_key is not None:
            busy[c.concurrency_key] = busy.get(c.concurrency_key, 0) + 1
        if c.rate_key is not None:
            spent[c.rate_key] = spent.get(c.rate_key, 0) + 1
        chosen.append(c.id)
        if len(chosen) == limit:
            break
    return chosen
