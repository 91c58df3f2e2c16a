"""The caller's own connection, for an enqueue inside their transaction: a psycopg 3
connection, or SQLAlchemy's Session, Connection, AsyncSession or AsyncConnection on an engine
whose driver is psycopg 3 (`postgresql+psycopg://`). The job is written on the connection
underneath, in the transaction SQLAlchemy has open there (a Session begins one if it has
none): it exists if and only if that transaction commits.

SQLAlchemy is not a dependency: its objects are recognised by their module, and asked for the
connection underneath only through its public API.
"""

from __future__ import annotations

from typing import Any

import psycopg

from conveyor.errors import ValidationError

SYNC_KINDS = "a psycopg.Connection, or a SQLAlchemy Session or Connection"
ASYNC_KINDS = "a psycopg.AsyncConnection, or a SQLAlchemy AsyncSession or AsyncConnection"


def _from_sqlalchemy(value: Any) -> bool:
    return type(value).__module__.partition(".")[0] == "sqlalchemy"


def _sqlalchemy_async(value: Any) -> bool:
    """One of SQLAlchemy's asyncio objects (AsyncSession, AsyncConnection)."""
    return type(value).__module__.startswith("sqlalchemy.ext.asyncio")


def _refuse(value: Any, kinds: str, wrong: str) -> ValidationError:
    dialect = _dialect_name(value) if _from_sqlalchemy(value) else ""
    if dialect and dialect != "postgresql+psycopg":
        return ValidationError(
            f"enqueue inside a SQLAlchemy transaction needs an engine on psycopg 3 "
            f"(postgresql+psycopg://); this one uses {dialect}"
        )
    return ValidationError(f"connection= needs {kinds}; got {type(value).__name__}{wrong}")


def _dialect_name(value: Any) -> str:
    bind = getattr(value, "bind", None) or getattr(value, "engine", None)
    dialect = getattr(bind, "dialect", None)
    if dialect is None:
        return "another driver"
    return f"{dialect.name}+{dialect.driver}"


def sync_connection(value: Any) -> psycopg.Connection[Any]:
    """The psycopg connection to enqueue on, from what the caller passed."""
    if isinstance(value, psycopg.Connection):
        return value
    found = None
    if _from_sqlalchemy(value) and not _sqlalchemy_async(value):
        if hasattr(value, "exec_driver_sql"):  # a Connection
            found = value.connection.driver_connection
        elif callable(getattr(value, "connection", None)):  # a Session: joins or begins
            found = value.connection().connection.driver_connection
    if isinstance(found, psycopg.Connection):
        return found
    hint = " (with an async one, use enqueue_async())" if _looks_async(value) else ""
    raise _refuse(value, SYNC_KINDS, hint)


async def async_connection(value: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg async connection to enqueue on, from what the caller passed."""
    if isinstance(value, psycopg.AsyncConnection):
        return value
    found = None
    if _sqlalchemy_async(value):
        if hasattr(value, "get_raw_connection"):  # an AsyncConnection
            found = (await value.get_raw_connection()).driver_connection
        elif callable(getattr(value, "connection", None)):  # an AsyncSession: joins or begins
            found = (await (await value.connection()).get_raw_connection()).driver_connection
    if isinstance(found, psycopg.AsyncConnection):
        return found
    hint = " (with a blocking one, use enqueue())" if not _looks_async(value) else ""
    raise _refuse(value, ASYNC_KINDS, hint)


def _looks_async(value: Any) -> bool:
    return isinstance(value, psycopg.AsyncConnection) or _sqlalchemy_async(value)
