"""The tasks `make demo` runs: fast ones, slow ones that report progress, a flaky one, a broken one.

Run a worker for them with `python -m conveyor worker examples.demo_app:app` from the repository
root; the database is `conveyor-demo.db` there.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import conveyor

app = conveyor.App("sqlite:///conveyor-demo.db")

#: Short, fixed backoffs so the demo's retries happen while you watch.
QUICK_RETRY = conveyor.fixed(1)


@app.task(name="thumbnail", backoff=QUICK_RETRY)
def thumbnail(image: str, width: int = 200) -> dict[str, Any]:
    """A fast job: a fraction of a second of work."""
    time.sleep(random.uniform(0.4, 0.9))
    return {"thumbnail": image.replace(".jpg", f"-{width}px.jpg")}


@app.task(name="render_video", pass_context=True, timeout=120)
async def render_video(ctx: conveyor.Context, title: str, seconds: float = 8.0) -> dict[str, Any]:
    """A slow job that reports its progress through named stages."""
    stages = [("download", 10), ("transcode", 65), ("thumbnails", 85), ("upload", 100)]
    done = 0
    for stage, until in stages:
        steps = max(1, (until - done) // 5)
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds * (until - done) / 100 / steps)
            await ctx.progress(done + (until - done) * step / steps, stage=stage)
        done = until
    return {"video": f"{title.lower().replace(' ', '-')}.mp4", "seconds": seconds}


class InventoryUnavailable(ConnectionError):
    """The inventory service did not answer."""


@app.task(name="sync_inventory", pass_context=True, max_attempts=5, backoff=QUICK_RETRY)
def sync_inventory(ctx: conveyor.Context, warehouse: str) -> dict[str, Any]:
    """A flaky job: the first two attempts fail, the third succeeds."""
    if ctx.attempt < 3:
        raise InventoryUnavailable(f"inventory service for {warehouse} timed out")
    return {"warehouse": warehouse, "items_synced": 1284}


class CardDeclined(RuntimeError):
    """The payment gateway said no."""


def _call_gateway(order_id: int, amount_cents: int) -> None:
    raise CardDeclined(f"gateway declined order {order_id} ({amount_cents / 100:.2f} EUR): 402")


@app.task(name="charge_card", max_attempts=3, backoff=QUICK_RETRY)
def charge_card(order_id: int, amount_cents: int) -> None:
    """A job that always fails: after its third attempt it lands in the dead-letter queue."""
    _call_gateway(order_id, amount_cents)


@app.task(name="send_reminder")
def send_reminder(user: str) -> str:
    """A job enqueued with a delay."""
    time.sleep(0.2)
    return f"reminded {user}"


@app.task(name="page_oncall")
def page_oncall(incident: str) -> str:
    """An urgent job, enqueued last at priority 1: it runs before the backlog."""
    time.sleep(0.5)
    return f"paged on-call about {incident}"
