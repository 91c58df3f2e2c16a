"""What a user imports: every exception conveyor raises, or a task raises for conveyor to
act on, comes from `conveyor` itself."""

from __future__ import annotations

import inspect

import conveyor
import conveyor.errors


def test_every_exception_of_conveyor_errors_is_importable_from_conveyor() -> None:
    defined = {
        name
        for name, value in vars(conveyor.errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == conveyor.errors.__name__
    }
    assert {"DownstreamDown", "Retry", "Discard", "TaskTimeout", "LeaseLost"} <= defined
    for name in sorted(defined):
        assert getattr(conveyor, name) is getattr(conveyor.errors, name), name
        assert name in conveyor.__all__, name
