"""examples/fastapi_app.py against the real PostgreSQL: an order and the job that confirms it are
written in one SQLAlchemy transaction, so a request that fails after the enqueue leaves
neither, and one that succeeds leaves both, and a worker confirms the order."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from conftest import POSTGRES_URL, drop_schema, postgres_available  # tests/conftest.py
from conveyor import JobState


@pytest.fixture
async def shop(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ModuleType]:
    """The example, its jobs in a schema of their own, its orders table in another."""
    postgres_available()
    jobs_schema, shop_schema = (f"test_shop_{uuid.uuid4().hex[:10]}{s}" for s in ("", "_app"))
    monkeypatch.setenv("DATABASE_URL", POSTGRES_URL)
    monkeypatch.setenv("CONVEYOR_POSTGRES_SCHEMA", jobs_schema)
    sys.modules.pop("examples.fastapi_app", None)
    example = importlib.import_module("examples.fastapi_app")
    example.Order.__table__.schema = shop_schema  # kept apart from other tests' tables
    async with example.engine.begin() as conn:
        await conn.exec_driver_sql(f"CREATE SCHEMA {shop_schema}")
    example.jobs.migrate()
    await example.create_tables()
    try:
        yield example
    finally:
        await example.engine.dispose()
        await example.jobs.close_async()
        sys.modules.pop("examples.fastapi_app", None)
        drop_schema(shop_schema)
        drop_schema(jobs_schema)


async def test_an_order_and_its_job_are_stored_together_or_not_at_all(shop: ModuleType) -> None:
    transport = httpx.ASGITransport(app=shop.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        placed = await client.post("/orders", params={"item": "book", "quantity": 2})
        assert placed.status_code == 201, placed.text
        ids: dict[str, Any] = placed.json()
        assert (await shop.jobs.get_job_async(ids["job"])).state is JobState.QUEUED

        refused = await client.post("/orders", params={"item": "book", "quantity": 0})
        assert refused.status_code == 422
        assert len(await asyncio.to_thread(shop.jobs.list_jobs)) == 1  # gone with the rollback
        assert (await client.get(f"/orders/{ids['order'] + 1}")).status_code == 404

        await shop.jobs.run_worker_async(burst=True)
        job = await shop.jobs.get_job_async(ids["job"])
        assert job.state is JobState.SUCCEEDED and job.result == f"order {ids['order']} confirmed"
        shown = await client.get(f"/orders/{ids['order']}")
        assert shown.json() == {"order": ids["order"], "item": "book", "confirmed": True}
