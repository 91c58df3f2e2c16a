"""Plans: every store operation written once, without I/O, as a generator of statements.

A plan yields a `Stmt` (or a list of them, to send together) and receives its rows (or, for a
statement without rows, its row count); it may yield `Atomic(plan)` to run a part of itself as
one transaction. It returns the operation's result. Drivers run plans: blocking or async, on
a pooled connection, on the caller's own connection inside their transaction, or on SQLite's
one thread — the plan is the same.

A `Call` is a plan with what its driver must know to run it (one transaction or not, how long
it may take, whose connection).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement; with `many`, `params` is a list of parameter sets (executemany). With
    `jobs`, its rows are jobs (every column of `conveyor.job.JOB_COLUMNS`; the `{job_columns}`
    of a query gives them) and the driver hands back `Job`s, made as the rows are read."""

    sql: str
    params: Any = None
    many: bool = False
    jobs: bool = False


@dataclass(frozen=True, slots=True)
class Atomic(Generic[T]):
    """A part of a plan that runs as one transaction (inline when already in one)."""

    plan: Plan[T]


#: A plan yields one statement, a list to send together (pipelined), or an `Atomic` part, and
#: gets back its rows, a list of results in the same shape, or the part's result.
Plan = Generator["Stmt | list[Stmt] | Atomic[Any]", Any, T]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """A plan and how to run it (a SQL plan, or one of another backend's own steps)."""

    plan: Generator[Any, Any, T]
    #: all of it in one transaction (a single statement is atomic by itself)
    atomic: bool = False
    #: how long the client waits at most, in seconds (None: the backend's own bound)
    deadline: float | None = None
    #: the caller's own connection, to run inside their transaction
    connection: Any = None
    #: check (and maybe migrate) the schema before the first call of the process
    check: bool = True
    #: a client's write that may give way to the workers' when the store has one writer at a
    #: time (SQLite): a storm of enqueuers must not keep heartbeats and outcomes out
    gives_way: bool = False


def statement(sql: str, params: Any = None) -> Plan[Any]:
    """The plan of one statement: its rows, or its row count."""
    return (yield Stmt(sql, params))


def rows_or_count(result: Any) -> int:
    """A row count from a statement's result, whether it returned rows or a count."""
    return len(result) if isinstance(result, list) else int(result)
