"""The no-op tasks every conveyor workload runs, registered on an App under fixed names."""

from __future__ import annotations

from typing import Any

import conveyor

SYNC_NOOP = "bench.noop"
ASYNC_NOOP = "bench.anoop"


def noop(i: int = 0) -> None:
    """Does nothing: the cost measured is conveyor's, not the task's."""


async def anoop(i: int = 0) -> None:
    """Does nothing, on the worker's event loop."""


def make_app(url: str | None = None, **options: Any) -> conveyor.App:
    """An App on `url` (default: `CONVEYOR_DATABASE_URL`) with both no-op tasks registered;
    `options` go to `conveyor.App` (`postgres_schema=...`)."""
    app = conveyor.App(url, **options)
    app.task(name=SYNC_NOOP)(noop)
    app.task(name=ASYNC_NOOP)(anoop)
    return app
