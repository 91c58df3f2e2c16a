"""`conveyor worker -p N`: a small supervisor that keeps N worker processes running.

Each child is a plain `conveyor worker ... -p 1` in a process group of its own, so a Ctrl-C in
the terminal reaches the children once, through the supervisor, and not a second time directly
(which would make them hand their jobs back at once). The supervisor forwards every SIGTERM and
SIGINT it gets; it restarts a child that dies unexpectedly, after a backoff that grows while the
child keeps dying young; it replaces at once a child that ran its `--max-jobs` and exited; and
it exits once every child has exited.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from conveyor.logging import get_logger

log = get_logger("conveyor.supervisor")

POLL_S = 0.05
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: A child that lived this long before dying is restarted with the shortest backoff again.
STABLE_AFTER_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Child:
    slot: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0
    restart_at: float | None = None
    exit_code: int | None = None

    @property
    def done(self) -> bool:
        return self.proc is None and self.restart_at is None


class Supervisor:
    """Run `command` `processes` times over; `run()` returns the exit status for the shell."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        replace_finished: bool = False,
        name: str | None = None,
    ) -> None:
        self.command = list(command)
        #: the workers' name: the child in slot i (from 0) is `NAME-<i+1>`
        self.name = name
        #: a child that exits cleanly unasked ran its `--max-jobs`: a fresh one takes its place
        self.replace_finished = replace_finished
        self.children = [Child(slot) for slot in range(processes)]
        self.signals_received = 0

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        log.info("supervisor.started", processes=len(self.children))
        try:
            for child in self.children:
                self._spawn(child)
            while not all(c.done for c in self.children):
                now = time.monotonic()
                for child in self.children:
                    if child.proc is not None:
                        code = child.proc.poll()
                        if code is not None:
                            self._exited(child, code, now)
                    elif child.restart_at is not None and now >= child.restart_at:
                        self._spawn(child)
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        clean = all(c.exit_code in (0, None) for c in self.children)
        log.info("supervisor.stopped", exit_codes=[c.exit_code for c in self.children])
        return 0 if clean else 1

    @property
    def stopping(self) -> bool:
        return self.signals_received > 0

    def _spawn(self, child: Child) -> None:
        child.restart_at = None
        named = [] if self.name is None else ["--name", f"{self.name}-{child.slot + 1}"]
        child.proc = subprocess.Popen([*self.command, *named], process_group=0)
        child.started = time.monotonic()
        log.info("supervisor.child_started", slot=child.slot, pid=child.proc.pid)
        if self.stopping:  # a signal arrived while this child was being started
            child.proc.send_signal(signal.SIGTERM)

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid, child.proc = child.proc.pid, None
        # A child stopped by the signal we forwarded, before it could install its own handler,
        # stopped as asked.
        stopped_by_us = self.stopping and code in (-signal.SIGTERM, -signal.SIGINT)
        child.exit_code = 0 if stopped_by_us else code
        if self.stopping or (code == 0 and not self.replace_finished):
            log.info("supervisor.child_exited", slot=child.slot, pid=pid, exit_code=code)
            return
        if code == 0:
            log.info("supervisor.child_replaced", slot=child.slot, pid=pid, reason="max jobs")
            child.deaths = 0
            child.restart_at = now
            return
        if now - child.started >= STABLE_AFTER_S:
            child.deaths = 0
        delay = RESTART_BACKOFF_S[min(child.deaths, len(RESTART_BACKOFF_S) - 1)]
        child.deaths += 1
        child.restart_at = now + delay
        log.warning(
            "supervisor.child_died", slot=child.slot, pid=pid, exit_code=code, restart_in_s=delay
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received += 1
        name = signal.Signals(signum).name
        if self.signals_received == 1:
            log.info("supervisor.stopping", signal=name)
        else:
            log.warning("supervisor.hand_back_now", signal=name)
        for child in self.children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)
