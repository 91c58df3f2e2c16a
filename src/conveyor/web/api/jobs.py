"""Jobs over HTTP: enqueue, list and search, one job with its history, cancel, retry, bulk
actions by id; the dead-letter queue, its groups, and retrying or purging a group."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from conveyor import views
from conveyor.job import Job, JobState
from conveyor.web.common import (
    MAX_BULK,
    MAX_ID,
    MAX_PAGE,
    GroupBody,
    Shared,
    Text,
    bulk,
    find_jobs,
    group_action,
)

JobId = Annotated[int, Field(ge=1, le=MAX_ID)]


def job_json(job: Job, *, history: bool = False) -> dict[str, Any]:
    out = views.job_dict(job)
    out["status_message"] = views.redacted(job).status_message
    out["held_by"] = job.held_by
    if history and job.app is not None:
        out["history"] = [views.history_dict(h) for h in job.app.job_history(job.id)]
    return out


class NewJobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Text = Field(min_length=1, max_length=255)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # strict, as the library: `true` is not a priority of 1 nor a delay of one second
    priority: StrictInt | StrictStr | None = None
    delay: StrictFloat | None = None
    queue: Text | None = None
    unique_key: Text | None = None


class BulkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "cancel", "purge"]
    ids: list[JobId] = Field(min_length=1, max_length=MAX_BULK)


def router(shared: Shared) -> APIRouter:
    app, read, admin = shared.app, shared.read, shared.admin
    routes = APIRouter()

    @routes.post("/api/jobs", status_code=201, dependencies=[admin])
    def enqueue(body: NewJobBody) -> dict[str, Any]:
        options = {
            k: v
            for k, v in {
                "priority": body.priority,
                "delay": body.delay,
                "queue": body.queue,
                "unique_key": body.unique_key,
            }.items()
            if v is not None
        }
        job = app.enqueue(body.task, args=body.args, kwargs=body.kwargs, **options)
        return job_json(job)

    @routes.get("/api/jobs", dependencies=[read])
    def list_jobs(
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        error_type: str | None = Query(None, max_length=255),
        search: str | None = Query(None, max_length=200),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> dict[str, Any]:
        """Newest first; `next` is the `before_id` of the next page (None: the last page).
        `search`: a job id, or text in the task name or the (redacted) arguments."""
        jobs, after = find_jobs(
            app,
            state=state,
            queue=queue,
            task=task,
            error_type=error_type,
            search=search,
            limit=limit,
            before_id=before_id,
        )
        return {"jobs": [job_json(j) for j in jobs], "next": after}

    @routes.post("/api/jobs/bulk", dependencies=[admin])
    def bulk_action(body: BulkBody) -> dict[str, Any]:
        """Retry (dead or cancelled), cancel (not finished) or purge (finished) up to
        MAX_BULK jobs by id; `affected` counts those it applied to."""
        ids = list(dict.fromkeys(body.ids))
        return {
            "action": body.action,
            "requested": len(ids),
            "affected": bulk(app, body.action, ids),
        }

    @routes.get("/api/jobs/{job_id}", dependencies=[read])
    def get_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.get_job(job_id), history=True)

    @routes.post("/api/jobs/{job_id}/cancel", dependencies=[admin])
    def cancel_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.cancel_job(job_id, note="cancelled over HTTP"))

    @routes.post("/api/jobs/{job_id}/retry", dependencies=[admin])
    def retry_job(job_id: int = Path(ge=1, le=MAX_ID)) -> dict[str, Any]:
        return job_json(app.retry_job(job_id))

    @routes.get("/api/dlq", dependencies=[read])
    def dead_letter(
        queue: str | None = None,
        task: str | None = None,
        error_type: str | None = Query(None, max_length=255),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> dict[str, Any]:
        jobs, after = find_jobs(
            app,
            state=JobState.DEAD,
            queue=queue,
            task=task,
            error_type=error_type,
            limit=limit,
            before_id=before_id,
        )
        return {"jobs": [job_json(j) for j in jobs], "next": after}

    @routes.get("/api/dlq/groups", dependencies=[read])
    def dead_groups(queue: str | None = None) -> dict[str, Any]:
        """Dead jobs counted by task and the type of their last error, biggest group first."""
        return {"groups": [dataclasses.asdict(g) for g in app.dead_groups(queue)]}

    @routes.post("/api/dlq/retry", dependencies=[admin])
    def retry_dead(body: GroupBody) -> dict[str, Any]:
        """Retry the dead jobs of a task and error type (each optional: all of them)."""
        return group_action(app, "retry", body)

    @routes.post("/api/dlq/purge", dependencies=[admin])
    def purge_dead(body: GroupBody) -> dict[str, Any]:
        """Delete the dead jobs of a task and error type (each optional: all of them)."""
        return group_action(app, "purge", body)

    return routes
