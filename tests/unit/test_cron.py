"""Cron schedules: what is refused when a task is declared, and the ticks around daylight-saving
changes (Europe/Paris: clocks go 02:00 → 03:00 on 2026-03-29 and 03:00 → 02:00 on 2026-10-25)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

import conveyor
from conveyor.cron import Schedule

PARIS = ZoneInfo("Europe/Paris")


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    tz: ZoneInfo = PARIS,
    fold: int = 0,
) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold).timestamp()


def local(t: float) -> str:
    return dt.datetime.fromtimestamp(t, PARIS).strftime("%m-%d %H:%M%z")


def ticks(schedule: Schedule, start: float, n: int) -> list[str]:
    out = []
    for _ in range(n):
        start = schedule.next_after(start)
        out.append(local(start))
    return out


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "bad cron schedule '61 \\* \\* \\* \\*': Bad minute"),
        ("* * * *", "4 fields"),
        ("* * * * * *", "6 fields"),
        ("0 0 * * * * *", "7 fields"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("0 0 31 4 *", "Bad day-of-month"),
        ("@reboot", "unknown cron alias '@reboot'"),
        ("", "0 fields"),
        (5, "must be text"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(expression: object, message: str) -> None:
    with pytest.raises(conveyor.ValidationError, match=message):
        Schedule.parse(expression)  # type: ignore[arg-type]  # deliberately bad input


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(conveyor.ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Schedule.parse("0 * * * *", tz="Mars/Olympus")


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", ["01-01 01:00+0100", "01-01 02:00+0100"]),
        ("@daily", ["01-02 00:00+0100", "01-03 00:00+0100"]),
        ("@midnight", ["01-02 00:00+0100", "01-03 00:00+0100"]),
        ("@weekly", ["01-04 00:00+0100", "01-11 00:00+0100"]),  # Sundays
        ("@monthly", ["02-01 00:00+0100", "03-01 00:00+0100"]),
        ("@yearly", ["01-01 00:00+0100", "01-01 00:00+0100"]),
        ("@ANNUALLY", ["01-01 00:00+0100", "01-01 00:00+0100"]),
    ],
)
def test_aliases(alias: str, expected: list[str]) -> None:
    assert ticks(Schedule.parse(alias, "Europe/Paris"), at(2026, 1, 1, 0, 30), 2) == expected


def test_ticks_are_at_or_before_and_strictly_after() -> None:
    schedule = Schedule.parse("*/15 * * * *", "Europe/Paris")
    on_tick = at(2026, 6, 1, 12, 15)
    assert schedule.latest_at_or_before(on_tick) == on_tick
    assert schedule.latest_at_or_before(on_tick + 0.5) == on_tick
    assert schedule.latest_at_or_before(on_tick - 0.5) == at(2026, 6, 1, 12, 0)
    assert schedule.next_after(on_tick) == at(2026, 6, 1, 12, 30)
    assert schedule.next_after(on_tick - 0.5) == on_tick


def test_spring_forward_a_daily_job_in_the_missing_hour_runs_once_at_three() -> None:
    schedule = Schedule.parse("30 2 * * *", "Europe/Paris")
    assert ticks(schedule, at(2026, 3, 28, 12, 0), 3) == [
        "03-29 03:00+0200",  # 02:30 does not exist that night: it runs as the clock skips it
        "03-30 02:30+0200",
        "03-31 02:30+0200",
    ]


def test_spring_forward_an_interval_job_skips_the_missing_hour() -> None:
    schedule = Schedule.parse("*/30 * * * *", "Europe/Paris")
    assert ticks(schedule, at(2026, 3, 29, 1, 10), 4) == [
        "03-29 01:30+0100",
        "03-29 03:00+0200",
        "03-29 03:30+0200",
        "03-29 04:00+0200",
    ]


def test_fall_back_a_daily_job_in_the_repeated_hour_runs_once() -> None:
    schedule = Schedule.parse("30 2 * * *", "Europe/Paris")
    assert ticks(schedule, at(2026, 10, 24, 12, 0), 3) == [
        "10-25 02:30+0200",  # the first 02:30; not again an hour later
        "10-26 02:30+0100",
        "10-27 02:30+0100",
    ]


def test_fall_back_an_interval_job_runs_through_both_passes_of_the_hour() -> None:
    schedule = Schedule.parse("*/30 * * * *", "Europe/Paris")
    assert ticks(schedule, at(2026, 10, 25, 1, 50), 5) == [
        "10-25 02:00+0200",
        "10-25 02:30+0200",
        "10-25 02:00+0100",  # the same wall-clock times again, an hour of real time later
        "10-25 02:30+0100",
        "10-25 03:00+0100",
    ]
    # going back from the second pass finds the first
    second_two = at(2026, 10, 25, 2, 0, fold=1)
    assert schedule.latest_at_or_before(second_two - 1) == at(2026, 10, 25, 2, 30)


def test_utc_is_the_default_zone() -> None:
    schedule = Schedule.parse("0 9 * * *")
    assert schedule.next_after(at(2026, 1, 1, 0, 0, tz=ZoneInfo("UTC"))) == at(
        2026, 1, 1, 9, 0, tz=ZoneInfo("UTC")
    )
