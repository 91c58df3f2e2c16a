"""Progress events cross processes: a `conveyor worker` subprocess runs a task that reports
progress; a subscriber in the test process receives every report and state change in order,
woken by the store (a change check on SQLite, NOTIFY on PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import JobState
from conveyor.events import Event
from conveyor.testing import subscribe

from .conftest import Project

pytestmark = pytest.mark.slow

TASKS = """
import time

import conveyor

app = conveyor.App(DATABASE_URL, postgres_schema=POSTGRES_SCHEMA)


@app.task(name="transcode", pass_context=True)
def transcode(ctx, steps):
    for step in range(1, steps + 1):
        time.sleep(0.3)  # slower than the throttle: every report goes out
        ctx.progress(100 * step / steps, stage=f"part {step}")
    return "done"
"""


async def watch(project: Project) -> None:
    tasks = project.write_tasks(TASKS)
    tasks.app.migrate()
    seen: list[Event] = []
    async with subscribe(tasks.app) as stream:

        async def collect() -> None:
            async for event in stream:
                seen.append(event)
                if event.finished:
                    return

        watcher = asyncio.create_task(collect())
        job = tasks.transcode.enqueue(5)
        worker = project.start_worker("-c", "2")
        await asyncio.wait_for(watcher, 60)
    assert [e.state for e in seen if e.kind == "state"] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    reports = [(e.progress, e.stage) for e in seen if e.kind == "progress"]
    assert reports == [
        (20.0, "part 1"),
        (40.0, "part 2"),
        (60.0, "part 3"),
        (80.0, "part 4"),
        (100.0, "part 5"),
    ]
    kinds = [e.kind for e in seen]
    assert kinds.index("progress") > 1 and kinds[-1] == "state"  # after running, before the end
    assert {e.job_id for e in seen} == {job.id}
    assert worker.proc.poll() is None  # still serving: the events came from its process


async def test_progress_reaches_a_subscriber_in_another_process_on_sqlite(
    project: Project,
) -> None:
    await watch(project)


async def test_progress_reaches_a_subscriber_in_another_process_on_postgres(
    postgres_project: Project,
) -> None:
    await watch(postgres_project)
