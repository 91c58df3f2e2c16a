"""`python -m benchmarks.peers` (`make bench-peers`): conveyor beside PgQueuer on PostgreSQL and
huey on SQLite, and the Redis queues (Dramatiq, huey, SAQ, RQ, arq, Celery) beside a raw
redis-py loop, the same workloads through each one's own API and worker command."""

from __future__ import annotations

import sys

from rich.console import Console

from benchmarks.common import byte_compile, quiet_logging
from benchmarks.peers.options import parse_args
from benchmarks.peers.report import print_report, write_json
from benchmarks.peers.run import run_store


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    quiet_logging()
    byte_compile()
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no reason to wrap at 80 columns
        console = Console(width=140)
    status_console = Console(stderr=True)
    everything = []
    for store in options.stores:
        with status_console.status(f"{store}: starting") as status:
            everything.append(run_store(store, options, lambda text: status.update(text)))
    print_report(everything, options, console)
    if options.json is not None:
        write_json(everything, options, options.json)
        console.print(f"results written to {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
