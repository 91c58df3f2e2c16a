"""The journal: the suite's record of what happened, kept outside the store.

Every process appends short lines to one file opened with O_APPEND, each line with a single
`os.write` (atomic across processes, so lines never interleave). Times are `time.monotonic()`,
which on Linux is one clock for every process on the machine (libfaketime leaves it alone with
FAKETIME_DONT_FAKE_MONOTONIC=1), so times written by different processes compare.

    enq <job_id> <pid> <t>                 an enqueue returned this job: it is acknowledged
    start <job_id> <attempt> <pid> <t>     a task body began
    end <job_id> <attempt> <pid> <t>       ... and returned
    raise <job_id> <attempt> <pid> <t>     ... and is about to raise on purpose (a retry next)
    err <type> <pid> <t> <message...>      an enqueue raised; `type` is module.Class
    ready <pid> <t>                        an enqueuer process is set up

This module owns the format: the code that writes it (`WRITER`, pasted into the tasks modules
the scenarios write) and the parser (`read_journal`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

#: Source for a tasks module (it sees WORKDIR, see acceptance's Project.write_tasks): the
#: journal file and `journal(*fields)`, one line per call, one os.write per line.
WRITER = '''
import os as _os
import time as _time

JOURNAL = WORKDIR / "journal.log"
_journal_fd = None


def journal(*fields):
    """Append one line to the journal with a single write (atomic with O_APPEND)."""
    global _journal_fd
    if _journal_fd is None:
        _journal_fd = _os.open(JOURNAL, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT, 0o644)
    line = " ".join(str(f).replace("\\n", " ") for f in fields) + "\\n"
    _os.write(_journal_fd, line.encode("utf-8", "backslashreplace"))


def now():
    return repr(_time.monotonic())
'''


@dataclass(frozen=True, slots=True)
class Enq:
    job_id: int
    pid: int
    at: float


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a task body: its start line and, if it got that far, its end line."""

    job_id: int
    attempt: int
    pid: int
    started: float
    ended: float | None = None
    raised: bool = False

    def running_at(self, t: float) -> bool:
        return self.started <= t and (self.ended is None or self.ended > t)


@dataclass(frozen=True, slots=True)
class Err:
    type: str
    pid: int
    at: float
    message: str


@dataclass
class Journal:
    """The journal, parsed: acknowledged jobs, runs per job by attempt (then start time),
    enqueue errors."""

    enqueued: dict[int, Enq] = field(default_factory=dict)
    runs: dict[int, list[Run]] = field(default_factory=lambda: defaultdict(list))
    errors: list[Err] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    acks: int = 0  # enq lines, a job acknowledged twice counted twice
    lines: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))

    def starts(self) -> int:
        return sum(len(r) for r in self.runs.values())

    def ends(self) -> int:
        return sum(1 for runs in self.runs.values() for r in runs if r.ended is not None)

    def run(self, job_id: int, attempt: int, pid: int) -> Run | None:
        """The last run of this attempt in this process: a store that lost a claim in a crash
        (Redis without fsync of every write) hands the job out again under the same attempt,
        maybe to the same process, and the stored outcome is the later run's."""
        for r in reversed(self.runs.get(job_id, [])):
            if (r.attempt, r.pid) == (attempt, pid):
                return r
        return None

    def raised(self, run: Run) -> bool:
        """Whether the run ended by raising on purpose: the run after it is a retry."""
        return run.raised

    def show(self, job_id: int) -> str:
        return "\n".join(f"    {line}" for line in self.lines.get(job_id, [])) or "    (none)"


def parse_journal(text: str) -> Journal:
    journal = Journal()
    open_runs: dict[tuple[int, int, int], int] = {}  # (job, attempt, pid) -> index in runs
    for line in text.splitlines():
        fields = line.split(" ")
        kind = fields[0]
        if kind == "enq":
            job_id, pid, at = int(fields[1]), int(fields[2]), float(fields[3])
            journal.enqueued.setdefault(job_id, Enq(job_id, pid, at))
            journal.acks += 1
            journal.lines[job_id].append(line)
        elif kind == "start":
            job_id, attempt, pid, at = (
                int(fields[1]),
                int(fields[2]),
                int(fields[3]),
                float(fields[4]),
            )
            runs = journal.runs[job_id]
            open_runs[job_id, attempt, pid] = len(runs)
            runs.append(Run(job_id, attempt, pid, at))
            journal.lines[job_id].append(line)
        elif kind in ("end", "raise"):
            job_id, attempt, pid, at = (
                int(fields[1]),
                int(fields[2]),
                int(fields[3]),
                float(fields[4]),
            )
            index = open_runs.pop((job_id, attempt, pid), None)
            if index is not None:
                runs = journal.runs[job_id]
                r = runs[index]
                runs[index] = Run(r.job_id, r.attempt, r.pid, r.started, at, kind == "raise")
            journal.lines[job_id].append(line)
        elif kind == "err":
            journal.errors.append(
                Err(fields[1], int(fields[2]), float(fields[3]), " ".join(fields[4:]))
            )
        elif kind == "ready":
            journal.ready.append(int(fields[1]))
    for runs in journal.runs.values():
        runs.sort(key=lambda r: (r.attempt, r.started))  # a handed-back attempt runs again
    return journal


def read_journal(path: Path) -> Journal:
    return parse_journal(path.read_text(errors="replace") if path.exists() else "")
