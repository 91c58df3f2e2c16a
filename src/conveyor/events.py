"""Events: every change of a job's state and every progress report, for whoever is watching.

State changes are read from the job history, progress reports from their own table, each
after a cursor, in order; a subscriber is woken by the store (NOTIFY on PostgreSQL, a cheap
change check on SQLite) instead of polling. Events carry ids and small fields only, never
job arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.job import FINISHED_STATES, JobState, epoch_seconds


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the event stream. Opaque: only the backend that made it reads it. Its
    text (`str(cursor)`) is what a client is given (an SSE event id) and may hand back."""

    token: str

    def __str__(self) -> str:
        return self.token

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """A cursor a client handed back, if it looks like one (the backend judges the rest)."""
        if not text or len(text) > MAX_CURSOR_CHARS or not text.isascii() or not text.isprintable():
            return None
        return cls(text)


#: The longest cursor text a client may hand back.
MAX_CURSOR_CHARS = 200


@dataclass(frozen=True, slots=True)
class Event:
    """A job changed state (`kind == "state"`) or reported progress (`kind == "progress"`)."""

    kind: str
    job_id: int
    at: float
    queue: str | None = None
    task: str | None = None
    state: JobState | None = None
    progress: float | None = None
    stage: str | None = None
    message: str | None = None
    #: why the state changed, where recorded ("retried by hand", "cancelled by ...")
    note: str | None = None
    #: for an attempt that ran and finished: how long it waited after it was due (seconds)
    wait: float | None = None
    #: for an attempt that ran and finished: how long it ran (seconds)
    run_time: float | None = None
    #: the worker that sent it: a progress report, or a change into or out of `running` (a
    #: claim, an outcome; a rescue names the lost worker); None for the others (a retry
    #: coming due, a cancel or retry by hand)
    worker: str | None = None

    @classmethod
    def from_history(cls, row: Any) -> Event:
        at = epoch_seconds(row["at"])
        state = JobState(row["to_state"])
        wait = run_time = None
        started, finished = epoch_seconds(row["started_at"]), epoch_seconds(row["finished_at"])
        # The job row holds its latest attempt only: its times belong to this event while the
        # job is still where this event left it (not retried and finished again since).
        if (
            state in FINISHED_STATES
            and row["from_state"] == JobState.RUNNING
            and started is not None
            and finished == at
        ):
            wait = max(0.0, started - epoch_seconds(row["run_at"]))
            run_time = max(0.0, finished - started)
        return cls(
            "state",
            row["job_id"],
            at,
            row["queue"],
            row["task"],
            state=state,
            note=row["note"],
            wait=wait,
            run_time=run_time,
            worker=row["worker_id"] if JobState.RUNNING in (state, row["from_state"]) else None,
        )

    @classmethod
    def from_progress(cls, row: Any) -> Event:
        return cls(
            "progress",
            row["job_id"],
            epoch_seconds(row["at"]),
            row["queue"],
            row["task"],
            progress=row["progress"],
            stage=row["stage"],
            message=row["message"],
            worker=row["worker_id"],
        )

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready fields (None fields left out)."""
        fields = {
            "kind": self.kind,
            "job_id": self.job_id,
            "at": self.at,
            "queue": self.queue,
            "task": self.task,
            "state": None if self.state is None else self.state.value,
            "progress": self.progress,
            "stage": self.stage,
            "message": self.message,
            "note": self.note,
            "wait": self.wait,
            "run_time": self.run_time,
            "worker": self.worker,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def order(self) -> tuple[float, int]:
        # at one instant: a job starts, then reports progress, then finishes
        rank = 1 if self.kind == "progress" else 2 if self.finished else 0
        return (self.at, rank)


def merge(history: list[Any], progress: list[Any]) -> list[Event]:
    """Rows of state changes and of progress reports as events in time order."""
    events = [Event.from_history(r) for r in history] + [Event.from_progress(r) for r in progress]
    events.sort(key=lambda e: e.order)
    return events
