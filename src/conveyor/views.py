"""How jobs, queues, workers, periodic jobs and circuits are shown, alike in the CLI and over HTTP.

JSON-able dicts for programs (`--json` in the CLI, the HTTP API) and short text for people (the
CLI's tables, the dashboard's pages), with no terminal or web library: the CLI (`conveyor.cli.
render`) and the web server (`conveyor.web`) both build on these.

A job is shown as `redacted` gives it (see `conveyor.redact`): every view of a job starts there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from conveyor.circuit import Circuit, CircuitEvent, CircuitInfo
from conveyor.cron import Periodic, TickRecord
from conveyor.job import HistoryEntry, Job, JobState, WorkerInfo
from conveyor.redact import Redactor, hide_repeats, job_hidden_strings, secrets, shown_job
from conveyor.redact import url as shown_url

# -- values -------------------------------------------------------------------------------


def redacted(job: Job) -> Job:
    """The job as a person may see it: args, kwargs, meta and result through the App's
    `redact`, and what that hid of the arguments taken out of the result, errors, stage and
    unique key (`conveyor.redact.shown_job`). Every view of a job starts here."""
    return shown_job(job, _redactor(job))


def shown_text(job: Job, text: str | None) -> str | None:
    """Text the job wrote, shown apart from it (a log line, a progress message): what the
    App's `redact` hid of its arguments taken out."""
    if text is None:
        return None
    shown: str = hide_repeats(text, job_hidden_strings(job, _redactor(job)))
    return shown


def _redactor(job: Job) -> Redactor:
    return secrets if job.app is None else job.app.redact


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON: every field, timestamps as Unix seconds; arguments redacted."""
    job = redacted(job)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(job):
        if f.name != "app":
            out[f.name] = getattr(job, f.name)
    out["state"] = job.state.value
    return out


def history_dict(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "from": None if entry.from_state is None else entry.from_state.value,
        "to": entry.to_state.value,
        "worker_id": entry.worker_id,
        "note": entry.note,
    }


def worker_dict(worker: WorkerInfo, now: float, lease_seconds: float) -> dict[str, Any]:
    out = dataclasses.asdict(worker)
    out["lost"] = worker.is_lost(now, lease_seconds)
    out["heartbeat_age"] = worker.heartbeat_age(now)
    return out


def queues_dict(
    stats: Mapping[str, Mapping[JobState, int]],
    paused: Iterable[str],
    limits: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """`{queue: {"paused": bool, "concurrency": int | None, "jobs": {state: count}}}` for every
    queue that has jobs, is paused or has a concurrency limit, every state present (zeros
    included)."""
    paused = set(paused)
    limits = limits or {}
    return {
        queue: {
            "paused": queue in paused,
            "concurrency": limits.get(queue),
            "jobs": {state.value: int(stats.get(queue, {}).get(state, 0)) for state in JobState},
        }
        for queue in sorted(set(stats) | paused | set(limits))
    }


def cron_dict(
    entry: Periodic, record: TickRecord | None, now: float, redact: Redactor = secrets
) -> dict[str, Any]:
    """A periodic entry as JSON: its schedule, next tick and what it last fired."""
    return {
        "name": entry.name,
        "schedule": entry.schedule.expression,
        "tz": entry.schedule.tz,
        "task": entry.task.name,
        "queue": entry.task.queue,
        "args": redact(list(entry.args)),
        "kwargs": redact(dict(entry.kwargs)),
        "catch_up": entry.catch_up,
        "next_tick": entry.schedule.next_after(now),
        "last_tick": None if record is None else record.tick,
        "last_fired_tick": None if record is None else record.fired_tick,
        "last_job_id": None if record is None else record.job_id,
        "last_job_state": None if record is None else record.job_state,
    }


def circuits_dict(
    declared: Mapping[str, Circuit], states: Sequence[CircuitInfo], log: Sequence[CircuitEvent]
) -> dict[str, Any]:
    """`{"circuits": [...], "log": [...]}`: every circuit declared in the app or known to the
    store, and the latest recorded changes, newest first."""
    known = {c.name: c for c in states}
    circuits = []
    for name in sorted(set(declared) | set(known)):
        info, spec = known.get(name), declared.get(name)
        circuits.append(
            {
                "name": name,
                "state": info.state.value if info else "closed",
                "failures": info.failures if info else 0,
                "held": info.held if info else 0,
                "opened_at": info.opened_at if info else None,
                "probed_at": info.probed_at if info else None,
                "reason": info.reason if info else None,
                "failure_threshold": spec.failure_threshold if spec else None,
                "probe": None
                if spec is None or spec.probe is None
                else shown_url(spec.probe)
                if isinstance(spec.probe, str)
                else "callable",
            }
        )
    events = [
        {
            "name": e.name,
            "at": e.at,
            "event": e.event,
            "reason": e.reason,
            "held": e.held,
            "open_for": e.open_for,
        }
        for e in log
    ]
    return {"circuits": circuits, "log": events}


# -- small formats ------------------------------------------------------------------------


def when(ts: float | None) -> str:
    """Local wall-clock time, to the millisecond."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def ago(ts: float | None, now: float) -> str:
    """`3.2s ago` or `in 12s`."""
    if ts is None:
        return "-"
    delta = now - ts
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(delta)}"


def short_type(error: Mapping[str, Any]) -> str:
    """`CardDeclined` for `billing.gateway.CardDeclined`: listings have no room for modules."""
    return str(error.get("type") or "Error").rsplit(".", 1)[-1]


def last_error(job: Job) -> str:
    """`Type: message` of the job's last error, as a person may see it (redacted)."""
    return _last_error(redacted(job))


def _last_error(job: Job) -> str:
    if not job.errors:
        return ""
    error = job.errors[-1]
    message = error.get("message") or ""
    return f"{short_type(error)}: {message}" if message else short_type(error)


def progress_text(job: Job) -> str:
    if job.progress is None:
        return ""
    text = f"{job.progress:.0f}%"
    return f"{text} {job.stage}" if job.stage else text


def job_info(job: Job, now: float) -> str:
    """The one thing worth knowing about a job in a listing, by state (redacted)."""
    job = redacted(job)
    if job.state in (JobState.SCHEDULED, JobState.RETRYING):
        info = f"runs {ago(job.run_at, now)}"
        return f"{info} · {_last_error(job)}" if job.errors else info
    if job.state is JobState.RUNNING:
        parts = [progress_text(job), "cancel requested" if job.cancel_requested else ""]
        return " · ".join(p for p in parts if p) or f"on {job.worker_id}"
    if job.state is JobState.DEAD:
        return _last_error(job)
    if job.state is JobState.SUCCEEDED and job.started_at and job.finished_at:
        return f"took {span(job.finished_at - job.started_at)}"
    return ""
