"""Instructions the Redis server runs for conveyor's scripts, counted by callgrind:
`python -m benchmarks.redis_instructions`.

Wall-clock figures on a shared machine move by a third from one run to the next; instruction
counts do not: the same server, scripts and arguments give the same count to within a fraction
of a percent, whatever else the machine is doing. This starts a `redis-server` of its own on a
free port under `valgrind --tool=callgrind`, counting only inside EVALSHA
(`--toggle-collect=evalShaCommand`: the scripts, with the commands they call), and counts, a job
at a time:

- an enqueue of one job, a call at a time;
- `enqueue_many` of 10,000 jobs in one call;
- claims of 10 jobs a call (what a worker at its defaults asks for);
- the outcomes of those jobs, written 10 a call.

Each is counted alone: `callgrind_control` dumps the counters (which zeroes them) before and
after it. Needs valgrind (Debian's valgrind package) and redis-server.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

import conveyor
from conveyor.job import JobState, Outcome

PREFIX = "counted"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _counted_server(server: str, folder: Path) -> Iterator[tuple[int, Callable[[], int]]]:
    """A redis-server under callgrind; yields its port and a function that returns the
    instructions counted since it was last called."""
    port = _free_port()
    out = folder / "callgrind.out"
    process = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--toggle-collect=evalShaCommand",
            f"--callgrind-out-file={out}",
            server,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(300):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"redis-server under valgrind did not answer on port {port}")

        def since_last() -> int:
            dumps = len(list(folder.glob("callgrind.out.*")))
            subprocess.run(
                ["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True
            )
            dump = folder / f"callgrind.out.{dumps + 1}"
            for _ in range(600):
                if dump.exists() and "totals:" in dump.read_text():
                    break
                time.sleep(0.1)
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
            raise RuntimeError(f"callgrind wrote no totals to {dump}")

        yield port, since_last
    finally:
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_instructions")
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--jobs", type=int, default=2_000, help="jobs claimed and completed")
    parser.add_argument("--one", type=int, default=1_000, help="enqueues of one job")
    parser.add_argument("--bulk", type=int, default=10_000, help="jobs in one enqueue_many")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        _counted_server(args.redis_server, Path(folder)) as (port, since_last),
    ):
        app = conveyor.App(f"redis://127.0.0.1:{port}/0", redis_prefix=PREFIX)

        @app.task(name="noop")
        def noop(i: int) -> None:
            return None

        engine: Any = app.backend.sync.engine
        ops = engine.ops
        noop.enqueue(0)  # the store set up, the scripts loaded: none of it counted
        counted: dict[str, float] = {}

        def count(name: str, jobs: int, work: Callable[[], Any]) -> Any:
            since_last()
            done = work()
            counted[name] = since_last() / jobs
            return done

        count(
            "enqueue, one job a call", args.one, lambda: [noop.enqueue(i) for i in range(args.one)]
        )
        count(
            f"enqueue_many, {args.bulk:,} jobs a call",
            args.bulk,
            lambda: noop.enqueue_many([(i,) for i in range(args.bulk)]),
        )
        for start in range(0, args.jobs, 1_000):
            noop.enqueue_many([(i,) for i in range(start, min(start + 1_000, args.jobs))])

        def claims() -> list[list[Any]]:
            batches: list[list[Any]] = []
            while sum(len(b) for b in batches) < args.jobs:
                now = time.time()
                jobs = engine.run(ops.claim("counting", None, 10, now + 600, now))
                if not jobs:
                    raise RuntimeError("a claim found no job")
                batches.append(jobs)
            return batches

        def outcomes(batches: list[list[Any]]) -> None:
            for jobs in batches:
                now = time.time()
                done = [
                    Outcome(
                        j.id,
                        "counting",
                        j.attempt,
                        JobState.SUCCEEDED,
                        now,
                        result="null",
                        ran_for=0.001,
                    )
                    for j in jobs
                ]
                engine.run(ops.complete(done))

        batches = count("claim, 10 jobs a call", args.jobs, claims)
        count("outcomes, 10 a call", args.jobs, lambda: outcomes(batches))
        app.close()
    print(f"{'what the server runs':36} {'instructions a job':>20}")
    for name, per_job in counted.items():
        print(f"{name:36} {per_job:20,.0f}")


if __name__ == "__main__":
    main()
