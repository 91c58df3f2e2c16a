"""Enqueueing: what is stored, and what is refused at the edge with nothing stored."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor import JobState, payload


def count(app: conveyor.App) -> int:
    return sum(sum(states.values()) for states in app.queue_stats().values())


def test_enqueue_stores_a_queued_job_with_its_arguments(app: conveyor.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    job = add.enqueue(1, y=2)

    assert isinstance(job.id, int)
    assert job.state is JobState.QUEUED
    stored = app.get_job(job.id)
    assert stored.task == f"{__name__}.add" == add.name
    assert (stored.args, stored.kwargs) == ([1], {"y": 2})
    assert (stored.queue, stored.priority, stored.attempt, stored.max_attempts) == (
        "default",
        5,
        0,
        3,
    )
    assert stored.state is JobState.QUEUED
    assert [(h.from_state, h.to_state) for h in app.job_history(job.id)] == [
        (None, JobState.QUEUED)
    ]


def test_calling_a_task_runs_the_function_here(app: conveyor.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert count(app) == 0


def test_configure_sets_per_call_options(app: conveyor.App, clock: conveyor.FrozenClock) -> None:
    app.clock = clock

    @app.task(queue="slow", priority="low", max_attempts=2)
    def work() -> None: ...

    default = work.enqueue()
    custom = work.configure(
        priority=1, delay=30, queue="fast", max_attempts=5, meta={"tenant": "t1"}
    ).enqueue()

    assert (default.queue, default.priority, default.max_attempts) == ("slow", 8, 2)
    stored = app.get_job(custom.id)
    assert (stored.queue, stored.priority, stored.max_attempts) == ("fast", 1, 5)
    assert stored.meta == {"tenant": "t1"}
    assert stored.state is JobState.SCHEDULED
    assert stored.run_at == pytest.approx(clock.now() + 30)


def test_configure_accepts_timedelta_and_aware_datetime(
    app: conveyor.App, clock: conveyor.FrozenClock
) -> None:
    app.clock = clock

    @app.task
    def work() -> None: ...

    later = work.configure(delay=dt.timedelta(minutes=2)).enqueue()
    at = dt.datetime.fromtimestamp(clock.now() + 600, tz=dt.UTC)
    fixed = work.configure(run_at=at).enqueue()

    assert app.get_job(later.id).run_at == pytest.approx(clock.now() + 120)
    assert app.get_job(fixed.id).run_at == pytest.approx(clock.now() + 600)


def test_enqueue_by_name(app: conveyor.App) -> None:
    @app.task(name="tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    job = app.enqueue("tasks.add", args=[1, 2], kwargs={}, priority=1)

    stored = app.get_job(job.id)
    assert (stored.task, stored.args, stored.priority) == ("tasks.add", [1, 2], 1)


def test_enqueue_many_stores_every_job_in_one_call(app: conveyor.App) -> None:
    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    jobs = add.enqueue_many([(1, 2), (3, 4), {"x": 5}, ((6,), {"y": 7})])

    assert len({j.id for j in jobs}) == 4
    stored = [app.get_job(j.id) for j in jobs]
    assert [(s.args, s.kwargs) for s in stored] == [
        ([1, 2], {}),
        ([3, 4], {}),
        ([], {"x": 5}),
        ([6], {"y": 7}),
    ]


def test_enqueue_many_takes_ten_thousand_jobs(app: conveyor.App) -> None:
    @app.task
    def noop(i: int) -> None: ...

    jobs = noop.enqueue_many([(i,) for i in range(10_000)])

    assert len({j.id for j in jobs}) == 10_000
    assert app.queue_stats()["default"][JobState.QUEUED] == 10_000
    assert app.get_job(jobs[-1].id).args == [9_999]
    for job in (jobs[0], jobs[-1]):
        [entry] = app.job_history(job.id)
        assert (entry.from_state, entry.to_state) == (None, JobState.QUEUED)
        assert entry.at == job.created_at


def test_enqueue_many_is_all_or_nothing(app: conveyor.App) -> None:
    @app.task
    def noop(i: Any) -> None: ...

    with pytest.raises(conveyor.ValidationError):
        noop.enqueue_many([(1,), (object(),), (3,)])

    assert count(app) == 0


async def test_async_twins(app: conveyor.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    one = await add.enqueue_async(1, 2)
    many = await add.enqueue_many_async([(3, 4), (5, 6)])
    named = await app.enqueue_async(add.name, args=[7, 8])
    fetched = await app.get_job_async(one.id)

    assert fetched.args == [1, 2]
    assert len({one.id, named.id, *(j.id for j in many)}) == 4


@pytest.mark.parametrize(
    "value",
    [
        "emoji 🎉 and accents é ñ 漢字",
        {"nested": [1, 2.5, None, True, {"deep": ["x"]}]},
        "back\\slash \\u0000 literally",
        -(2**53),
        "",
    ],
)
def test_arguments_round_trip_exactly(app: conveyor.App, value: Any) -> None:
    @app.task
    def echo(v: Any) -> Any:
        return v

    job = echo.enqueue(value)
    assert app.get_job(job.id).args == [value]
    app.run_worker(burst=True)
    assert job.refresh().result == value


# -- refused at the edge, nothing stored ------------------------------------------------------


def refused(app: conveyor.App, call: Any, match: str) -> None:
    before = count(app)
    with pytest.raises(conveyor.ValidationError, match=match):
        call()
    assert count(app) == before


def test_unknown_task_name(app: conveyor.App) -> None:
    @app.task(name="thumbnail")
    def thumbnail() -> None: ...

    before = count(app)
    with pytest.raises(
        conveyor.UnknownTask, match=r"unknown task 'thumbnale' \(known: thumbnail\)"
    ):
        app.enqueue("thumbnale")
    assert count(app) == before


def test_argument_that_is_not_json_is_named(app: conveyor.App) -> None:
    @app.task
    def resize(image: Any, width: int) -> None: ...

    refused(app, lambda: resize.enqueue(object(), 10), r"argument 'image'.*not JSON serializable")
    refused(app, lambda: resize.enqueue(b"x", width={1, 2}), r"argument 'image'")
    refused(app, lambda: resize.enqueue("ok", width={1, 2}), r"argument 'width'")


def test_arguments_must_fit_the_signature(app: conveyor.App) -> None:
    @app.task
    def resize(image: str, width: int) -> None: ...

    refused(app, lambda: resize.enqueue("a"), r"missing a required argument: 'width'")
    refused(app, lambda: resize.enqueue("a", 1, 2), r"too many positional arguments")


def test_every_call_is_checked_against_the_signature_however_often_its_shape_recurs(
    app: conveyor.App,
) -> None:
    """The signature's answer is kept per shape of call (how many positional arguments, which
    keyword names): a shape refused once is refused again, one that binds stays accepted, and
    the same names in another order or one name more is a shape of its own."""

    @app.task
    def resize(image: str, width: int = 100, *, crop: bool = False) -> None: ...

    for _ in range(3):
        refused(app, lambda: resize.enqueue("a", 1, 2), r"too many positional arguments")
        refused(app, lambda: resize.enqueue(image="a", height=3), r"unexpected keyword .*height")
        refused(app, lambda: resize.enqueue("a", image="b"), r"multiple values for argument")
        resize.enqueue("a", 1)
        resize.enqueue(width=2, image="b")
        resize.enqueue(image="c", width=3)
    refused(app, lambda: resize.enqueue(image="c", width=3, crop=True, x=1), r"unexpected keyword")
    refused(app, lambda: resize.enqueue_many([("a", 1), ("a", 1, 2)]), r"too many positional")
    # more shapes than a task remembers: the rest are still checked, every time
    for n in range(payload.MAX_SHAPES + 5):
        names = {f"x{i}": i for i in range(n % 7)}
        refused(app, lambda n=n, names=names: resize.enqueue(*["a"] * (3 + n)), r"too many")
        if names:
            refused(app, lambda names=names: resize.enqueue("a", **names), r"unexpected keyword")
    assert count(app) == 9


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("nul \x00 byte", "NUL character"),
        ("lone \ud800 surrogate", "lone surrogate"),
        (float("nan"), "Out of range float"),
        (float("inf"), "Out of range float"),
    ],
)
def test_text_and_numbers_json_cannot_carry_are_refused(
    app: conveyor.App, value: Any, match: str
) -> None:
    @app.task
    def echo(v: Any) -> None: ...

    refused(app, lambda: echo.enqueue(value), match)
    refused(app, lambda: echo.enqueue_many([(1,), (value,)]), match)
    refused(app, lambda: echo.configure(meta={"k": value}).enqueue(1), match)


def test_payload_over_the_limit(make_app: Callable[..., conveyor.App]) -> None:
    app = make_app(max_payload_bytes=1000)

    @app.task
    def echo(v: str) -> None: ...

    echo.enqueue("x" * 900)
    refused(app, lambda: echo.enqueue("x" * 1001), r"over the 1,000-byte limit")


def test_default_payload_limit_is_one_mebibyte(app: conveyor.App) -> None:
    @app.task
    def echo(v: str) -> None: ...

    refused(app, lambda: echo.enqueue("x" * (1024 * 1024)), "over the 1,048,576-byte limit")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"priority": 0}, "priority must be an integer from 1"),
        ({"priority": 11}, "priority must be an integer from 1"),
        ({"priority": "urgent"}, "unknown priority 'urgent'"),
        ({"priority": 2.5}, "priority must be an integer"),
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": "soon"}, "delay must be a number"),
        ({"queue": "has space"}, "bad queue name"),
        ({"queue": ""}, "bad queue name"),
        ({"queue": "x" * 129}, "bad queue name"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 2,147,483,647"),
        # one past what every store keeps: refused alike, not stored here and refused there
        ({"max_attempts": 2**31}, "max_attempts must be an integer from 1 to 2,147,483,647"),
        ({"delay": 1, "run_at": 5.0}, "not both"),
        ({"run_at": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"meta": ["not", "a", "mapping"]}, "meta must be a mapping"),
    ],
)
def test_bad_options_are_refused(app: conveyor.App, options: dict[str, Any], match: str) -> None:
    @app.task
    def work() -> None: ...

    refused(app, lambda: work.configure(**options).enqueue(), match)
    refused(app, lambda: app.enqueue(work.name, **options), match)


def test_queue_names_allow_the_documented_characters(app: conveyor.App) -> None:
    @app.task
    def work() -> None: ...

    job = work.configure(queue="Video.render:eu-1_x").enqueue()
    assert app.get_job(job.id).queue == "Video.render:eu-1_x"


def test_bad_task_declarations_fail_when_declared(app: conveyor.App) -> None:
    with pytest.raises(conveyor.ValidationError, match="max_attempts"):
        app.task(max_attempts=0)(lambda: None)
    with pytest.raises(conveyor.ValidationError, match="timeout"):
        app.task(timeout=0)(lambda: None)
    with pytest.raises(conveyor.ValidationError, match="bad queue name"):
        app.task(queue="no spaces")(lambda: None)
    with pytest.raises(TypeError, match="retry_on takes exception classes"):
        # a name, not a class: mypy refuses it too, so the ignore below is the point
        app.task(retry_on=("ValueError",))(lambda: None)  # type: ignore[arg-type]

    @app.task(name="dup")
    def first() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        app.task(name="dup")(lambda: None)
