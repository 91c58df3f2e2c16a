"""`python -m benchmarks`: run conveyor's benchmarks on SQLite, PostgreSQL and/or Redis and
print (and save) the figures."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.console import Console

from benchmarks.common import (
    BACKENDS,
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    byte_compile,
    quiet_logging,
)
from benchmarks.report import print_report, write_json
from benchmarks.suite import GROUPS, LONG_GROUPS, Config, run

QUICK = {"jobs": 2_000, "repeat": 1, "latency_seconds": 3.0}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(
            dict.fromkeys(int(part.replace("_", "")) for part in text.split(",") if part.strip())
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _groups(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    known = GROUPS + LONG_GROUPS
    unknown = [g for g in chosen if g not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}; got {text!r}")
    return chosen


def _backends(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    aliases = {"postgresql": "postgres", "pg": "postgres"}
    chosen = tuple(dict.fromkeys(aliases.get(b, b) for b in chosen))
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)}; got {text!r}")
    return chosen


def _processes(text: str) -> tuple[int, ...]:
    values = _ints(text)
    if 1 not in values:  # -p N is compared with -p 1
        values = (1, *values)
    return values


def parse_args(argv: list[str] | None = None) -> tuple[list[Config], Path | None]:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="conveyor on SQLite, PostgreSQL and Redis: enqueue, drain and latency, beside "
        "a raw sqlite3 / psycopg / redis-py loop measured in the same run.",
    )
    parser.add_argument(
        "--backend",
        type=_backends,
        default=("sqlite",),
        help="backends to measure, comma-separated: sqlite, postgres, redis (default sqlite)",
    )
    parser.add_argument(
        "--postgres-url",
        metavar="URL",
        help="the PostgreSQL server (default $CONVEYOR_TEST_POSTGRES_URL, else "
        f"{DEFAULT_POSTGRES_URL}); every workload uses a fresh schema and drops it",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the Redis server and database (default $CONVEYOR_TEST_REDIS_URL, else "
        f"{DEFAULT_REDIS_URL}); every conveyor workload keeps its keys under a fresh prefix and "
        "deletes them; the raw redis-py loop empties the database (FLUSHDB) before and after",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"jobs per throughput workload "
        f"(default {defaults.jobs:,}; {QUICK['jobs']:,} with --quick)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"runs of every workload; the median is "
        f"reported (default {defaults.repeat}; 1 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, single run to check that everything works"
    )
    parser.add_argument(
        "--batches",
        type=_ints,
        default=defaults.batches,
        help="enqueue_many sizes, comma-separated (default 1000,10000)",
    )
    parser.add_argument(
        "--concurrency",
        type=_ints,
        default=defaults.concurrencies,
        help="worker concurrencies for the drain, comma-separated (default 10,100)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=defaults.latency_rate,
        help="jobs/s offered in the latency workload (default 30)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="how long the latency workload enqueues (default 10; 3 with --quick)",
    )
    parser.add_argument(
        "--latency-concurrency",
        type=int,
        default=defaults.latency_concurrency,
        help="the latency worker's concurrency (default 10)",
    )
    parser.add_argument(
        "--only",
        type=_groups,
        default=GROUPS,
        help=f"run only these workload groups ({','.join(GROUPS)}; by default all of them), "
        f"or the long ones ({','.join(LONG_GROUPS)}: drain, a backlog of --scale-queued jobs "
        "with the worker's memory, drain again)",
    )
    parser.add_argument(
        "--scale-queued",
        type=int,
        default=defaults.scale_queued,
        metavar="N",
        help=f"the scale group's backlog (default {defaults.scale_queued:,})",
    )
    parser.add_argument(
        "--processes",
        type=_processes,
        default=defaults.processes,
        help="PostgreSQL and Redis: `conveyor worker -p N --burst` drains, one per N (default 1,2)",
    )
    parser.add_argument(
        "--one-call",
        type=int,
        default=defaults.one_call,
        metavar="N",
        help="PostgreSQL and Redis: one enqueue_many call of N jobs (default 100,000; 0 skips it)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    base = QUICK if args.quick else {}
    jobs = args.jobs or base.get("jobs", defaults.jobs)
    repeat = args.repeat or base.get("repeat", defaults.repeat)
    seconds = args.latency_seconds or base.get("latency_seconds", defaults.latency_seconds)
    if jobs < 1 or repeat < 1 or seconds <= 0 or args.latency_rate <= 0:
        parser.error("--jobs, --repeat, --latency-seconds and --latency-rate must be positive")
    if args.one_call < 0:
        parser.error("--one-call must be 0 or more")
    if args.scale_queued < 2 * jobs:
        parser.error(f"--scale-queued must be at least twice --jobs ({2 * jobs:,})")
    config = Config(
        jobs=int(jobs),
        batches=args.batches,
        concurrencies=args.concurrency,
        repeat=int(repeat),
        latency_rate=args.latency_rate,
        latency_seconds=float(seconds),
        latency_concurrency=args.latency_concurrency,
        groups=args.only,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        processes=args.processes,
        one_call=args.one_call,
        scale_queued=args.scale_queued,
    )
    return [dataclasses.replace(config, backend=b) for b in args.backend], args.json


def main(argv: list[str] | None = None) -> int:
    configs, json_path = parse_args(argv)
    quiet_logging()
    byte_compile()
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no reason to wrap at 80 columns
        console = Console(width=120)
    status_console = Console(stderr=True)
    everything = []
    for config in configs:
        with status_console.status(f"{config.backend}: starting") as status:
            results = run(config, progress=lambda text: status.update(text))
        print_report(results, console)
        everything.append(results)
        if config is not configs[-1]:
            console.print()
    if json_path is not None:
        write_json(everything, json_path)
        console.print(f"results written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
