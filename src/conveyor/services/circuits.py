"""Circuits at work: each worker reports what its jobs behind a circuit tell about the
downstream, and the elected leader probes open circuits on their schedules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.backends.faces import Backend
from conveyor.circuit import Action, Circuit, CircuitEvent, CircuitState
from conveyor.errors import BackendUnavailable
from conveyor.job import JobState, Outcome
from conveyor.logging import get_logger
from conveyor.services.base import Service

if TYPE_CHECKING:
    from conveyor.app import App

log = get_logger("conveyor.circuits")


def announce(app: App, change: CircuitEvent) -> None:
    """Log a circuit's change (and, where notifiers are set, alert a human)."""
    fields = {"circuit": change.name, "reason": change.reason, "held": change.held}
    if change.event == "opened":
        log.warning("circuit.opened", **fields)
    elif change.event == "closed":
        log.info("circuit.closed", open_for_s=change.open_for, **fields)
    else:
        log.info("circuit.half_open", **fields)
    app.alerts.circuit_changed(change)


async def report(app: App, backend: Backend, circuit: Circuit, outcome: Outcome) -> bool:
    """What one run of a job behind `circuit` says: its downstream failed (the attempt was
    refunded) or it succeeded. Anything else says nothing about the downstream. True when
    this report opened the circuit."""
    if outcome.refund and outcome.state is JobState.RETRYING:
        action = Action.FAILURE
        error = outcome.error or {}
        reason = f"{error.get('type', 'error')}: {error.get('message', '')}".strip()
    elif outcome.state is JobState.SUCCEEDED:
        action, reason = Action.SUCCESS, None
    else:
        return False
    try:
        change = await backend.change_circuit(
            circuit.name,
            action,
            app.clock.now(),
            threshold=circuit.failure_threshold,
            reason=reason,
        )
    except BackendUnavailable as exc:
        # The next failure or success reports again; the job's own outcome is not at stake.
        log.warning("circuit.report_failed", circuit=circuit.name, error=str(exc))
        return False
    except Exception as exc:  # a fault of conveyor's own: logged, and the worker goes on
        log.error("circuit.report_failed", circuit=circuit.name, error=str(exc), exc_info=exc)
        return False
    if change is None:
        return False
    announce(app, change)
    return change.event == "opened"


class CircuitProber(Service):
    """On the leader: probe each open circuit when its schedule says; an answer half-opens
    it (a few held jobs run, and the first to succeed closes it)."""

    name = "prober"

    def __init__(self, app: App, backend: Backend, interval: float) -> None:
        super().__init__(interval)
        self.app = app
        self.backend = backend

    async def run_once(self) -> None:
        if not self.app.circuits:
            return
        for info in await self.backend.circuits():
            circuit = self.app.circuits.get(info.name)
            if circuit is None or info.state is not CircuitState.OPEN:
                continue
            now = self.app.clock.now()
            opened = info.opened_at if info.opened_at is not None else now
            last = info.probed_at if info.probed_at is not None else opened
            # the step of the schedule the last probe (or the opening) fell in sets the wait
            if now - last < circuit.probe_every(last - opened):
                continue
            why_not = await circuit.run_probe()
            if why_not is not None:
                log.info("circuit.probe_failed", circuit=circuit.name, error=why_not)
                await self.backend.record_probe(circuit.name, now)
                continue
            change = await self.backend.change_circuit(
                circuit.name,
                Action.ANSWERED,
                now,
                reason="the probe got an answer",
                half_open_jobs=circuit.half_open_jobs,
            )
            if change is not None:
                announce(self.app, change)
