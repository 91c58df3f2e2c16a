"""The broker and actors `dramatiq benchmarks.peers.dramatiq_app` loads in the peer comparison:
a RedisBroker on the database `CONVEYOR_BENCH_REDIS_URL` names, with the AsyncIO middleware
when `CONVEYOR_BENCH_DRAMATIQ_ASYNCIO` is set; the workload that starts the worker sets both."""

from __future__ import annotations

from benchmarks.peers.dramatiq_side import broker_from_environment

broker = broker_from_environment()
