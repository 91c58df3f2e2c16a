"""Backoff policies and the retry decision."""

from __future__ import annotations

import pytest

import conveyor
from conveyor.job import JobState
from conveyor.retry import RetryPolicy, as_backoff, decide, exponential, fixed


def test_exponential_doubles_from_base_up_to_the_cap() -> None:
    policy = exponential(base=2, cap=20, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]
    assert policy.delay(10_000) == 20  # no overflow on huge attempt numbers


def test_jitter_stays_between_half_and_the_full_delay() -> None:
    low = exponential(base=4, jitter=True)
    object.__setattr__(low, "rng", lambda: 0.0)
    high = exponential(base=4, jitter=True)
    object.__setattr__(high, "rng", lambda: 0.999)
    assert low.delay(2) == 4.0
    assert 7.9 < high.delay(2) < 8.0


def test_fixed_and_explicit_and_callable() -> None:
    assert fixed(3).delay(9) == 3
    listed = as_backoff([2, 4, 8])
    assert [listed.delay(n) for n in range(1, 6)] == [2, 4, 8, 8, 8]
    assert as_backoff(lambda attempt: attempt * 10).delay(3) == 30


@pytest.mark.parametrize("bad", [[], [-1], "abc", 5])
def test_bad_backoffs_are_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        as_backoff(bad)  # type: ignore[arg-type]  # deliberately bad input
    with pytest.raises(ValueError):
        fixed(-1)


POLICY = RetryPolicy(backoff=fixed(7), retry_on=(OSError,), give_up_on=(FileNotFoundError,))


@pytest.mark.parametrize(
    ("exc", "attempt", "state", "delay"),
    [
        (OSError("x"), 1, JobState.RETRYING, 7),
        (OSError("x"), 3, JobState.DEAD, 0),  # no attempts left
        (FileNotFoundError("x"), 1, JobState.DEAD, 0),  # give_up_on wins over retry_on
        (KeyError("x"), 1, JobState.DEAD, 0),  # not in retry_on
        (conveyor.Retry(delay=60), 1, JobState.RETRYING, 60),  # retried whatever retry_on says
        (conveyor.Retry(), 1, JobState.RETRYING, 7),  # the policy's delay
        (conveyor.Retry(delay=1), 3, JobState.DEAD, 0),
        (conveyor.Discard("no"), 1, JobState.DEAD, 0),
    ],
)
def test_decide(exc: BaseException, attempt: int, state: JobState, delay: float) -> None:
    decision = decide(POLICY, exc, attempt=attempt, max_attempts=3)
    assert (decision.state, decision.delay) == (state, delay)


def test_retry_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError):
        conveyor.Retry(delay=-1)
