"""Rate strings, and which candidates one claim may start under limits."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import ValidationError
from conveyor.limits import Candidate, Rate, bucket, bucket_label, pick


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/m", 100, 60.0),
        ("5/s", 5, 1.0),
        ("1000/h", 1000, 3600.0),
        ("10/30s", 10, 30.0),
        ("2/5m", 2, 300.0),
        (" 3 / d ", 3, 86400.0),
        ("1/1.5s", 1, 1.5),
    ],
)
def test_rates_read_as_starts_per_period(text: str, count: int, period: float) -> None:
    assert Rate.parse(text) == Rate(count, period)


@pytest.mark.parametrize("text", ["100", "/m", "m/5", "-1/m", "0/m", "5/0s", "5/x", 5, None])
def test_bad_rates_are_refused(text: object) -> None:
    with pytest.raises(ValidationError, match="rate_limit"):
        Rate.parse(text)  # type: ignore[arg-type]  # deliberately bad input


def test_a_bucket_names_its_task_and_key() -> None:
    assert bucket_label(bucket("mail.send", None)) == "mail.send"
    assert bucket_label(bucket("mail.send", "tenant-42")) == "mail.send[tenant-42]"
    assert bucket("a:b", None) != bucket("a", "b")


def job(id: int, priority: int = 5, queue: str = "default", **limits: Any) -> Candidate:
    return Candidate(id, priority, float(id), queue, **limits)


def test_pick_takes_the_best_jobs_that_fit_their_buckets() -> None:
    candidates = [
        job(1, concurrency_key="t", concurrency_max=2),
        job(2, concurrency_key="t", concurrency_max=2),
        job(3, concurrency_key="t", concurrency_max=2),
        job(4, rate_key="r", rate_max=3),
        job(5, rate_key="r", rate_max=3),
        job(6, queue="video"),
        job(7, queue="video"),
        job(8, priority=1),
        job(1, concurrency_key="t", concurrency_max=2),  # found twice: counted once
    ]
    chosen = pick(candidates, 10, queue_free={"video": 1}, running={"t": 1}, started={"r": 2})
    assert chosen == [8, 1, 4, 6]


def test_pick_stops_at_the_limit_and_skips_full_buckets() -> None:
    candidates = [job(i, concurrency_key="t", concurrency_max=1) for i in range(3)]
    candidates += [job(10 + i) for i in range(5)]
    assert pick(candidates, 3, queue_free={}, running={"t": 1}, started={}) == [10, 11, 12]
    assert pick(candidates, 3, queue_free={}, running={}, started={}) == [0, 10, 11]
