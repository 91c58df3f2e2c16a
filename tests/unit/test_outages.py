"""The pieces that decide what an outage is and how it is reported: which driver errors mean
"the store cannot serve now", text made storable, one log line per outage, liveness by beats
seen to change."""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg_pool
import pytest
import structlog
from structlog.testing import capture_logs

import conveyor
from conveyor.backends.postgres import pools
from conveyor.backends.sqlite.connections import unavailable as sqlite_unavailable
from conveyor.backends.sqlite.liveness import Sightings
from conveyor.logging import Outage
from conveyor.payload import encode, encode_result, storable_text


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
        psycopg.errors.DiskFull("could not extend file"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.IoError("could not read block"),
        psycopg.errors.ConnectionFailure("connection failure"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.InterfaceError("the connection is closed"),
        psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"),
    ],
)
def test_postgres_errors_that_mean_an_outage(error: Exception) -> None:
    found = pools.unavailable(error)
    assert isinstance(found, conveyor.BackendUnavailable)
    assert str(found).startswith("PostgreSQL")


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        psycopg.errors.CharacterNotInRepertoire("invalid byte sequence for encoding UTF8: 0x00"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        ValueError("not a driver error"),
    ],
)
def test_postgres_errors_that_are_not_an_outage(error: Exception) -> None:
    assert pools.unavailable(error) is None


def test_only_a_lost_server_or_a_failover_replaces_the_pool() -> None:
    assert pools.needs_new_connections(psycopg.errors.ReadOnlySqlTransaction())
    assert pools.needs_new_connections(psycopg.errors.AdminShutdown())
    assert pools.needs_new_connections(psycopg.OperationalError("connection lost"))
    # a busy pool, a slow statement, a full disk: the same connections serve again later
    assert not pools.needs_new_connections(psycopg_pool.PoolTimeout())
    assert not pools.needs_new_connections(psycopg.errors.QueryCanceled())
    assert not pools.needs_new_connections(psycopg.errors.DiskFull())


def test_sqlite_errors_that_mean_an_outage(tmp_path: object) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 2")
    with pytest.raises(sqlite3.Error) as full:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert isinstance(sqlite_unavailable(full.value), conveyor.BackendUnavailable)
    assert "database or disk is full" in str(sqlite_unavailable(full.value))
    with pytest.raises(sqlite3.Error) as syntax:
        conn.execute("SELEC 1")
    assert sqlite_unavailable(syntax.value) is None


def test_text_a_task_writes_is_made_storable() -> None:
    assert storable_text("plain") == "plain"
    assert storable_text("a\x00b") == "a\ufffdb"
    assert storable_text("é\ud800z\udfff") == "é\ufffdz\ufffd"
    assert storable_text("\U0001f600 stays") == "\U0001f600 stays"


def test_a_result_is_made_storable_but_arguments_are_refused() -> None:
    assert encode_result({"k\x00": ["v\ud83d"]}, "the result") == '{"k\ufffd":["v\ufffd"]}'
    # an escaped backslash before "u0000" is text, not a NUL: left alone
    assert encode_result("\\u0000", "the result") == '"\\\\u0000"'
    with pytest.raises(conveyor.ValidationError, match="NUL"):
        encode(["a\x00"], "args")
    with pytest.raises(conveyor.ValidationError, match="cannot be stored as JSON"):
        encode_result(object(), "the result")


def test_an_outage_is_logged_when_it_starts_and_when_it_ends() -> None:
    outage = Outage(structlog.get_logger("test"), "worker.claim", worker_id="w")
    with capture_logs() as logs:
        for _ in range(5):
            outage.failed(conveyor.BackendUnavailable("PostgreSQL: down"), retry_in_s=1)
        outage.recovered()
        outage.recovered()
    assert [e["event"] for e in logs] == ["worker.claim_failed", "worker.claim_recovered"]
    assert logs[0]["log_level"] == "warning" and logs[0]["worker_id"] == "w"
    assert logs[1]["failures"] == 5


def test_another_kind_of_failure_is_logged_again_as_an_error() -> None:
    outage = Outage(structlog.get_logger("test"), "outcomes.write")
    with capture_logs() as logs:
        outage.failed(conveyor.BackendUnavailable("SQLite: database is locked"))
        outage.failed(RuntimeError("a bug"))
        outage.failed(RuntimeError("a bug"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("outcomes.write_failed", "warning"),
        ("outcomes.write_failed", "error"),
    ]


def test_liveness_is_a_value_seen_to_change_on_a_monotonic_clock() -> None:
    clock = [100.0]
    seen = Sightings(lambda: clock[0])
    assert seen.unchanged_for("worker:a", 5.0) == 0.0  # first sight: just changed
    clock[0] += 20
    assert seen.unchanged_for("worker:a", 5.0) == 20.0
    # the worker beat again (its wall clock jumped back an hour): a change all the same
    assert seen.unchanged_for("worker:a", 5.0 - 3600) == 0.0
    clock[0] += 3
    assert seen.unchanged_for("worker:a", 5.0 - 3600) == 3.0
