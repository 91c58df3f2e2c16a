"""A FastAPI app that writes its row and its job in one transaction, through SQLAlchemy.

`POST /orders` stores an order and enqueues the job that confirms it in the same database
transaction: if anything fails before the commit (here, an order for nothing), neither exists;
once it commits, both do, and a worker runs the job. Run it with the worker and the dashboard
beside it (PostgreSQL, with psycopg 3 as SQLAlchemy's driver):

    export DATABASE_URL=postgresql://localhost/shop
    conveyor --app examples.fastapi_app:jobs migrate
    uvicorn examples.fastapi_app:api                 # the application
    conveyor worker examples.fastapi_app:jobs        # runs the confirmation jobs
    conveyor serve examples.fastapi_app:jobs         # the dashboard and API, on port 8000
                                                     # (start uvicorn on another: --port 8001)

    curl -X POST 'localhost:8001/orders?item=book&quantity=2'
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import conveyor

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

jobs = conveyor.App(DATABASE_URL, postgres_schema=os.environ.get("CONVEYOR_POSTGRES_SCHEMA"))
engine = create_async_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))
sessions = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]
    quantity: Mapped[int]
    confirmed: Mapped[bool] = mapped_column(default=False)


@jobs.task(name="shop.confirm_order", max_attempts=5)
async def confirm_order(order_id: int) -> str:
    """The work done after the request: here, marking the order confirmed."""
    async with sessions() as session, session.begin():
        order = await session.get(Order, order_id)
        if order is None:  # cannot happen: the order committed with this job
            raise conveyor.Discard(f"order {order_id} does not exist")
        order.confirmed = True
    return f"order {order_id} confirmed"


async def create_tables() -> None:
    """The application's own table (conveyor's are made by `conveyor migrate`)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await create_tables()
    yield
    await engine.dispose()
    await jobs.close_async()


api = FastAPI(title="shop", lifespan=lifespan)


async def session() -> AsyncIterator[AsyncSession]:
    async with sessions() as opened:
        yield opened


@api.post("/orders", status_code=201)
async def place_order(
    item: str, quantity: int, db: Annotated[AsyncSession, Depends(session)]
) -> dict[str, int]:
    async with db.begin():
        order = Order(item=item, quantity=quantity)
        db.add(order)
        await db.flush()  # the order's id, inside the transaction
        job = await confirm_order.configure(connection=db).enqueue_async(order.id)
        if quantity < 1:  # a failure after the enqueue: the rollback takes the job with it
            raise HTTPException(422, "an order is for one item or more")
    return {"order": order.id, "job": job.id}


@api.get("/orders/{order_id}")
async def show_order(
    order_id: int, db: Annotated[AsyncSession, Depends(session)]
) -> dict[str, object]:
    order = await db.get(Order, order_id)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return {"order": order.id, "item": order.item, "confirmed": order.confirmed}
