"""The command line of `python -m benchmarks.peers`: sizes, repeats and what to run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

#: Each store, and the peers conveyor is measured against on it.
STORES = ("postgres", "sqlite", "redis")
PEERS = {
    "postgres": ("PgQueuer",),
    "sqlite": ("huey",),
    "redis": ("Dramatiq", "huey", "SAQ", "RQ", "arq", "Celery"),
}
#: Other names `--only` takes for a store: each Redis peer's name selects the Redis store.
ALIASES = {
    "postgresql": "postgres",
    "pg": "postgres",
    "pgqueuer": "postgres",
    "huey": "sqlite",
    "redis-py": "redis",
    **{peer.lower(): "redis" for peer in PEERS["redis"] if peer != "huey"},
}
#: Workload groups: enqueue (one by one, and in bulk), drain, latency, and the raw loop.
GROUPS = ("enqueue", "drain", "latency", "raw")
QUICK = {"jobs": 2_000, "repeat": 1, "latency_seconds": 3.0}


@dataclass(frozen=True)
class Options:
    """One run's settings; the defaults are the published figures' settings."""

    jobs: int = 20_000
    batch: int = 1_000
    repeat: int = 3
    latency_rate: float = 30.0
    latency_seconds: float = 10.0
    stores: tuple[str, ...] = STORES
    groups: tuple[str, ...] = GROUPS
    #: PostgreSQL's URL (default: `CONVEYOR_TEST_POSTGRES_URL`, else the local test server)
    postgres_url: str | None = None
    #: Redis's URL, database number included (default: `CONVEYOR_TEST_REDIS_URL`, else
    #: database 9 of the local server); every peer's workload and the raw loop's empties that
    #: database before and after, conveyor's keep their keys under a prefix and delete them
    redis_url: str | None = None
    json: Path | None = None


def _only(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    chosen = tuple(dict.fromkeys(ALIASES.get(c, c) for c in chosen if c))
    unknown = [c for c in chosen if c not in STORES + GROUPS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(STORES + GROUPS)} (comma-separated); got {text!r}"
        )
    return chosen


def parse_args(argv: list[str] | None = None) -> Options:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="conveyor beside the queues a user would pick instead, on the same store, "
        "through each one's own API and worker command: PgQueuer on PostgreSQL, huey "
        "(SqliteHuey) on SQLite, and on Redis Dramatiq, huey (RedisHuey), SAQ, RQ, arq and "
        "Celery, with a raw redis-py loop beside them. Run it from the "
        "peers' virtualenv: `make bench-peers`.",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"jobs per enqueue and drain workload "
        f"(default {defaults.jobs:,}; {QUICK['jobs']:,} with --quick)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"runs of every workload, interleaved between the systems; the median is reported "
        f"(default {defaults.repeat}; 1 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, single run to check that everything works"
    )
    parser.add_argument(
        "--only",
        type=_only,
        metavar="WHAT",
        help=f"run only these stores ({', '.join(STORES)}) and/or workload groups "
        f"({', '.join(GROUPS)}), comma-separated: `--only postgres`, `--only sqlite,drain`; "
        "a Redis peer's name (dramatiq, saq, rq, arq, celery) selects the Redis store",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=defaults.batch,
        help=f"jobs per call in the bulk enqueue (default {defaults.batch:,})",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=defaults.latency_rate,
        help=f"jobs/s offered in the latency workload (default {defaults.latency_rate:g})",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help=f"how long the latency workload enqueues "
        f"(default {defaults.latency_seconds:g}; {QUICK['latency_seconds']:g} with --quick)",
    )
    parser.add_argument(
        "--postgres-url",
        metavar="URL",
        help="the PostgreSQL server (default $CONVEYOR_TEST_POSTGRES_URL, else "
        "postgresql://postgres@127.0.0.1:5432/test); every run uses a fresh schema and drops it",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the Redis server and database (default $CONVEYOR_TEST_REDIS_URL, else "
        "redis://127.0.0.1:6379/9); every peer's and raw-loop workload empties that database "
        "(FLUSHDB) before and after it; conveyor's keep their keys under a fresh prefix and "
        "delete them",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    base = QUICK if args.quick else {}

    def given(value: float | None, name: str, default: float) -> float:
        return value if value is not None else base.get(name, default)

    jobs = given(args.jobs, "jobs", defaults.jobs)
    repeat = given(args.repeat, "repeat", defaults.repeat)
    seconds = given(args.latency_seconds, "latency_seconds", defaults.latency_seconds)
    if jobs < 1 or repeat < 1 or args.batch < 1 or seconds <= 0 or args.latency_rate <= 0:
        parser.error(
            "--jobs, --repeat, --batch, --latency-seconds and --latency-rate must be positive"
        )
    only = args.only or ()
    return Options(
        jobs=int(jobs),
        batch=args.batch,
        repeat=int(repeat),
        latency_rate=args.latency_rate,
        latency_seconds=float(seconds),
        stores=tuple(s for s in STORES if s in only) or STORES,
        groups=tuple(g for g in GROUPS if g in only) or GROUPS,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        json=args.json,
    )
