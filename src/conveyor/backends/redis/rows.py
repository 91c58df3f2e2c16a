"""What Redis plans send and read back: job rows, and arguments as scripts take them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.job import JOB_COLUMNS, Job

_INT_COLUMNS = frozenset(("id", "priority", "attempt", "max_attempts"))
_CONVERT = [(int if c in _INT_COLUMNS else float if c == "progress" else None) for c in JOB_COLUMNS]


def job_of(row: Sequence[Any]) -> Job:
    """A Job from a script's row (the columns of JOB_COLUMNS, in order; None where absent)."""
    values = [
        v if convert is None or v is None else convert(v)
        for v, convert in zip(row, _CONVERT, strict=True)
    ]
    return Job.from_values(values)


def text_arg(value: Any) -> str:
    return "" if value is None else str(value)


def queues_arg(queues: Sequence[str] | None) -> str:
    return "" if queues is None else json.dumps(list(queues))


def ids_arg(ids: Iterable[int]) -> str:
    """Ids as scripts take a list of them: "12,15"."""
    return ",".join(str(int(i)) for i in ids)
