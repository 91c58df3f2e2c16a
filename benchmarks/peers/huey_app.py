"""The SqliteHuey `huey_consumer benchmarks.peers.huey_app.huey` runs in the peer comparison;
its database file comes from `CONVEYOR_BENCH_HUEY_DB`, set by the workload that starts it."""

from __future__ import annotations

import os

from benchmarks.peers.huey_side import DB_ENV, make_huey

huey = make_huey(os.environ[DB_ENV]).huey
