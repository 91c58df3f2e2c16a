"""The Redis backend's flow control (pauses, limits, circuits), events and progress, cron,
alerts and sessions.

The keys these operations keep are named at the top of `lua/lib_flow.lua`. The event stream
is two Redis streams, `P:events` (every state change, written by `record` in `lua/lib.lua`)
and `P:progress` (progress reports); a cursor is a position in both, `<events id>,<progress
id>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from conveyor.backends.plan import Call
from conveyor.backends.redis.core import RedisCore
from conveyor.backends.redis.rows import text_arg
from conveyor.backends.redis.scripts import Cmd, RedisPlan, Script
from conveyor.circuit import Action, CircuitEvent, CircuitInfo, CircuitRow, CircuitState, transition
from conveyor.cron import TickRecord
from conveyor.errors import BackendUnavailable, ValidationError
from conveyor.events import Cursor, Event, merge
from conveyor.job import Job, NewJob

#: A cursor: the last id seen in `P:events`, then in `P:progress`.
_CURSOR = re.compile(r"(\d{1,20})-(\d{1,20}),(\d{1,20})-(\d{1,20})")
#: How many entries a filtered read of the event streams asks for at a time.
_EVENT_BATCH = 1000
#: How many times a circuit's change is decided again when others changed it meanwhile.
_CIRCUIT_TRIES = 50
#: A circuit's stored fields, as `FLOW_CIRCUIT_FIELDS` (lua/lib_flow.lua) orders them.
_CIRCUIT_FIELDS = ("state", "failures", "half_open_jobs", "opened_at", "reason", "probed_at")

StreamId = tuple[int, int]


def _positions(cursor: Cursor) -> tuple[StreamId, StreamId] | None:
    found = _CURSOR.fullmatch(str(cursor))
    if found is None:
        return None
    a, b, c, d = (int(g) for g in found.groups())
    return (a, b), (c, d)


def _stream_id(text: str) -> StreamId:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def _id_text(position: StreamId) -> str:
    return f"{position[0]}-{position[1]}"


def _cursor(events: StreamId, progress: StreamId) -> Cursor:
    return Cursor(f"{_id_text(events)},{_id_text(progress)}")


def _none(value: str | None) -> str | None:
    """A stream field written as '' for "none"."""
    return value or None


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _circuit_row(values: Sequence[str | None]) -> CircuitRow:
    """A circuit from its fields, in `_CIRCUIT_FIELDS` order."""
    state, failures, half_open_jobs, opened_at, reason, probed_at = values
    return CircuitRow(
        CircuitState(state or CircuitState.CLOSED),
        int(failures or 0),
        _float(opened_at),
        reason,
        _float(probed_at),
        int(half_open_jobs or 1),
    )


def _circuit_fields(row: CircuitRow) -> str:
    """A circuit's fields as `flow_circuit.lua` writes them (null: removed)."""
    fields = {
        "state": row.state.value,
        "failures": str(row.failures),
        "half_open_jobs": str(row.half_open_jobs),
        "opened_at": None if row.opened_at is None else repr(row.opened_at),
        "reason": row.reason,
        "probed_at": None if row.probed_at is None else repr(row.probed_at),
    }
    return json.dumps(fields)


def _circuit_event(entry: str) -> CircuitEvent:
    """A change as the circuit log keeps it."""
    found = json.loads(entry)
    return CircuitEvent(
        found["name"],
        float(found["at"]),
        found["event"],
        found["reason"],
        int(found["held"]),
        _float(found["open_for"]),
    )


class FlowOperations(RedisCore):
    """Pauses, limits, circuits, events, cron, alerts and sessions."""

    # -- progress and events ----------------------------------------------------------------

    def set_progress(
        self,
        job_id: int,
        worker_id: str,
        attempt: int,
        progress: float,
        stage: str | None,
        message: str | None,
        now: float,
    ) -> Call[bool]:
        args = (
            job_id,
            worker_id,
            attempt,
            repr(float(progress)),
            "0" if stage is None else "1",
            text_arg(stage),
            "0" if message is None else "1",
            text_arg(message),
        )
        return Call(self._applied(Script("flow_progress", args, now=now)))

    def _applied(self, step: Script) -> RedisPlan[bool]:
        return bool((yield step))

    def event_cursor(self, start: Cursor | None) -> Call[Cursor]:
        return Call(self._event_cursor_plan(start))

    def _event_cursor_plan(self, start: Cursor | None) -> RedisPlan[Cursor]:
        events, progress = yield Script("flow_cursor")
        end = (_stream_id(events), _stream_id(progress))
        at = None if start is None else _positions(start)
        # a position past the end (made up, or of another store) would never see an event
        if at is None or at[0] > end[0] or at[1] > end[1]:
            return _cursor(*end)
        return _cursor(*at)

    def read_events(
        self, after: Cursor, job_id: int | None, queue: str | None, limit: int, progress: bool
    ) -> Call[tuple[list[Event], Cursor]]:
        at = _positions(after)
        if at is None:
            raise ValidationError(f"{str(after)!r} is not a position in this event stream")
        return Call(self._read_events_plan(at, job_id, queue, limit, progress))

    def _read_events_plan(
        self,
        at: tuple[StreamId, StreamId],
        job_id: int | None,
        queue: str | None,
        limit: int,
        progress: bool,
    ) -> RedisPlan[tuple[list[Event], Cursor]]:
        states, events_at = yield from self._read_stream("events", at[0], job_id, queue, limit)
        reports: list[dict[str, Any]] = []
        progress_at = at[1]
        if progress:
            reports, progress_at = yield from self._read_stream(
                "progress", at[1], job_id, queue, limit
            )
        history = [_history_row(fields) for fields in states]
        if history:
            # the job's times now, for the wait and run time of an attempt that finished
            ids = sorted({row["job_id"] for row in history})
            found = yield [
                Cmd(("HMGET", self.key("job", i), "run_at", "started_at", "finished_at"))
                for i in ids
            ]
            times = dict(zip(ids, found, strict=True))
            for row in history:
                row["run_at"], row["started_at"], row["finished_at"] = (
                    _float(t) for t in times[row["job_id"]]
                )
        rows = [_progress_row(fields) for fields in reports]
        return merge(history, rows), _cursor(events_at, progress_at)

    def _read_stream(
        self, name: str, after: StreamId, job_id: int | None, queue: str | None, limit: int
    ) -> RedisPlan[tuple[list[dict[str, Any]], StreamId]]:
        """Up to `limit` entries of the stream after `after` that match the filter, and the
        position after them. Read in batches: with a filter, until `limit` matched or the end."""
        stream = self.key(name)
        filtered = job_id is not None or queue is not None
        batch = _EVENT_BATCH if filtered else limit
        job = None if job_id is None else str(job_id)
        matched: list[dict[str, Any]] = []
        position = after
        while len(matched) < limit:
            start = f"({_id_text(position)}"
            entries = yield Cmd(("XRANGE", stream, start, "+", "COUNT", batch))
            for entry_id, fields in entries:
                position = _stream_id(entry_id)
                if (job is None or fields.get("j") == job) and (
                    queue is None or fields.get("q") == queue
                ):
                    matched.append(fields)
                    if len(matched) == limit:
                        break
            if len(entries) < batch:
                break
        return matched, position

    def prune_progress(self, older_than: float, now: float) -> Call[int]:
        return Call(self._count(Script("flow_prune_progress", (repr(older_than),), now=now)))

    def _count(self, step: Script) -> RedisPlan[int]:
        return int((yield step))

    # -- pauses, limits, sessions, alerts ---------------------------------------------------

    def set_queue_paused(self, queue: str, paused: bool, now: float) -> Call[bool]:
        args = (queue, "1" if paused else "0")
        return Call(self._applied(Script("flow_pause", args, now=now)))

    def paused_queues(self) -> Call[list[str]]:
        return Call(self._sorted(Cmd(("SMEMBERS", self.key("paused")))))

    def _sorted(self, step: Cmd) -> RedisPlan[list[str]]:
        return sorted((yield step))

    def revoke_session(self, nonce: str, until: float, now: float) -> Call[None]:
        return Call(self._none(Script("flow_revoke", (nonce, repr(until)), now=now)))

    def _none(self, step: Script) -> RedisPlan[None]:
        yield step

    def session_revoked(self, nonce: str) -> Call[bool]:
        return Call(self._exists(Cmd(("ZSCORE", self.key("revoked"), nonce))))

    def _exists(self, step: Cmd) -> RedisPlan[bool]:
        return (yield step) is not None

    def set_queue_concurrency(self, queue: str, concurrency: int | None) -> Call[None]:
        return Call(self._none(Script("flow_qlimit", (queue, text_arg(concurrency)))))

    def queue_limits(self) -> Call[dict[str, int]]:
        return Call(self._queue_limits_plan())

    def _queue_limits_plan(self) -> RedisPlan[dict[str, int]]:
        found = yield Cmd(("HGETALL", self.key("qlimit")))
        return {name: int(found[name]) for name in sorted(found)}

    def claim_alert(self, key: str, every: float, now: float) -> Call[bool]:
        return Call(self._applied(Script("flow_alert", (key, repr(every)), now=now)))

    # -- circuits ---------------------------------------------------------------------------

    def change_circuit(
        self,
        name: str,
        action: Action,
        now: float,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
    ) -> Call[CircuitEvent | None]:
        plan = self._change_circuit_plan(name, action, now, threshold, reason, half_open_jobs)
        return Call(plan)

    def _change_circuit_plan(
        self,
        name: str,
        action: Action,
        now: float,
        threshold: int,
        reason: str | None,
        half_open_jobs: int,
    ) -> RedisPlan[CircuitEvent | None]:
        """Read the circuit, let `transition` decide, and write the decision only if nobody
        changed the circuit meanwhile (its version); else decide again on the circuit as the
        refused write found it."""
        read = Cmd(("HMGET", self.key("circuit", name), *_CIRCUIT_FIELDS, "v"))
        if self.server_time:
            # the change is dated by the store's clock, as every other write is
            found, (seconds, micros) = yield [read, Cmd(("TIME",))]
            at = seconds + micros / 1_000_000
        else:
            found, at = (yield read), now
        for _ in range(_CIRCUIT_TRIES):
            values, version = found[:-1], found[-1]
            if values[0] is None:
                if action is not Action.FAILURE:
                    return None  # no circuit: closed, and nothing failed yet
                before = CircuitRow()
            else:
                before = _circuit_row(values)
                # most successes meet a closed circuit: nothing to change, no write
                closed = before.state is CircuitState.CLOSED and not before.failures
                if action is not Action.FAILURE and closed:
                    return None
            after, event = transition(
                before,
                action,
                at,
                threshold=threshold,
                reason=reason,
                half_open_jobs=half_open_jobs,
            )
            if after == before:
                return None
            change = None
            if event is not None:
                # its held jobs are counted by the write
                change = CircuitEvent.after(name, before, after, event, at, 0)
            logged = "" if change is None else _log_entry(change)
            args = (name, version or "", _circuit_fields(after), logged)
            written = yield Script("flow_circuit", args, now=now)
            if int(written[0]) == 1:
                return None if change is None else replace(change, held=int(written[1]))
            if self.server_time:
                at = float(written[1])
            found = written[2:]
        raise BackendUnavailable(
            f"circuit {name!r} is changed by too many at once; its change was not recorded"
        )

    def record_probe(self, name: str, now: float) -> Call[None]:
        return Call(self._none(Script("flow_probe", (name,), now=now)))

    def circuits(self) -> Call[list[CircuitInfo]]:
        return Call(self._circuits_plan())

    def _circuits_plan(self) -> RedisPlan[list[CircuitInfo]]:
        rows = yield Script("flow_circuits")
        infos = []
        for name, *values, held in rows:
            row = _circuit_row(values)
            infos.append(
                CircuitInfo(
                    name,
                    row.state,
                    row.failures,
                    row.opened_at,
                    row.reason,
                    row.probed_at,
                    int(held),
                )
            )
        return infos

    def circuit_log(self, name: str | None, limit: int) -> Call[list[CircuitEvent]]:
        log = self.key("clog") if name is None else self.key("clog", name)
        return Call(self._circuit_log_plan(log, limit))

    def _circuit_log_plan(self, log: str, limit: int) -> RedisPlan[list[CircuitEvent]]:
        if limit <= 0:
            return []
        entries = yield Cmd(("LRANGE", log, 0, limit - 1))
        return [_circuit_event(e) for e in entries]

    # -- cron -------------------------------------------------------------------------------

    def fire_periodic(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None
    ) -> Call[Job | None]:
        return Call(self._fire_periodic_plan(name, tick, job, now, leader))

    def _fire_periodic_plan(
        self, name: str, tick: float, job: NewJob | None, now: float, leader: str | None
    ) -> RedisPlan[Job | None]:
        jobs = [] if job is None else [job]
        args = yield from self._enqueue_args(jobs)
        step = Script("fire", (name, repr(tick), text_arg(leader), *args), now=now)
        reply = yield from self._refusing_missing(step)
        if not reply or job is None:
            return None
        [stored] = self._stored(jobs, reply)
        return stored

    def periodic_ticks(self) -> Call[dict[str, TickRecord]]:
        return Call(self._periodic_ticks_plan())

    def _periodic_ticks_plan(self) -> RedisPlan[dict[str, TickRecord]]:
        names = sorted((yield Cmd(("SMEMBERS", self.key("cron")))))
        if not names:
            return {}
        found = yield [
            Cmd(("ZRANGE", self.key(kind, n), -1, -1, "WITHSCORES"))
            for n in names
            for kind in ("ticks", "fired")
        ]
        latest = {n: found[2 * i] for i, n in enumerate(names)}
        fired = {n: found[2 * i + 1] for i, n in enumerate(names)}
        with_jobs = [n for n in names if fired[n]]
        states = yield [Cmd(("HGET", self.key("job", fired[n][0]), "state")) for n in with_jobs]
        state_of = dict(zip(with_jobs, states, strict=True))
        records = {}
        for n in names:
            if not latest[n]:
                continue
            job = fired[n]
            row = {
                "name": n,
                "tick": float(latest[n][1]),
                "fired_tick": float(job[1]) if job else None,
                "job_id": int(job[0]) if job else None,
                "job_state": state_of.get(n),
            }
            records[n] = TickRecord.from_row(row)
        return records

    def prune_ticks(self, older_than: float, now: float) -> Call[int]:
        return Call(self._count(Script("flow_prune_ticks", (repr(older_than),), now=now)))


def _log_entry(change: CircuitEvent) -> str:
    """A change as `flow_circuit.lua` logs it (it adds the count of held jobs)."""
    return json.dumps(
        {
            "name": change.name,
            "at": repr(change.at),
            "event": change.event,
            "reason": change.reason,
            "open_for": None if change.open_for is None else repr(change.open_for),
        }
    )


def _history_row(fields: dict[str, str]) -> dict[str, Any]:
    """A state change as `Event.from_history` reads it (the job's times are added later)."""
    return {
        "job_id": int(fields["j"]),
        "at": float(fields["at"]),
        "from_state": _none(fields.get("f")),
        "to_state": fields["t"],
        "note": _none(fields.get("n")),
        "worker_id": _none(fields.get("w")),
        "queue": _none(fields.get("q")),
        "task": _none(fields.get("k")),
    }


def _progress_row(fields: dict[str, str]) -> dict[str, Any]:
    """A progress report as `Event.from_progress` reads it."""
    return {
        "job_id": int(fields["j"]),
        "at": float(fields["at"]),
        "progress": float(fields["p"]),
        "stage": fields.get("s"),
        "message": fields.get("m"),
        "worker_id": _none(fields.get("w")),
        "queue": _none(fields.get("q")),
        "task": _none(fields.get("k")),
    }
