"""The no-op tasks every conveyor workload runs, registered on an App under fixed names."""

from __future__ import annotations

from typing import Any

import conveyor

SYNC_NOOP = "bench.noop"
ASYNC_NOOP = "bench.anoop"
#: an async no-op with a concurrency limit per tenant: KEYED_LIMIT at once for each of
#: KEYED_TENANTS tenants (job i belongs to tenant i % KEYED_TENANTS)
KEYED_NOOP = "bench.keyed"
KEYED_TENANTS = 100
KEYED_LIMIT = 5


def noop(i: int = 0) -> None:
    """Does nothing: the cost measured is conveyor's, not the task's."""


async def anoop(i: int = 0) -> None:
    """Does nothing, on the worker's event loop."""


async def keyed(i: int = 0, tenant: int = 0) -> None:
    """Does nothing, under a limit per tenant: the cost measured is the limited claim's."""


def make_app(url: str | None = None, **options: Any) -> conveyor.App:
    """An App on `url` (default: `CONVEYOR_DATABASE_URL`) with both no-op tasks registered;
    `options` go to `conveyor.App` (`postgres_schema=...`)."""
    app = conveyor.App(url, **options)
    app.task(name=SYNC_NOOP)(noop)
    app.task(name=ASYNC_NOOP)(anoop)
    app.task(name=KEYED_NOOP, concurrency=KEYED_LIMIT, concurrency_key="tenant")(keyed)
    return app
