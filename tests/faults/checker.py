"""The checker: after a drain, the journal (what the task bodies and enqueuers did) against the
store (what conveyor recorded), and the faults the scenario caused.

`check(...)` is a plain function of the parsed journal, the stored jobs and the faults, so it is
unit-tested on made-up inputs (test_checker.py); `VictimMonitor` measures, from the test
process, how long each fault's victim jobs stayed `running`. What it counts:

- lost: acknowledged (an `enq` line), not succeeded, dead or cancelled, and not running either
  (that is "stuck"), or not in the store at all;
- duplicated: jobs whose body started more than once, except a run after one that raised on
  purpose (a retry). Every earlier run of a duplicated job must have been in flight at a fault
  in one of its victim processes, else the duplicate is "unexcused";
- stuck: jobs still `running`;
- fenced: succeeded jobs whose stored outcome did not come from the stored attempt's finished
  run (tasks return "pid:attempt", so the stored result names the run that wrote it);
- stale starts: a run began after a later attempt of its job had begun (its worker started an
  attempt it had already lost, e.g. one it claimed just before it froze);
- early restarts: attempt k+1 started while run k was still going (its body running, or ended
  less than FLUSH_WINDOW_S before, its outcome on the way) in a process that was not a fault
  victim at the time: a healthy worker's job taken from it;
- misdated: succeeded jobs whose stored start or end is more than DATE_SLACK_S from their
  run's (a start written late, through an outage, must still say when the job began);
- for each fault, how long its victim jobs stayed `running` after it (`Fault.at`).
"""

from __future__ import annotations

import itertools
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .journal import Journal, Run

#: A run whose body had ended this shortly before a fault still counts as in flight at it: its
#: outcome may have been waiting in the worker's write batch (written within milliseconds
#: normally; a second is generous on a loaded 2-core machine).
FLUSH_WINDOW_S = 1.0
#: How far a job's stored start or end may be from its run's, as the journal has them (on the
#: wall clock): the store's clock and the worker's are this machine's; what differs is only
#: when each looked (a claim stamps a start a moment before the body begins).
DATE_SLACK_S = 1.0
#: How many jobs a failure message shows per kind of problem.
SHOW = 8

_RESULT = re.compile(r"(\d+):(\d+)")
_FINISHED = {"succeeded", "dead", "cancelled"}


class JobLike(Protocol):
    """What the checker reads of a stored job (conveyor.Job has it all)."""

    id: int
    attempt: int
    result: Any
    worker_id: str | None
    started_at: float | None
    finished_at: float | None

    @property
    def state(self) -> Any: ...


@dataclass
class Fault:
    """One fault a scenario caused.

    `victims` are the OS pids of the worker processes hit. A process fault (kill, stop, a hung
    connection) hits the runs in flight when it began (`at`); a server-wide one (restart,
    read-only, full disk) any run in flight while it lasted, and its victims' time running is
    counted from its end, since nothing can be rescued while it lasts (`bound_from`;
    `from_end` decides that apart). `jobs` are its victim jobs, id -> the attempt in flight,
    and `left` when the monitor saw each leave `running` under that attempt (monotonic time).
    """

    kind: str
    victims: frozenset[int]
    started: float
    ended: float | None = None
    server_wide: bool = False
    jobs: dict[int, int] = field(default_factory=dict)
    left: dict[int, float] = field(default_factory=dict)
    from_end: bool | None = None

    @property
    def at(self) -> float:
        """Runs in flight in a victim up to this time are hit by the fault."""
        if self.server_wide and self.ended is not None:
            return self.ended
        return self.started

    @property
    def bound_from(self) -> float:
        """The victim jobs' time running counts from here."""
        from_end = self.server_wide if self.from_end is None else self.from_end
        return self.ended if from_end and self.ended is not None else self.started

    def covers(self, run: Run) -> bool:
        """Whether `run` was in flight at this fault in one of its victims."""
        return (
            run.pid in self.victims
            and run.started <= self.at
            and (run.ended is None or run.ended >= self.started - FLUSH_WINDOW_S)
        )

    def stays(self) -> dict[int, float | None]:
        """Seconds each victim job stayed running after `at` (None: it still is)."""
        return {
            job_id: (
                None if job_id not in self.left else max(0.0, self.left[job_id] - self.bound_from)
            )
            for job_id in self.jobs
        }

    def describe(self) -> str:
        span = "" if self.ended is None else f" for {self.ended - self.started:.1f}s"
        return f"{self.kind} of pid {sorted(self.victims)} at t={self.started:.3f}{span}"


@dataclass
class Report:
    """The figures of one scenario and the problems found, readable."""

    figures: dict[str, Any]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, logs: str = "") -> str:
        head = ", ".join(
            f"{k}={v}" for k, v in self.figures.items() if not isinstance(v, dict | list)
        )
        return "\n\n".join([f"fault checker: {head}", *self.problems, logs]).rstrip()


def _state(job: JobLike) -> str:
    return str(getattr(job.state, "value", job.state))


def _excused(run: Run, faults: Sequence[Fault]) -> bool:
    return any(f.covers(run) for f in faults)


def _describe_job(job_id: int, journal: Journal, jobs: Mapping[int, JobLike]) -> str:
    job = jobs.get(job_id)
    stored = (
        "not in the store"
        if job is None
        else f"{_state(job)}, attempt {job.attempt}, worker {job.worker_id}, result {job.result!r}"
    )
    return f"  job {job_id}: {stored}; journal:\n{journal.show(job_id)}"


def _section(title: str, ids: Sequence[int], journal: Journal, jobs: Mapping[int, JobLike]) -> str:
    shown = "\n".join(_describe_job(j, journal, jobs) for j in ids[:SHOW])
    more = f"\n  ... and {len(ids) - SHOW} more" if len(ids) > SHOW else ""
    return f"{title}: {len(ids)} (e.g. {list(ids[:SHOW])})\n{shown}{more}"


def _repeats(journal: Journal, faults: Sequence[Fault]) -> tuple[list[int], list[int], list[int]]:
    """Jobs whose body ran again (not after a raise), those of them whose every earlier run was
    in flight at a fault in its victim, and the early restarts."""
    duplicated, excused, early = [], [], []
    for job_id, runs in sorted(journal.runs.items()):
        repeats = [r for r in runs[:-1] if not journal.raised(r)]
        if not repeats:
            continue
        duplicated.append(job_id)
        if all(_excused(r, faults) for r in repeats):
            excused.append(job_id)
        for prev, nxt in itertools.pairwise(runs):
            # Still running as conveyor sees it: its body going on, or just ended with its
            # outcome on the way.
            going = prev.started <= nxt.started and (
                prev.ended is None or nxt.started < prev.ended + FLUSH_WINDOW_S
            )
            if going and not prev.raised and not _excused(prev, faults):
                early.append(job_id)
                break
    return duplicated, excused, early


def _stale(journal: Journal) -> list[int]:
    """Jobs with a run that began after a later attempt had begun: its worker started an
    attempt it had lost (it froze between its claim and the start, say)."""
    return sorted(
        job_id
        for job_id, runs in journal.runs.items()
        if any(
            later.started < run.started
            for run, later in itertools.pairwise(runs)
            if later.attempt > run.attempt
        )
    )


def _named_run(journal: Journal, job: JobLike) -> tuple[int, Run | None] | None:
    """For a succeeded job, the attempt its stored result ("pid:attempt") names and that run
    (None: not in the journal); None for any other job."""
    match = _RESULT.fullmatch(job.result) if isinstance(job.result, str) else None
    if _state(job) != "succeeded" or match is None:
        return None
    pid, attempt = int(match.group(1)), int(match.group(2))
    return attempt, journal.run(job.id, attempt, pid)


def _fenced(journal: Journal, jobs: Mapping[int, JobLike]) -> list[int]:
    """Succeeded jobs whose stored result is not from the stored attempt's finished run."""
    fenced = []
    for job_id, job in sorted(jobs.items()):
        named = _named_run(journal, job)
        if named is None:
            continue
        attempt, run = named
        if attempt != job.attempt or run is None or run.ended is None:
            fenced.append(job_id)
    return fenced


def _misdated(
    journal: Journal, jobs: Mapping[int, JobLike], wall_offset: float
) -> tuple[list[str], float]:
    """Succeeded jobs whose stored start or end is more than DATE_SLACK_S from their run's
    (the run the stored result names; `wall_offset` takes the journal's monotonic times to
    the wall clock), described, and the largest gap found."""
    misdated: list[str] = []
    worst = 0.0
    for job_id, job in sorted(jobs.items()):
        named = _named_run(journal, job)
        run = None if named is None else named[1]
        if run is None or run.ended is None:
            continue
        pairs = [("start", job.started_at, run.started), ("end", job.finished_at, run.ended)]
        gaps = [
            (stored - (seen + wall_offset), what)
            for what, stored, seen in pairs
            if stored is not None
        ]
        if not gaps:
            continue
        gap, what = max(gaps, key=lambda g: abs(g[0]))
        worst = max(worst, abs(gap))
        if abs(gap) > DATE_SLACK_S:
            misdated.append(f"  job {job_id}: its {what} stored {gap:+.2f}s off its run's")
    return misdated, worst


def _overdue(
    journal: Journal, faults: Sequence[Fault], bound_s: float
) -> tuple[list[float], list[str]]:
    """Every victim's time running after its fault, and per fault a description of the
    victims past the bound (or still running)."""
    stays: list[float] = []
    late: list[str] = []
    for fault in faults:
        overdue = []
        for job_id, stay in sorted(fault.stays().items()):
            if stay is not None:
                stays.append(stay)
            if stay is None or stay > bound_s:
                shown = "still running" if stay is None else f"running {stay:.2f}s after it"
                lines = journal.show(job_id).replace("\n", "\n  ")
                overdue.append(f"    job {job_id} (attempt {fault.jobs[job_id]}): {shown}\n{lines}")
        if overdue:
            known = [s for s in fault.stays().values() if s is not None]
            worst = (
                "some still running"
                if len(known) < len(fault.jobs)
                else (f"the longest {max(known):.2f}s")
            )
            late.append(
                f"  {fault.describe()}: {len(overdue)} of {len(fault.jobs)} victim jobs "
                f"past the bound, {worst}\n" + "\n".join(overdue[:3])
            )
    return stays, late


def check(
    journal: Journal,
    jobs: Mapping[int, JobLike],
    faults: Sequence[Fault],
    bound_s: float,
    *,
    not_due: Iterable[int] = (),
    wall_offset: float | None = None,
) -> Report:
    """Everything the scenario's user would notice, counted; `problems` lists what is wrong.

    `bound_s`: no victim job may stay running longer than this after its fault. `not_due`:
    jobs scheduled past the end of the run on purpose (neither lost nor expected to run).
    `wall_offset`: the wall clock less the monotonic one, to check each job's stored start and
    end against its run's (None: not checked, as when the workers' clocks are faked).
    """
    acknowledged = sorted(set(journal.enqueued) - set(not_due))
    unfinished = _FINISHED | {"running"}
    lost = [j for j in acknowledged if j not in jobs or _state(jobs[j]) not in unfinished]
    stuck = sorted(j for j, job in jobs.items() if _state(job) == "running")
    dead = sorted(j for j, job in jobs.items() if _state(job) == "dead")
    duplicated, excused, early = _repeats(journal, faults)
    unexcused = [j for j in duplicated if j not in excused]
    stale = _stale(journal)
    fenced = _fenced(journal, jobs)
    stays, late = _overdue(journal, faults, bound_s)
    misdated: list[str] = []
    date_gap: float | None = None
    if wall_offset is not None:
        misdated, date_gap = _misdated(journal, jobs, wall_offset)

    figures: dict[str, Any] = {
        "jobs": len(acknowledged),
        "runs": journal.starts(),
        "faults": len(faults),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "duplicated_in_flight": len(excused),
        "stuck": len(stuck),
        "fenced": len(fenced),
        "early_restarts": len(early),
        "stale_starts": len(stale),
        "misdated": len(misdated),
        "date_gap_max_s": None if date_gap is None else round(date_gap, 3),
        "dead": len(dead),
        "victims": sum(len(f.jobs) for f in faults),
        "victim_max_s": round(max(stays), 3) if stays else None,
        "victim_median_s": round(statistics.median(stays), 3) if stays else None,
        "bound_s": round(bound_s, 3),
    }
    sections = [
        ("LOST (acknowledged, never done)", lost),
        ("STUCK (still running at the end)", stuck),
        ("DUPLICATED outside any fault's victims", unexcused),
        ("FENCED (outcome stored from a run that lost its attempt)", fenced),
        ("EARLY RESTARTS (a healthy run taken over)", early),
        (
            "STALE STARTS (a body started after a later attempt of its job had: its worker ran an "
            "attempt it had lost)",
            stale,
        ),
    ]
    problems = [_section(title, ids, journal, jobs) for title, ids in sections if ids]
    if misdated:
        problems.append(
            f"MISDATED (a stored start or end more than {DATE_SLACK_S:.1f}s from its run's): "
            f"{len(misdated)}\n" + "\n".join(misdated[:SHOW])
        )
    if late:
        problems.append(
            f"VICTIMS RUNNING PAST THE BOUND of {bound_s:.2f}s after their fault:\n"
            + "\n".join(late)
        )
    return Report(figures, problems)


def stored_jobs(app: Any, page: int = 1000) -> dict[int, Any]:
    """Every job in the store, by id (paged with list_jobs, newest first)."""
    jobs: dict[int, Any] = {}
    before: int | None = None
    while True:
        batch = app.list_jobs(limit=page, before_id=before)
        for job in batch:
            jobs[job.id] = job
        if len(batch) < page:
            return jobs
        before = batch[-1].id


#: Running jobs: id -> (attempt, the pid of the worker running it).
Running = Mapping[int, tuple[int, int | None]]


class VictimMonitor:
    """Polls the store from the test process (every `interval` seconds, through `read`) and
    records, on this process's monotonic clock, when each watched fault's victim jobs leave
    `running` under the attempt they had at the fault. Each poll reads only the victims still
    running, and none while there are none: a poll costs the store little, and the time it
    takes (counted against the victims) stays short. A poll that fails (the server is away)
    is skipped."""

    def __init__(self, read: Callable[[set[int]], Running], interval: float = 0.05) -> None:
        #: which of the jobs with these ids run now: id -> (attempt, its worker's pid)
        self.read = read
        self.interval = interval
        self.faults: list[Fault] = []
        self.polls = 0
        self.failed_polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="victim-monitor", daemon=True)
        self._thread.start()

    def watch(self, fault: Fault) -> None:
        with self._lock:
            if fault not in self.faults:
                self.faults.append(fault)

    def running(self, ids: set[int]) -> Running | None:
        """Which of these jobs run now; None when the store cannot be read."""
        try:
            return self.read(ids)
        except Exception:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                waiting = {j for f in self.faults for j in f.jobs if j not in f.left}
            running = self.running(waiting) if waiting else {}
            now = time.monotonic()
            self.polls += 1
            if running is None:
                self.failed_polls += 1
            else:
                with self._lock:
                    for fault in self.faults:
                        for job_id, attempt in fault.jobs.items():
                            # Gone from the victim: over, retried, or handed back uncounted
                            # (claimed ahead, never begun) and claimed again elsewhere.
                            now_at = running.get(job_id)
                            if job_id not in fault.left and (
                                now_at is None
                                or now_at[0] != attempt
                                or now_at[1] not in fault.victims
                            ):
                                fault.left[job_id] = now
            self._stop.wait(self.interval)

    def pending(self) -> int:
        with self._lock:
            return sum(len(set(f.jobs) - set(f.left)) for f in self.faults)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def pid_of(worker_id: str | None) -> int | None:
    """A worker id is host:pid:hex."""
    if not worker_id:
        return None
    try:
        return int(worker_id.rsplit(":", 2)[-2])
    except (IndexError, ValueError):
        return None


def assert_report(report: Report, logs: Callable[[], str]) -> None:
    """Fail with the problems, the figures and the workers' log tails."""
    if not report.ok:
        raise AssertionError(report.message(logs()))
