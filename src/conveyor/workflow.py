"""Workflows built on dependencies: a chain runs its steps one after another, a group runs its
members side by side and then, optionally, a callback. Either is stored in one call, all or
nothing, and is then just jobs that wait for each other."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from conveyor.errors import ValidationError
from conveyor.job import Job, NewJob
from conveyor.task import Signature


class Workflow:
    """Signatures with, for each, the positions of the earlier ones it waits for."""

    def __init__(self, steps: Sequence[tuple[Signature, tuple[int, ...]]]) -> None:
        if not steps:
            raise ValidationError("a workflow needs at least one signature (task.s(...))")
        for signature, _ in steps:
            if not isinstance(signature, Signature):
                raise ValidationError(f"workflows take signatures (task.s(...)), got {signature!r}")
        apps = {id(signature.task.app) for signature, _ in steps}
        if len(apps) > 1:
            raise ValidationError("all the tasks of a workflow must belong to one App")
        self.steps = list(steps)

    def _build(self) -> list[NewJob]:
        jobs = []
        for signature, after in self.steps:
            job = signature.task.build_job(signature.options, signature.args, signature.kwargs)
            jobs.append(dataclasses.replace(job, depends_on_batch=after) if after else job)
        return jobs

    def enqueue(self) -> list[Job]:
        """Store every job of the workflow in one transaction; their handles, in order."""
        first = self.steps[0][0]
        return first.task.app.insert_sync(self._build(), first.options.connection)

    async def enqueue_async(self) -> list[Job]:
        first = self.steps[0][0]
        return await first.task.app.insert_async(self._build(), first.options.connection)


def chain(*signatures: Signature) -> Workflow:
    """`chain(a.s(1), b.s(), c.s())`: b waits for a to succeed, c for b. Nothing is passed
    from one step to the next; a step that ends dead or cancelled cancels the rest."""
    return Workflow([(s, (i - 1,) if i else ()) for i, s in enumerate(signatures)])


def group(signatures: Iterable[Signature], then: Signature | None = None) -> Workflow:
    """`group([a.s(1), a.s(2)], then=done.s())`: the members run side by side; `then` runs
    once they have all succeeded (and is cancelled if one ends dead or cancelled)."""
    members: list[tuple[Signature, tuple[int, ...]]] = [(s, ()) for s in signatures]
    if then is not None:
        members.append((then, tuple(range(len(members)))))
    return Workflow(members)
