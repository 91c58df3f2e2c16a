"""The benchmark workloads run end to end at a tiny size and report sane figures.

No speed thresholds: this checks that `python -m benchmarks` measures what it says (every job
enqueued and succeeded, positive rates, latencies from real start times), not how fast it is.

The PostgreSQL runs use `CONVEYOR_TEST_POSTGRES_URL` (default the local test server), the
Redis ones `CONVEYOR_TEST_REDIS_URL` (default database 9 of the local server: conveyor's
workloads keep to key prefixes of their own there, the raw loop empties it). A server that
cannot be reached fails them in CI (`CI=true`) and skips them elsewhere.
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
from rich.console import Console

from conftest import unreachable  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` sits beside `src`, not inside the package
    sys.path.insert(0, str(ROOT))

from benchmarks import raw, raw_postgres, raw_redis, workloads  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.__main__ import parse_args as parse_suite_args  # noqa: E402
from benchmarks.common import DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, Rate  # noqa: E402
from benchmarks.peers import conveyor_side  # noqa: E402
from benchmarks.peers.options import GROUPS, STORES, Options, parse_args  # noqa: E402
from benchmarks.peers.report import (  # noqa: E402
    CONVEYOR,
    PEER,
    RAW,
    StoreResults,
    print_report,
    write_json,
)
from benchmarks.suite import Config, run  # noqa: E402

JOBS = 200
#: Read once, at import: the suite's fixtures clear CONVEYOR_* variables for each test.
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS_URL") or DEFAULT_REDIS_URL


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


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
def test_scale_drains_a_fresh_store_a_backlog_and_again_and_samples_memory(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--backend", backend, "--only", "scale", "--jobs", str(JOBS), "--repeat", "1"]
    argv += ["--scale-queued", "3000"]
    if backend == "postgres":
        argv += ["--postgres-url", request.getfixturevalue("postgres")]
    elif backend == "redis":
        request.getfixturevalue("redis_db")  # reachable, or the test fails (CI) or skips
        argv += ["--redis-url", REDIS_URL]
    assert main(argv) == 0  # every workload raises unless all its jobs ended succeeded
    printed = capsys.readouterr().out
    assert "the whole backlog of 3,000" in printed and "MiB" in printed
    assert ("after VACUUM (ANALYZE)" in printed) == (backend == "postgres")
    with pytest.raises(SystemExit):
        main(["--only", "scale", "--jobs", "2000", "--scale-queued", "3000"])
    assert "--scale-queued must be at least twice --jobs (4,000)" in capsys.readouterr().err


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


# -- the peer comparison (`make bench-peers`) ---------------------------------------------------
# PgQueuer and huey live in a virtualenv of their own that CI does not build: these tests cover
# what runs without them (the command line, the table, the pins, conveyor's side).


def test_peers_command_line_defaults_quick_and_only() -> None:
    options = parse_args([])
    assert (options.jobs, options.batch, options.repeat) == (20_000, 1_000, 3)
    assert (options.latency_rate, options.latency_seconds) == (30.0, 10.0)
    assert options.stores == STORES and options.groups == GROUPS and options.json is None

    quick = parse_args(["--quick", "--json", "out.json"])
    assert (quick.jobs, quick.repeat, quick.latency_seconds) == (2_000, 1, 3.0)
    assert quick.json == Path("out.json")
    assert parse_args(["--quick", "--jobs", "500"]).jobs == 500

    only = parse_args(["--only", "drain,PG,latency", "--postgres-url", POSTGRES_URL])
    assert only.stores == ("postgres",) and only.groups == ("drain", "latency")
    assert only.postgres_url == POSTGRES_URL
    assert parse_args(["--only", "huey"]).stores == ("sqlite",)
    assert parse_args(["--only", "huey"]).groups == GROUPS
    for wrong in (["--only", "mongo"], ["--jobs", "0"], ["--repeat", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(wrong)


def test_peers_command_line_selects_redis_by_name_or_by_a_peer() -> None:
    assert STORES == ("postgres", "sqlite", "redis")
    assert parse_args([]).redis_url is None  # the run falls back on $CONVEYOR_TEST_REDIS_URL
    only = parse_args(["--only", "redis"])
    assert only.stores == ("redis",) and only.groups == GROUPS
    for peer in ("dramatiq", "Celery", "rq", "arq", "saq", "redis-py"):
        assert parse_args(["--only", peer]).stores == ("redis",), peer
    both = parse_args(["--only", "celery,sqlite,drain", "--redis-url", "redis://h:6380/3"])
    assert both.stores == ("sqlite", "redis") and both.groups == ("drain",)
    assert both.redis_url == "redis://h:6380/3"


def test_peers_table_shows_medians_ranges_and_ratios_per_run() -> None:
    results = StoreResults("postgres", "PgQueuer 1.6.0", header="the machine")
    results.row("enqueue.one", "enqueue one by one", "jobs/s")
    results.row("drain.async", "drain async no-op jobs", "jobs/s")
    results.row("latency.sync.p50", "enqueue-to-start p50", "ms")
    results.row("enqueue.bulk", "bulk enqueue", "jobs/s", "no bulk API here")
    for conveyor_rate, peer_rate in ((3_000.0, 1_000.0), (1_000.0, 1_000.0), (2_000.0, 500.0)):
        results.record("enqueue.one", CONVEYOR, conveyor_rate)
        results.record("enqueue.one", PEER, peer_rate)
    for raw_rate in (4_000.0, 5_000.0, 6_000.0):
        results.record("enqueue.one", RAW, raw_rate)
    for ms in (1.0, 2.0, 3.0):
        results.record("latency.sync.p50", CONVEYOR, ms)
        results.record("latency.sync.p50", PEER, 2 * ms)
    for rate in (10_000.0, 12_000.0, 11_000.0):
        results.record("drain.async", CONVEYOR, rate)  # the peer has no figure: no ratio
        results.record("enqueue.bulk", CONVEYOR, rate)

    one = results.rows["enqueue.one"]
    assert one.ratios() == [3.0, 1.0, 4.0]  # within each run, not medians divided
    assert results.rows["drain.async"].ratios() == []
    assert results.rows["latency.sync.p50"].higher_is_better is False

    console = Console(record=True, width=200)
    print_report([results], Options(repeat=3), console)
    text = console.export_text()
    assert "conveyor and PgQueuer 1.6.0 on PostgreSQL: median of 3 runs" in text
    assert "conveyor ÷ peer" in text and "raw psycopg loop" in text and "the machine" in text
    assert "2,000" in text and "1,000-3,000" in text  # conveyor's median and range
    assert "3.00x" in text and "1.00-4.00" in text  # the median of the per-run ratios
    assert "5,000" in text and "4,000-6,000" in text  # the raw loop
    assert "0.50x" in text  # latency: half the peer's
    assert "n/a" in text and "no bulk API here" in text

    data = results.to_json()
    assert data["rows"]["enqueue.one"]["conveyor_over_peer"] == {
        "median": 3.0,
        "runs": [3.0, 1.0, 4.0],
    }
    assert data["rows"]["enqueue.one"]["raw"]["median"] == 5_000.0
    assert "peer" not in data["rows"]["drain.async"]


REDIS_PEERS = {
    "dramatiq": "Dramatiq 2.2.1",
    "huey": "huey 3.5.4",
    "saq": "SAQ 0.26.4",
    "rq": "RQ 3.0.0",
    "arq": "arq 0.28.0",
    "celery": "Celery 5.6.3",
}


def test_peers_report_on_redis_shows_conveyor_beside_every_peer(tmp_path: Path) -> None:
    results = StoreResults("redis", peers=REDIS_PEERS, header="Redis 7")
    results.row("enqueue.one", "enqueue one by one", "jobs/s")
    results.row("enqueue.bulk", "bulk enqueue", "jobs/s", "SAQ: none; arq: none")
    results.row("drain.sync", "drain sync no-op jobs", "jobs/s")
    results.row("drain.raw1", "raw drain, one BRPOP per job", "jobs/s")
    results.row("latency.sync.p50", "enqueue-to-start p50", "ms")
    for n, peer in enumerate(REDIS_PEERS, start=1):
        results.record("enqueue.one", peer, 1_000.0 * n)
        if peer not in ("saq", "arq"):
            results.record("enqueue.bulk", peer, 2_000.0 * n)
        results.record("drain.sync", peer, 100.0 * n)
        results.record("latency.sync.p50", peer, 1.5 * n)
    results.record("enqueue.one", CONVEYOR, 12_000.0)
    results.record("enqueue.bulk", CONVEYOR, 48_000.0)
    results.record("drain.sync", CONVEYOR, 3_000.0)
    results.record("latency.sync.p50", CONVEYOR, 0.75)
    results.record("enqueue.one", RAW, 40_000.0)
    results.record("drain.sync", RAW, 123_456.0)
    results.record("drain.raw1", RAW, 12_345.0)

    console = Console(record=True, width=120)
    print_report([results], Options(repeat=1), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 120
    title = (
        "conveyor, Dramatiq 2.2.1, huey 3.5.4, SAQ 0.26.4, RQ 3.0.0, arq 0.28.0 and Celery 5.6.3 "
        "on Redis"
    )
    assert title in " ".join(text.split())  # the title wraps at the table's width
    lines = text.splitlines()
    conveyor = next(line for line in lines if line.split()[:1] == ["conveyor"])
    assert conveyor.split()[1:] == ["12.0k", "48.0k", "3,000", "0.8"]
    # ÷ the fastest peer: Celery's rates (6,000, 12,000, 600), Dramatiq's latency (1.5 ms)
    ratios = next(line for line in lines if line.startswith(" conveyor ÷"))
    assert ratios.split()[2:] == ["2.00x", "4.00x", "5.00x", "0.50x"]
    assert "fastest peer" in text
    celery = next(line for line in lines if line.startswith(" Celery"))
    assert celery.split()[1:] == ["6,000", "12.0k", "600", "9.0"]
    saq = next(line for line in lines if line.startswith(" SAQ"))
    assert saq.split()[1:3] == ["3,000", "n/a"]  # no bulk enqueue
    assert "* bulk enqueue: SAQ: none; arq: none" in text
    assert "40.0k" in text and "123k" in text and "12.3k" in text  # the raw loop's rows
    assert "one BRPOP a job" in text
    assert "no figures" not in text and "—" not in text

    out = tmp_path / "peers.json"
    write_json([results], Options(repeat=1, stores=("redis",)), out)
    data = json.loads(out.read_text())
    assert data["config"]["stores"] == ["redis"]
    redis = data["stores"]["redis"]
    assert redis["peers"] == REDIS_PEERS and "absent" not in redis
    one = redis["rows"]["enqueue.one"]
    assert one["conveyor"] == {"median": 12_000.0, "runs": [12_000.0]}
    assert one["celery"] == {"median": 6_000.0, "runs": [6_000.0]}
    assert one["conveyor_over_fastest_peer"] == {
        "median": 2.0,
        "runs": [2.0],
        "fastest": ["celery"],
    }
    assert one["raw"]["median"] == 40_000.0
    assert "saq" not in redis["rows"]["enqueue.bulk"]
    assert redis["rows"]["drain.raw1"]["raw"]["runs"] == [12_345.0]
    assert "conveyor" not in redis["rows"]["drain.raw1"]


def test_peers_ratio_with_several_peers_is_to_the_fastest_of_each_run() -> None:
    results = StoreResults("redis", peers={"a": "A 1", "b": "B 2"})
    results.row("drain.sync", "drain", "jobs/s")
    results.row("latency.sync.p50", "p50", "ms")
    for ours, a, b in ((300.0, 100.0, 200.0), (300.0, 600.0, 150.0)):
        results.record("drain.sync", CONVEYOR, ours)
        results.record("drain.sync", "a", a)
        results.record("drain.sync", "b", b)
        results.record("latency.sync.p50", CONVEYOR, ours / 100)
        results.record("latency.sync.p50", "a", a / 100)
        results.record("latency.sync.p50", "b", b / 100)
    drain = results.rows["drain.sync"]
    assert drain.fastest() == ["b", "a"] and drain.ratios() == [1.5, 0.5]
    latency = results.rows["latency.sync.p50"]
    assert latency.fastest() == ["a", "b"] and latency.ratios() == [3.0, 2.0]  # lower is better
    data = results.to_json()
    assert data["rows"]["drain.sync"]["conveyor_over_fastest_peer"]["fastest"] == ["b", "a"]
    console = Console(record=True, width=120)
    print_report([results], Options(repeat=2), console)
    text = console.export_text()
    assert "conveyor ÷" in text and "fastest peer" in text and "1.00x" in text


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()  # a marker (`; sys_platform ...`)
        if line:
            name, version = line.split("==")  # every requirement is pinned exactly
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_peers_requirements_are_pinned_and_agree_with_the_project() -> None:
    peers = _pins(ROOT / "benchmarks" / "peers" / "requirements.txt")
    dev = _pins(ROOT / "requirements-dev.txt")
    assert peers["pgqueuer"] == "1.6.0" and peers["huey"] == "3.5.4" and "asyncpg" in peers
    # the Redis peers, on one redis-py that every one of them accepts
    for package in ("dramatiq", "saq", "rq", "arq", "celery", "kombu", "redis", "hiredis"):
        assert package in peers, package
    assert peers["redis"] == dev["redis"]  # the raw redis-py loop runs in the project's .venv too
    # conveyor runs in the peers' virtualenv on the same libraries as in the project's
    for package in (
        "click",
        "cronsim",
        "inotify-simple",
        "rich",
        "structlog",
        "psycopg",
        "psycopg-pool",
    ):
        assert package in peers, package
    differ = {p: (v, dev[p]) for p, v in peers.items() if p in dev and dev[p] != v}
    assert not differ, (
        f"benchmarks/peers/requirements.txt differs from requirements-dev.txt: {differ}"
    )


def test_peers_conveyor_side_drains_and_stamps_start_times() -> None:
    # conveyor's half of the comparison: `conveyor worker` subprocesses, timed from their start
    drained = conveyor_side.drain(50, False, "sqlite", None)
    assert drained.jobs == 50 and 0 < drained.first_s <= drained.seconds
    samples = conveyor_side.latency(20.0, 0.5, True, "sqlite", None)
    assert len(samples) == 10 and all(0 <= s < 30 for s in samples)


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_db() -> Iterator[Any]:
    """A client on the test database, which the benchmarks empty before and after each run."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unreachable(f"Redis at {REDIS_URL}", exc)
    with client:
        yield client


def test_raw_redis_loop_pushes_and_pops_every_job_and_leaves_its_database_empty(
    redis_db: Any,
) -> None:
    redis_db.set("left:from:before", "1")
    # each raw workload checks the list's length itself and raises on a mismatch
    rates = [
        raw_redis.insert(JOBS, 1, REDIS_URL),
        raw_redis.insert(JOBS, 64, REDIS_URL),  # 64, 64, 64 and 8 per pipeline
        raw_redis.drain(JOBS, 1, REDIS_URL),
        raw_redis.drain(JOBS, 100, REDIS_URL),
    ]
    for rate in rates:
        assert rate.jobs == JOBS
        assert rate.seconds > 0 and math.isfinite(rate.per_second) and rate.per_second > 0
    assert redis_db.dbsize() == 0  # emptied before the first run and after each


def _bench_keys(client: Any) -> list[str]:
    """Keys under a benchmark workload's prefix (`{bench_...}:...`) in the test database."""
    return sorted(k.decode() for k in client.scan_iter(match="{bench_*", count=1_000))


def test_redis_command_line_takes_the_backend_and_its_url() -> None:
    configs, _ = parse_suite_args(["--backend", "sqlite,pg,redis", "--redis-url", REDIS_URL])
    assert [c.backend for c in configs] == ["sqlite", "postgres", "redis"]
    assert all(c.redis_url == REDIS_URL for c in configs)
    assert parse_suite_args(["--backend", "redis"])[0][0].redis_url is None  # the default
    with pytest.raises(SystemExit):
        parse_suite_args(["--backend", "mongo"])


def test_redis_workloads_keep_to_a_prefix_of_their_own_and_delete_it(redis_db: Any) -> None:
    redis_db.set("left:from:before", "1")
    try:
        where: dict[str, Any] = {"backend": "redis", "redis": REDIS_URL}
        rates = [
            workloads.enqueue_one_by_one(JOBS, **where),
            workloads.enqueue_many(JOBS, 64, **where),
            workloads.drain_sync(JOBS, 10, **where),  # each raises unless all JOBS succeeded
            workloads.drain_async(JOBS, 10, **where),
            workloads.drain_keyed(JOBS, 10, **where),
            workloads.drain_cli(JOBS, 2, 5, **where),  # `conveyor worker -p 2 --burst`
        ]
        for rate in rates:
            assert rate.jobs == JOBS and rate.seconds > 0 and rate.per_second > 0
        assert redis_db.get("left:from:before") == b"1"  # no FLUSHDB
        assert _bench_keys(redis_db) == []  # every workload deleted its keys
    finally:
        redis_db.delete("left:from:before")


def test_redis_latency_is_measured_from_real_start_times(redis_db: Any) -> None:
    result = workloads.latency(
        rate=50.0, seconds=0.5, concurrency=4, backend="redis", redis=REDIS_URL
    )
    assert result.count == 25
    assert all(0 <= s < 30 for s in result.samples)
    assert 0 <= result.percentile(50) <= result.percentile(95) <= result.percentile(99)
    assert _bench_keys(redis_db) == []


def test_redis_suite_reports_shares_of_the_raw_redis_loop(
    redis_db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    code = main(
        [
            "--backend",
            "redis",
            "--redis-url",
            REDIS_URL,
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
            "--latency-seconds",
            "0.5",
            "--only",
            "raw,enqueue,drain,latency",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "conveyor on Redis" in printed and "raw redis-py loop" in printed
    assert "LPUSH, 50 per round trip" in printed and "RPOP drain, 100 per round" in printed
    assert "raw BRPOP drain, 1 job per round trip" in printed
    assert "CLI -p 2, concurrency 5" in printed and "the server's TIME" in printed
    assert "Quoted figures" not in printed  # those are PostgreSQL's
    data = json.loads(out.read_text())
    assert data["backend"] == "redis" and data["environment"]["redis"]
    assert "redis_url" not in data["config"]  # it may carry a password
    assert set(data["metrics"]) == {
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
        "latency.p50",
        "latency.p95",
        "latency.p99",
        "latency.max",
        "latency.jobs",
        "latency.rate",
    }
    for metric in data["metrics"].values():
        assert metric["runs"] and all(r > 0 and math.isfinite(r) for r in metric["runs"])
    assert data["metrics"]["raw.drain.1"]["label"] == "raw BRPOP drain, 1 per round trip"
    assert set(data["ratios"]) == {
        "enqueue.one/raw",
        "enqueue.many.50/raw",
        "drain.sync.c5/raw",
        "drain.async.c5/raw",
        "drain.cli.p1.c5/raw",
        "drain.cli.p2.c5/raw",
        "drain.cli.p2.c5/p1",
    }
    assert data["ratios"]["enqueue.one/raw"]["against"] == "raw.insert.1"
    # Redis has no goals of its own: only the one every server shares
    assert [t["subject"] for t in data["targets"]] == ["drain.cli.p2.c5/p1"]
    assert _bench_keys(redis_db) == []


def test_peers_conveyor_side_runs_on_redis(redis_db: Any) -> None:
    assert conveyor_side.enqueue_one(JOBS, "redis", REDIS_URL).per_second > 0
    assert conveyor_side.enqueue_bulk(JOBS, 50, "redis", REDIS_URL).per_second > 0
    drained = conveyor_side.drain(50, True, "redis", REDIS_URL)
    assert drained.jobs == 50 and 0 < drained.first_s <= drained.seconds
    samples = conveyor_side.latency(20.0, 0.5, False, "redis", REDIS_URL)
    assert len(samples) == 10 and all(0 <= s < 30 for s in samples)
    assert _bench_keys(redis_db) == []
