"""The whole run on one backend: which workloads, how many times, and the medians, ratios
and targets."""

from __future__ import annotations

import os
import platform
import sqlite3
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from benchmarks import raw, raw_postgres, raw_redis, workloads
from benchmarks.common import BACKENDS, LOG_LEVEL, postgres_url, redis_url
from benchmarks.tasks import KEYED_LIMIT, KEYED_TENANTS

GROUPS = ("enqueue", "drain", "limits", "latency", "raw")
#: Groups run only when asked for (`--only scale`): they take many minutes.
LONG_GROUPS = ("scale",)


@dataclass(frozen=True)
class Config:
    """Sizes and repeats of one run; the defaults are the published figures' settings."""

    jobs: int = 20_000
    batches: tuple[int, ...] = (1_000, 10_000)
    concurrencies: tuple[int, ...] = (10, 100)
    repeat: int = 3
    latency_rate: float = 30.0
    latency_seconds: float = 10.0
    latency_concurrency: int = 10
    raw_batch: int = 100
    groups: tuple[str, ...] = GROUPS
    backend: str = "sqlite"
    #: PostgreSQL's URL (default: `CONVEYOR_TEST_POSTGRES_URL`, else the local test server)
    postgres_url: str | None = None
    #: Redis's URL, database included (default: `CONVEYOR_TEST_REDIS_URL`, else database 9 of
    #: the local server)
    redis_url: str | None = None
    #: PostgreSQL and Redis: `conveyor worker --processes N --burst` drains, one per N
    processes: tuple[int, ...] = (1, 2)
    #: PostgreSQL and Redis: one `enqueue_many` call of this many jobs (0: none)
    one_call: int = 100_000
    #: the scale group: the backlog drained between two drains of `jobs`
    scale_queued: int = 1_000_000

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r} (known: {', '.join(BACKENDS)})")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass(frozen=True)
class Ratio:
    """conveyor's figure as a share of the raw loop's, computed per run (both measured in the
    same run), then the median of those shares."""

    key: str
    metric: str
    against: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass(frozen=True)
class Target:
    """A goal the figures are compared with. Reported, never enforced."""

    subject: str  # a metric or ratio key
    op: str  # ">=", ">" or "<="
    value: float
    label: str

    def met(self, value: float) -> bool:
        if self.op == ">":
            return value > self.value
        return value >= self.value if self.op == ">=" else value <= self.value


@dataclass
class Results:
    config: Config
    env: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def record(self, key: str, label: str, unit: str, value: float) -> None:
        self.metrics.setdefault(key, Metric(key, label, unit)).runs.append(value)

    def value(self, subject: str) -> float | None:
        if subject in self.metrics:
            return self.metrics[subject].median
        if subject in self.ratios:
            return self.ratios[subject].median
        return None

    def to_json(self) -> dict[str, Any]:
        config = asdict(self.config)
        # the URLs may carry a password; the server is in the environment
        config.pop("postgres_url")
        config.pop("redis_url")
        return {
            "backend": self.config.backend,
            "environment": self.env or environment(self.config.backend),
            "config": config,
            "metrics": {
                k: {"label": m.label, "unit": m.unit, "median": m.median, "runs": m.runs}
                for k, m in self.metrics.items()
            },
            "ratios": {
                k: {"of": r.metric, "against": r.against, "median": r.median, "runs": r.runs}
                for k, r in self.ratios.items()
            },
            "targets": [self._target_json(t) for t in self.targets],
        }

    def _target_json(self, target: Target) -> dict[str, Any]:
        measured = self.value(target.subject)
        return {
            "subject": target.subject,
            "label": target.label,
            "op": target.op,
            "value": target.value,
            "measured": measured,
            "met": None if measured is None else target.met(measured),
        }


def environment(backend: str = "sqlite", url: str | None = None) -> dict[str, Any]:
    """What the figures were measured on: Python, the machine and the store's settings."""
    env: dict[str, Any] = {
        "backend": backend,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "log_level": LOG_LEVEL,
        "implementation": sys.implementation.name,
    }
    if backend == "sqlite":
        env.update(
            sqlite=sqlite3.sqlite_version, sqlite_journal_mode="WAL", sqlite_synchronous="NORMAL"
        )
    elif backend == "redis":
        env.update(_redis_settings(url or redis_url()))
    else:
        env.update(_postgres_settings(url or postgres_url()))
    return env


def _redis_settings(url: str) -> dict[str, Any]:
    """The server's version and persistence settings, and the database the run empties."""
    import redis

    client: Any = redis.Redis.from_url(url)
    try:
        server = client.info("server")
        config = client.config_get("appendonly") | client.config_get("appendfsync")
        config |= client.config_get("save")
        kwargs = client.connection_pool.connection_kwargs
    finally:
        client.close()
    return {
        "redis": server["redis_version"],
        "redis_appendonly": config.get("appendonly"),
        "redis_appendfsync": config.get("appendfsync"),
        "redis_save": config.get("save"),
        "redis_db": kwargs.get("db", 0),
        "redis_connection": "unix socket" if "path" in kwargs else "TCP",
        "redis_py": redis.__version__,
        "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
    }


def _postgres_settings(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('fsync'), current_setting('shared_buffers'),"
            " current_setting('autovacuum'),"
            " inet_server_addr() IS NULL"
        ).fetchone()
        assert row is not None
        version, synchronous_commit, fsync, shared_buffers, autovacuum, unix_socket = row
        return {
            "postgres": version,
            "postgres_synchronous_commit": synchronous_commit,
            "postgres_fsync": fsync,
            "postgres_shared_buffers": shared_buffers,
            "postgres_autovacuum": autovacuum,
            "postgres_connection": "unix socket" if unix_socket else "TCP",
            "psycopg": psycopg.__version__,
        }


def drain_key(kind: str, concurrency: int) -> str:
    return f"drain.{kind}.c{concurrency}"


def cli_drain_key(processes: int, concurrency: int) -> str:
    return f"drain.cli.p{processes}.c{concurrency}"


class Where(TypedDict):
    """Which store a workload runs on: the keyword arguments every workload takes."""

    backend: str
    postgres: str | None
    redis: str | None


#: The backends a server runs, where `conveyor worker -p N` can gain from N processes (SQLite
#: has one writer) and one call of `--one-call` jobs is measured.
SERVERS = ("postgres", "redis")


def store_url(config: Config) -> str | None:
    """The URL of the server `config` measures (None: SQLite, or the default)."""
    return config.redis_url if config.backend == "redis" else config.postgres_url


def run(config: Config, progress: Callable[[str], None] = lambda _: None) -> Results:
    """Run every selected workload `config.repeat` times, interleaved, and gather the figures."""
    server = config.backend in SERVERS
    results = Results(config, env=environment(config.backend, store_url(config)))
    where: Where = {
        "backend": config.backend,
        "postgres": config.postgres_url,
        "redis": config.redis_url,
    }
    n = config.jobs
    for round_no in range(1, config.repeat + 1):

        def step(what: str, round_no: int = round_no) -> None:
            progress(f"{config.backend}, run {round_no}/{config.repeat}: {what}")

        if "raw" in config.groups:
            _raw_round(results, step)
        if "enqueue" in config.groups:
            step("enqueue one by one")
            results.record(
                "enqueue.one",
                "enqueue one by one (task.enqueue)",
                "jobs/s",
                workloads.enqueue_one_by_one(n, **where).per_second,
            )
            for batch in config.batches:
                step(f"enqueue_many, {batch:,} per call")
                rate = workloads.enqueue_many(n, batch, **where)
                results.record(
                    f"enqueue.many.{batch}",
                    f"enqueue_many, {batch:,} per call",
                    "jobs/s",
                    rate.per_second,
                )
            if server and config.one_call:
                size = config.one_call
                step(f"enqueue_many, one call of {size:,}")
                rate = workloads.enqueue_many(size, size, **where)
                results.record(
                    f"enqueue.call.{size}",
                    f"enqueue_many, one call of {size:,}",
                    "jobs/s",
                    rate.per_second,
                )
        if "drain" in config.groups:
            for concurrency in config.concurrencies:
                for kind, fn in (("sync", workloads.drain_sync), ("async", workloads.drain_async)):
                    step(f"drain of {n:,} {kind} no-op jobs, concurrency {concurrency}")
                    results.record(
                        drain_key(kind, concurrency),
                        f"drain, {kind} no-op, 1 worker process, concurrency {concurrency}",
                        "jobs/s",
                        fn(n, concurrency, **where).per_second,
                    )
            for concurrency in config.concurrencies if server else ():
                for processes in config.processes:
                    step(f"conveyor worker -p {processes} -c {concurrency} --burst, {n:,} jobs")
                    rate = workloads.drain_cli(n, processes, concurrency, **where)
                    results.record(
                        cli_drain_key(processes, concurrency),
                        f"drain, conveyor worker -p {processes} -c {concurrency} --burst",
                        "jobs/s",
                        rate.per_second,
                    )
        if "limits" in config.groups:
            for concurrency in config.concurrencies:
                step(f"drain of {n:,} async no-op jobs limited per key, concurrency {concurrency}")
                results.record(
                    drain_key("keyed", concurrency),
                    f"drain, async no-op limited to {KEYED_LIMIT} at once per key "
                    f"({KEYED_TENANTS} keys), 1 worker process, concurrency {concurrency}",
                    "jobs/s",
                    workloads.drain_keyed(n, concurrency, **where).per_second,
                )
        if "latency" in config.groups:
            step(f"latency at {config.latency_rate:g} jobs/s for {config.latency_seconds:g} s")
            lat = workloads.latency(
                config.latency_rate, config.latency_seconds, config.latency_concurrency, **where
            )
            for p in (50, 95, 99):
                results.record(
                    f"latency.p{p}", f"enqueue-to-start p{p}", "ms", lat.percentile(p) * 1000
                )
            results.record("latency.max", "enqueue-to-start max", "ms", max(lat.samples) * 1000)
            results.record("latency.jobs", "latency jobs", "jobs", lat.count)
            results.record("latency.rate", "latency offered rate", "jobs/s", lat.offered_rate)
        if "scale" in config.groups:
            step(f"scale: {n:,} jobs fresh, a backlog of {config.scale_queued:,}, {n:,} after")
            _scale_round(results, workloads.scale(n, config.scale_queued, **where))
    _ratios(results)
    _targets(results)
    return results


def _scale_round(results: Results, scale: workloads.Scale) -> None:
    queued = results.config.scale_queued
    for key, label, rate in (
        ("scale.fresh", "drain on a fresh store", scale.fresh),
        ("scale.backlog.first", f"the first jobs of {queued:,} queued", scale.backlog_first),
        ("scale.backlog.last", f"the last jobs of {queued:,} queued", scale.backlog_last),
        ("scale.backlog", f"the whole backlog of {queued:,}", scale.backlog),
        ("scale.after", f"drain with {queued:,} finished in the tables", scale.after),
        ("scale.vacuumed", "the same after VACUUM (ANALYZE)", scale.after_vacuum),
    ):
        if rate is not None:
            results.record(key, label, "jobs/s", rate.per_second)
    results.record(
        "scale.rss.early", "worker memory a tenth into the backlog", "MiB", scale.rss_early_mib
    )
    results.record(
        "scale.rss.end", "worker memory at the end of the backlog", "MiB", scale.rss_end_mib
    )


@dataclass(frozen=True)
class RawWords:
    """How the raw loop of a backend is named: its client, what it inserts by and what a
    "transaction" is there (on Redis, a round trip: LPUSH one job or a pipeline of them, BRPOP
    one job or RPOP a count)."""

    client: str
    insert: str
    per: str
    drain_one: str
    drain_many: str


RAW_WORDS = {
    "sqlite": RawWords("sqlite3", "insert", "transaction", "drain", "drain"),
    "postgres": RawWords("psycopg", "insert", "transaction", "drain", "drain"),
    "redis": RawWords("redis-py", "LPUSH", "round trip", "BRPOP drain", "RPOP drain"),
}


def raw_label(backend: str, key: str) -> str:
    """The label of the raw loop's metric `key` (raw.insert.N, raw.drain.N) on `backend`."""
    words = RAW_WORDS[backend]
    _, kind, size = key.split(".")
    per = int(size)
    if kind == "insert":
        return f"raw {words.insert}, {per:,} per {words.per}"
    drain = words.drain_one if per == 1 else words.drain_many
    return f"raw {drain}, {per:,} per {words.per}"


def _raw_round(results: Results, step: Callable[[str], None]) -> None:
    """One round of the raw loop: sqlite3, psycopg or redis-py, whichever the backend is."""
    config = results.config
    n = config.jobs
    if config.backend == "redis":
        redis = config.redis_url

        def insert(jobs: int, per: int) -> float:
            return raw_redis.insert(jobs, per, redis).per_second

        def drain(jobs: int, per: int) -> float:
            return raw_redis.drain(jobs, per, redis).per_second
    elif config.backend == "postgres":
        url = config.postgres_url

        def insert(jobs: int, per: int) -> float:
            return raw_postgres.insert(jobs, per, url).per_second

        def drain(jobs: int, per: int) -> float:
            return raw_postgres.drain(jobs, per, url).per_second
    else:

        def insert(jobs: int, per: int) -> float:
            return raw.insert(jobs, per).per_second

        def drain(jobs: int, per: int) -> float:
            return raw.drain(jobs, per).per_second

    client = RAW_WORDS[config.backend].client
    # 1 per transaction, then the batches (1 among them is measured once)
    for per in dict.fromkeys((1, *config.batches)):
        key = f"raw.insert.{per}"
        label = raw_label(config.backend, key)
        step(f"{label} ({client})")
        results.record(key, label, "jobs/s", insert(n, per))
    for per in sorted({1, config.raw_batch}):
        key = f"raw.drain.{per}"
        label = raw_label(config.backend, key)
        step(f"{label} ({client})")
        results.record(key, label, "jobs/s", drain(n, per))


def _ratios(results: Results) -> None:
    config = results.config
    raw_drain = f"raw.drain.{config.raw_batch}"
    pairs: list[tuple[str, str, str]] = [("enqueue.one", "raw.insert.1", "raw")]
    pairs += [(f"enqueue.many.{b}", f"raw.insert.{b}", "raw") for b in config.batches]
    pairs += [
        (drain_key(kind, c), raw_drain, "raw")
        for c in config.concurrencies
        for kind in ("sync", "async", "keyed")
    ]
    pairs += [(drain_key("keyed", c), drain_key("async", c), "plain") for c in config.concurrencies]
    for c in config.concurrencies:
        pairs += [(cli_drain_key(p, c), raw_drain, "raw") for p in config.processes]
        more = [p for p in config.processes if p > 1]
        pairs += [(cli_drain_key(p, c), cli_drain_key(1, c), "p1") for p in more]
    pairs += [
        ("scale.backlog.first", "scale.fresh", "fresh"),
        ("scale.after", "scale.fresh", "fresh"),
        ("scale.vacuumed", "scale.fresh", "fresh"),
        ("scale.rss.end", "scale.rss.early", "early"),
    ]
    for metric, against, suffix in pairs:
        if metric in results.metrics and against in results.metrics:
            ours, theirs = results.metrics[metric].runs, results.metrics[against].runs
            key = f"{metric}/{suffix}"
            results.ratios[key] = Ratio(
                key, metric, against, [a / b for a, b in zip(ours, theirs, strict=True)]
            )


@dataclass(frozen=True)
class Goals:
    """The goals of one backend's issue, reported beside the figures."""

    drain_per_s: float
    drain_share: float
    enqueue_one_per_s: float | None  # an absolute floor (SQLite) ...
    enqueue_one_share: float | None  # ... or a share of the raw single insert (PostgreSQL)
    enqueue_many_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float


GOALS = {
    "sqlite": Goals(
        drain_per_s=5_000,
        drain_share=0.10,
        enqueue_one_per_s=5_000,
        enqueue_one_share=None,
        enqueue_many_per_s=50_000,
        latency_p50_ms=10,
        latency_p99_ms=25,
    ),
    "postgres": Goals(
        drain_per_s=6_500,
        drain_share=0.20,
        enqueue_one_per_s=None,
        enqueue_one_share=0.75,
        enqueue_many_per_s=50_000,
        latency_p50_ms=3,
        latency_p99_ms=10,
    ),
}


@dataclass(frozen=True)
class Quoted:
    """A published figure for another Python queue: quoted, not measured here."""

    system: str
    what: str
    per_second: float


#: Published figures for other Python queues on PostgreSQL, measured on a 2-core machine with
#: no-op jobs and one worker process, as quoted in the PostgreSQL backend's issue. They are
#: printed beside the figures for scale; nothing here measures them.
PEERS = (
    Quoted("PgQueuer", "drain", 3_200),
    Quoted("oban-py", "drain", 640),
    Quoted("procrastinate", "drain", 240),
    Quoted("PgQueuer", "enqueue one by one", 1_400),
    Quoted("PgQueuer", "enqueue in bulk", 25_000),
)


def _targets(results: Results) -> None:
    """The backend's goals (Redis has none set: its figures stand beside the raw loop's and,
    in `make bench-peers`, the Redis peers'), and those every backend shares: -p N faster than
    -p 1, a drain that keeps its pace as the store grows."""
    config = results.config
    goals = GOALS.get(config.backend)
    wanted = _goal_targets(config, goals) if goals is not None else []
    for c in config.concurrencies:
        for p in (p for p in config.processes if p > 1):
            wanted.append(Target(f"{cli_drain_key(p, c)}/p1", ">", 1.0, "faster than -p 1"))
    wanted.append(Target("scale.backlog.first/fresh", ">=", 0.9, "≥ 90% of fresh"))
    wanted.append(Target("scale.after/fresh", ">=", 0.9, "≥ 90% of fresh"))
    wanted.append(Target("scale.vacuumed/fresh", ">=", 0.9, "≥ 90% of fresh"))
    wanted.append(Target("scale.rss.end/early", "<=", 1.1, "≤ 110% of early"))
    results.targets = [t for t in wanted if results.value(t.subject) is not None]


def _goal_targets(config: Config, goals: Goals) -> list[Target]:
    wanted: list[Target] = []
    if goals.enqueue_one_per_s is not None:
        per_s = goals.enqueue_one_per_s
        wanted.append(Target("enqueue.one", ">=", per_s, f"≥ {per_s:,.0f}/s"))
    if goals.enqueue_one_share is not None:
        share = goals.enqueue_one_share
        wanted.append(Target("enqueue.one/raw", ">=", share, f"≥ {share:.0%} of raw insert"))
    many = [f"enqueue.many.{b}" for b in config.batches] + [f"enqueue.call.{config.one_call}"]
    per_s = goals.enqueue_many_per_s
    wanted += [Target(key, ">=", per_s, f"≥ {per_s:,.0f}/s") for key in many]
    one_process = [drain_key(kind, c) for c in config.concurrencies for kind in ("sync", "async")]
    one_process += [cli_drain_key(1, c) for c in config.concurrencies]
    share_goal = f"≥ {goals.drain_share:.0%} of raw batch-{config.raw_batch}"
    for key in one_process:
        wanted.append(Target(key, ">=", goals.drain_per_s, f"≥ {goals.drain_per_s:,.0f}/s"))
        wanted.append(Target(f"{key}/raw", ">=", goals.drain_share, share_goal))
    wanted.append(
        Target("latency.p50", "<=", goals.latency_p50_ms, f"≤ {goals.latency_p50_ms:g} ms")
    )
    wanted.append(
        Target("latency.p99", "<=", goals.latency_p99_ms, f"≤ {goals.latency_p99_ms:g} ms")
    )
    return wanted
