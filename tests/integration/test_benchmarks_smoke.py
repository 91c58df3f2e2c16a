"""The benchmark workloads run end to end at a tiny size and report sane figures.

No speed thresholds: this checks that `python -m benchmarks` measures what it says (every job
enqueued and succeeded, positive rates, latencies from real start times), not how fast it is.

The PostgreSQL runs use `CONVEYOR_TEST_POSTGRES_URL` (default the local test server). A server
that cannot be reached fails them in CI (`CI=true`) and skips them elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import unreachable  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` sits beside `src`, not inside the package
    sys.path.insert(0, str(ROOT))

from benchmarks import raw, raw_postgres, workloads  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.common import DEFAULT_POSTGRES_URL, Rate  # noqa: E402
from benchmarks.suite import Config, run  # noqa: E402

JOBS = 200
#: Read once, at import: the suite's fixtures clear CONVEYOR_* variables for each test.
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def test_raw_loop_inserts_and_drains_every_job() -> None:
    # each raw workload checks the table's final states itself and raises on a mismatch
    rates = [raw.insert(JOBS, 1), raw.insert(JOBS, 50), raw.drain(JOBS, 1), raw.drain(JOBS, 100)]
    for rate in rates:
        assert rate.jobs == JOBS
        assert rate.seconds > 0 and math.isfinite(rate.per_second) and rate.per_second > 0


def test_conveyor_enqueue_workloads_store_every_job() -> None:
    for rate in (workloads.enqueue_one_by_one(JOBS), workloads.enqueue_many(JOBS, 64)):
        assert rate.jobs == JOBS and rate.per_second > 0


@pytest.mark.parametrize("drain", [workloads.drain_sync, workloads.drain_async])
def test_drain_runs_every_job_in_a_worker_process(drain: Callable[[int, int], Rate]) -> None:
    rate = drain(JOBS, 10)  # raises unless all JOBS jobs ended succeeded
    assert rate.jobs == JOBS and rate.per_second > 0


def test_latency_is_measured_from_real_start_times() -> None:
    result = workloads.latency(rate=50.0, seconds=0.5, concurrency=4)
    assert result.count == 25
    assert all(0 <= s < 30 for s in result.samples)
    assert 0 <= result.percentile(50) <= result.percentile(95) <= result.percentile(99)
    assert result.percentile(99) <= max(result.samples)


def test_suite_reports_medians_ratios_and_targets() -> None:
    config = Config(
        jobs=JOBS, batches=(50,), concurrencies=(5,), repeat=2, groups=("enqueue", "drain", "raw")
    )
    results = run(config)
    assert set(results.metrics) == {
        "raw.insert.1",
        "raw.insert.50",
        "raw.drain.1",
        "raw.drain.100",
        "enqueue.one",
        "enqueue.many.50",
        "drain.sync.c5",
        "drain.async.c5",
    }
    for metric in results.metrics.values():
        assert len(metric.runs) == 2 and metric.median > 0
    assert set(results.ratios) == {
        "enqueue.one/raw",
        "enqueue.many.50/raw",
        "drain.sync.c5/raw",
        "drain.async.c5/raw",
    }
    share = results.ratios["drain.sync.c5/raw"]
    assert share.against == "raw.drain.100" and share.median > 0
    assert {t.subject for t in results.targets} >= {"enqueue.one", "drain.sync.c5/raw"}


def test_command_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    code = main(
        [
            "--jobs",
            str(JOBS),
            "--repeat",
            "1",
            "--batches",
            "100",
            "--concurrency",
            "10",
            "--latency-seconds",
            "0.5",
            "--only",
            "enqueue,latency",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "enqueue one by one" in printed and "p99" in printed and "WARNING" in printed
    data = json.loads(out.read_text())
    assert data["environment"]["log_level"] == "WARNING"
    assert data["metrics"]["enqueue.one"]["median"] > 0
    assert data["metrics"]["latency.jobs"]["runs"] == [15]
    assert {t["subject"] for t in data["targets"]} >= {"latency.p50", "latency.p99"}


# -- PostgreSQL -------------------------------------------------------------------------------


def _bench_schemas(conn: Any) -> set[str]:
    rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
    return {name for (name,) in rows.fetchall()}


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The test server's URL; afterwards, no schema the benchmarks made is left behind."""
    import psycopg

    try:
        conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unreachable(f"PostgreSQL at {POSTGRES_URL}", exc)
    with conn:
        before = _bench_schemas(conn)
        yield POSTGRES_URL
        left = _bench_schemas(conn) - before
    assert not left, f"benchmark schemas left behind: {sorted(left)}"


def test_raw_psycopg_loop_inserts_and_drains_every_job(postgres: str) -> None:
    # each raw workload checks its table's final states itself and raises on a mismatch
    rates = [
        raw_postgres.insert(JOBS, 1, postgres),
        raw_postgres.insert(JOBS, 50, postgres),
        raw_postgres.drain(JOBS, 1, postgres),
        raw_postgres.drain(JOBS, 100, postgres),
    ]
    for rate in rates:
        assert rate.jobs == JOBS
        assert rate.seconds > 0 and math.isfinite(rate.per_second) and rate.per_second > 0


def test_postgres_drain_by_two_worker_processes_runs_every_job(postgres: str) -> None:
    rate = workloads.drain_cli(JOBS, 2, 5, backend="postgres", postgres=postgres)
    assert rate.jobs == JOBS and rate.seconds > 0 and rate.per_second > 0


def test_postgres_latency_is_measured_from_real_start_times(postgres: str) -> None:
    result = workloads.latency(
        rate=50.0, seconds=0.5, concurrency=4, backend="postgres", postgres=postgres
    )
    assert result.count == 25
    assert all(0 <= s < 30 for s in result.samples)
    assert 0 <= result.percentile(50) <= result.percentile(95) <= result.percentile(99)


def test_postgres_suite_reports_shares_targets_and_quoted_figures(
    postgres: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    code = main(
        [
            "--backend",
            "sqlite,postgres",
            "--postgres-url",
            postgres,
            "--jobs",
            str(JOBS),
            "--repeat",
            "1",
            "--batches",
            "50",
            "--concurrency",
            "5",
            "--one-call",
            "1000",
            "--only",
            "raw,enqueue,drain",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "conveyor on SQLite" in printed and "conveyor on PostgreSQL" in printed
    assert "raw psycopg loop" in printed and "CLI -p 2, concurrency 5" in printed
    assert "Quoted figures, not measured here" in printed and "PgQueuer" in printed
    data = json.loads(out.read_text())
    assert set(data["backends"]) == {"sqlite", "postgres"}
    pg = data["backends"]["postgres"]
    assert pg["backend"] == "postgres" and pg["environment"]["postgres"]
    assert "postgres_url" not in pg["config"]  # it may carry a password
    assert set(pg["metrics"]) == {
        "raw.insert.1",
        "raw.insert.50",
        "raw.drain.1",
        "raw.drain.100",
        "enqueue.one",
        "enqueue.many.50",
        "enqueue.call.1000",
        "drain.sync.c5",
        "drain.async.c5",
        "drain.cli.p1.c5",
        "drain.cli.p2.c5",
    }
    for metric in pg["metrics"].values():
        assert metric["runs"] and all(r > 0 and math.isfinite(r) for r in metric["runs"])
    assert set(pg["ratios"]) == {
        "enqueue.one/raw",
        "enqueue.many.50/raw",
        "drain.sync.c5/raw",
        "drain.async.c5/raw",
        "drain.cli.p1.c5/raw",
        "drain.cli.p2.c5/raw",
        "drain.cli.p2.c5/p1",
    }
    assert pg["ratios"]["drain.sync.c5/raw"]["against"] == "raw.drain.100"
    assert pg["ratios"]["enqueue.one/raw"]["against"] == "raw.insert.1"
    targets = {t["subject"]: t for t in pg["targets"]}
    assert targets["enqueue.one/raw"]["value"] == 0.75
    assert targets["drain.async.c5"]["value"] == 6_500
    assert targets["drain.async.c5/raw"]["value"] == 0.20
    assert targets["drain.cli.p2.c5/p1"]["op"] == ">"
    assert targets["enqueue.call.1000"]["value"] == 50_000
    assert all(isinstance(t["met"], bool) for t in pg["targets"])
