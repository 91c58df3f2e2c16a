# mypy: disable-error-code="misc,untyped-decorator"
# (Django ships no type information: its classes and decorators are Any here)
"""The shop's tasks, declared as any Django project declares them (`django.tasks.task`, or
`django_tasks.task` on Django 5.2: the test-only `api` module picks)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.db import connections

from conveyor.contrib.django.api import TaskContext, task
from shop.models import Order

#: What the tasks run in this process did, in order (the in-process worker's tests read it).
RAN: list[str] = []


@task()
def add(a: int, b: int) -> int:
    return a + b


@task()
async def multiply(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a * b


@task(queue_name="emails")
def send_receipt(order_id: int) -> str:
    return f"receipt for order {order_id}"


@task()
def record(label: str) -> str:
    RAN.append(label)
    return label


@task()
def confirm_order(order_id: int) -> bool:
    return bool(Order.objects.filter(id=order_id).update(confirmed=True) == 1)


@task()
async def confirm_order_async(order_id: int) -> bool:
    return bool(await Order.objects.filter(id=order_id).aupdate(confirmed=True) == 1)


@task()
def found_connection_open() -> bool:
    """Whether this thread's database connection was still open when the job began (the
    worker closes it after each job, as Django does after each request), then uses it."""
    was_open = connections["default"].connection is not None
    Order.objects.count()
    return was_open


@task(takes_context=True)
def describe_attempt(context: TaskContext, note: str = "") -> dict[str, Any]:
    result = context.task_result
    return {
        "id": result.id,
        "attempt": context.attempt,
        "status": str(result.status),
        "workers": len(result.worker_ids),
        "note": note,
    }


@task(takes_context=True)
def flaky(context: TaskContext, failures: int) -> int:
    """Fails its first `failures` attempts, then returns the attempt it succeeded on."""
    if context.attempt <= failures:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return int(context.attempt)


@task(takes_context=True)
async def flaky_async(context: TaskContext, failures: int) -> int:
    if context.attempt <= failures:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return int(context.attempt)


@task()
def decline_card(amount: int) -> None:
    raise ValueError(f"card declined for {amount}")


@task()
def unstorable_result() -> object:
    return {"when": object()}


@task()
def pair() -> tuple[int, bytes]:
    return (1, b"two")
