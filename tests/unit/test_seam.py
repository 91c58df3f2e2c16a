"""The seam: one list of operations, carried by both faces with the same parameters."""

from __future__ import annotations

import inspect

import pytest

from conveyor.backends import BACKENDS, kind_of
from conveyor.backends.base import JobFilter, Operations
from conveyor.backends.faces import Backend, Store
from conveyor.errors import ConfigurationError, ValidationError
from conveyor.job import JobState

#: What the faces add around the operations: lifetime and wake-ups, run by the engine.
LIFETIME = {"close", "subscribe", "release", "wait_for_change", "use_clock", "latest_version"}


def _operations() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(Operations, inspect.isfunction)
        if getattr(fn, "__isabstractmethod__", False)
    }


def _methods(face: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(face, inspect.isfunction)
        if not name.startswith("_") and name not in LIFETIME
    }


@pytest.mark.parametrize("face", [Store, Backend])
def test_each_face_carries_every_operation_and_nothing_else(face: type) -> None:
    assert set(_methods(face)) == set(_operations())


@pytest.mark.parametrize("face", [Store, Backend])
def test_each_face_takes_the_parameters_of_its_operation(face: type) -> None:
    methods = _methods(face)
    for name, operation in _operations().items():
        assert list(methods[name].parameters) == list(operation.parameters), name


def test_every_url_scheme_names_one_backend() -> None:
    schemes = [s for kind in BACKENDS for s in kind.schemes]
    assert len(schemes) == len(set(schemes))
    for kind in BACKENDS:
        for scheme in kind.schemes:
            assert kind_of(f"{scheme}://somewhere") is kind
    with pytest.raises(ConfigurationError, match="unknown database URL scheme 'mysql'"):
        kind_of("mysql://localhost/jobs")


def test_a_bulk_change_is_never_widened_by_a_filter_it_cannot_apply() -> None:
    dead = JobFilter.of([JobState.DEAD], queue="mail", ids=[3, 1])
    assert dead.bulk("retry") is dead
    assert dead.ids == (3, 1) and dead.state_names == ["dead"]
    narrower = JobFilter.of([JobState.DEAD], contains="invoice", error_type="TimeoutError")
    with pytest.raises(ValidationError, match="not by error_type, contains"):
        narrower.bulk("purge")
    with pytest.raises(ValidationError, match="needs the states"):
        JobFilter.of([]).bulk("cancel")
