"""Unit tests of the fault checker and the journal parser, on made-up journals and stores: what
counts as lost, stuck, duplicated (and excused), fenced, an early restart, and a victim kept
running past its bound. No processes, no store."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .checker import Fault, VictimMonitor, check
from .journal import parse_journal

BOUND_S = 4.0


@dataclass
class FakeJob:
    id: int
    state: str
    attempt: int = 1
    result: Any = None
    worker_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


def ok(job_id: int, pid: int, attempt: int = 1) -> FakeJob:
    return FakeJob(job_id, "succeeded", attempt, f"{pid}:{attempt}", f"host:{pid}:abc")


def journal(*lines: str) -> Any:
    return parse_journal("\n".join(lines) + "\n")


def test_a_clean_run_has_no_problems() -> None:
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.0",
            "end 1 1 10 1.1",
            "enq 2 9 0.2",
            "start 2 1 11 1.0",
            "end 2 1 11 1.2",
        ),
        {1: ok(1, 10), 2: ok(2, 11)},
        [],
        BOUND_S,
    )
    assert report.ok, report.problems
    assert report.figures["jobs"] == 2
    assert report.figures["runs"] == 2
    for key in ("lost", "duplicated", "stuck", "fenced", "early_restarts"):
        assert report.figures[key] == 0


def test_lost_and_stuck_jobs() -> None:
    report = check(
        journal("enq 1 9 0.1", "enq 2 9 0.1", "enq 3 9 0.1", "enq 4 9 0.1", "start 3 1 10 1.0"),
        {1: FakeJob(1, "queued", 0), 3: FakeJob(3, "running"), 4: FakeJob(4, "dead")},
        [],
        BOUND_S,
    )
    assert report.figures["lost"] == 2  # 1 never ran, 2 is not in the store at all
    assert report.figures["stuck"] == 1
    assert report.figures["dead"] == 1  # dead is an ending, not a loss
    text = report.message()
    assert "LOST" in text and "job 2: not in the store" in text and "STUCK" in text


def test_not_due_jobs_are_not_lost() -> None:
    report = check(
        journal("enq 1 9 0.1"), {1: FakeJob(1, "scheduled", 0)}, [], BOUND_S, not_due=[1]
    )
    assert report.ok, report.problems


def test_a_duplicate_in_flight_at_a_kill_is_excused() -> None:
    kill = Fault("kill -9", frozenset({10}), started=2.0, jobs={1: 1}, left={1: 4.5})
    report = check(
        journal("enq 1 9 0.1", "start 1 1 10 1.5", "start 1 2 11 4.6", "end 1 2 11 4.7"),
        {1: ok(1, 11, attempt=2)},
        [kill],
        BOUND_S,
    )
    assert report.ok, report.problems
    assert report.figures["duplicated"] == report.figures["duplicated_in_flight"] == 1
    assert report.figures["victim_max_s"] == 2.5


def test_a_run_that_ended_just_before_the_kill_is_still_in_flight() -> None:
    # Its outcome may have been waiting in the worker's write batch.
    kill = Fault("kill -9", frozenset({10}), started=2.0)
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.5",
            "end 1 1 10 1.9",
            "start 1 2 11 4.6",
            "end 1 2 11 4.7",
        ),
        {1: ok(1, 11, attempt=2)},
        [kill],
        BOUND_S,
    )
    assert report.ok, report.problems


def test_a_duplicate_outside_the_victims_is_a_problem() -> None:
    kill = Fault("kill -9", frozenset({12}), started=2.0)
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.5",
            "end 1 1 10 1.6",
            "start 1 2 11 9.0",
            "end 1 2 11 9.1",
        ),
        {1: ok(1, 11, attempt=2)},
        [kill],
        BOUND_S,
    )
    assert report.figures["duplicated"] == 1
    assert report.figures["duplicated_in_flight"] == 0
    assert report.figures["early_restarts"] == 0  # run 1 had long ended
    assert "DUPLICATED outside" in report.message()


def test_a_job_claimed_after_a_process_fault_began_is_not_excused() -> None:
    hang = Fault("hung backends", frozenset({10}), started=2.0, ended=22.0)
    report = check(
        journal("enq 1 9 0.1", "start 1 1 10 5.0", "start 1 2 11 8.0", "end 1 2 11 8.1"),
        {1: ok(1, 11, attempt=2)},
        [hang],
        BOUND_S,
    )
    assert report.figures["duplicated_in_flight"] == 0
    assert not report.ok


def test_a_server_wide_fault_excuses_runs_until_it_ends() -> None:
    restart = Fault("restart", frozenset({10, 11}), started=2.0, ended=3.0, server_wide=True)
    report = check(
        journal("enq 1 9 0.1", "start 1 1 10 2.5", "start 1 2 11 6.0", "end 1 2 11 6.1"),
        {1: ok(1, 11, attempt=2)},
        [restart],
        BOUND_S,
    )
    assert report.ok, report.problems


def test_a_retry_after_a_raise_is_no_duplicate() -> None:
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.0",
            "raise 1 1 10 1.1",
            "start 1 2 10 1.3",
            "end 1 2 10 1.4",
        ),
        {1: ok(1, 10, attempt=2)},
        [],
        BOUND_S,
    )
    assert report.ok, report.problems
    assert report.figures["duplicated"] == 0


def test_an_early_restart_of_a_healthy_run() -> None:
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.0",
            "start 1 2 11 1.5",
            "end 1 1 10 3.0",
            "end 1 2 11 1.6",
        ),
        {1: ok(1, 11, attempt=2)},
        [],
        BOUND_S,
    )
    assert report.figures["early_restarts"] == 1
    assert "EARLY RESTARTS" in report.message()


def test_a_stale_start_after_a_freeze() -> None:
    # Claimed by pid 10 just before it froze; rescued and run by 11; 10 wakes and starts it.
    stop = Fault("SIGSTOP", frozenset({10}), started=2.0, ended=9.0)
    report = check(
        journal("enq 1 9 0.1", "start 1 2 11 5.0", "end 1 2 11 5.1", "start 1 1 10 9.1"),
        {1: ok(1, 11, attempt=2)},
        [stop],
        BOUND_S,
    )
    assert report.figures["stale_starts"] == 1
    assert report.figures["early_restarts"] == 0  # 11's run was not taken over
    assert "STALE STARTS" in report.message()


def test_fenced_outcomes() -> None:
    report = check(
        journal(
            "enq 1 9 0.1",
            "start 1 1 10 1.0",
            "start 1 2 11 4.0",
            "end 1 2 11 4.1",
            "end 1 1 10 6.0",  # the stale run ends after it lost its attempt
            "enq 2 9 0.1",
            "start 2 1 10 1.0",
            "start 2 2 11 4.0",  # 2's stored run never ended
        ),
        {
            1: FakeJob(1, "succeeded", 2, "10:1"),  # stored from the stale attempt
            2: FakeJob(2, "succeeded", 2, "11:2"),
        },
        [Fault("SIGSTOP", frozenset({10}), started=1.5)],
        BOUND_S,
    )
    assert report.figures["fenced"] == 2
    assert "FENCED" in report.message()


def test_a_start_or_end_stored_off_its_run_is_misdated() -> None:
    # The journal's times are monotonic; the store's are on the wall clock, 1000 s ahead here.
    lines = [f"enq {j} 9 0.1" for j in (1, 2, 3, 4)] + [
        *("start 1 1 10 1.0", "end 1 1 10 2.0"),
        *("start 2 1 10 1.0", "end 2 1 10 2.0"),
        *("start 3 1 10 1.0", "end 3 1 10 2.0"),
        # its claim lost in a crash: handed out again, same attempt, same process
        *("start 4 1 10 1.0", "end 4 1 10 2.0", "start 4 1 10 5.0", "end 4 1 10 6.0"),
    ]
    jobs = {
        1: FakeJob(1, "succeeded", 1, "10:1", started_at=1000.9, finished_at=1002.1),
        2: FakeJob(2, "succeeded", 1, "10:1", started_at=1002.6, finished_at=1002.7),
        3: FakeJob(3, "succeeded", 1, "10:1", started_at=1001.0, finished_at=1000.5),
        4: FakeJob(4, "succeeded", 1, "10:1", started_at=1005.0, finished_at=1006.0),
    }
    report = check(journal(*lines), jobs, [], BOUND_S, wall_offset=1000.0)
    assert report.figures["misdated"] == 2
    assert report.figures["date_gap_max_s"] == 1.6
    message = report.message()
    assert "job 2: its start stored +1.60s off its run's" in message
    assert "job 3: its end stored -1.50s off its run's" in message
    assert "job 1: its" not in message and "job 4: its" not in message
    # Without the offset (the workers' clocks faked), dates are not checked.
    unchecked = check(journal(*lines), jobs, [], BOUND_S)
    assert unchecked.figures["misdated"] == 0 and "MISDATED" not in unchecked.message()


def test_victims_past_the_bound() -> None:
    kill = Fault(
        "kill -9", frozenset({10}), started=2.0, jobs={1: 1, 2: 1, 3: 1}, left={1: 3.0, 2: 8.0}
    )
    report = check(
        journal("enq 1 9 0.1", "enq 2 9 0.1", "enq 3 9 0.1"),
        {1: ok(1, 11, 2), 2: ok(2, 11, 2), 3: FakeJob(3, "running")},
        [kill],
        BOUND_S,
    )
    assert report.figures["victims"] == 3
    assert report.figures["victim_max_s"] == 6.0
    text = report.message()
    assert "VICTIMS RUNNING PAST THE BOUND" in text
    assert "job 2 (attempt 1): running 6.00s" in text
    assert "job 3 (attempt 1): still running" in text


def test_a_server_wide_fault_counts_from_its_end() -> None:
    outage = Fault(
        "read-only",
        frozenset({10}),
        started=2.0,
        ended=6.0,
        server_wide=True,
        jobs={1: 1, 2: 1},
        left={1: 3.0, 2: 9.0},
    )
    assert outage.stays() == {1: 0.0, 2: 3.0}


def test_a_process_fault_may_count_its_bound_from_its_end() -> None:
    # Rows held locked by a stopped server process: nobody can rescue them before it runs.
    locked = Fault(
        "rows locked",
        frozenset({10}),
        started=2.0,
        ended=22.0,
        jobs={1: 1},
        left={1: 23.0},
        from_end=True,
    )
    assert locked.stays() == {1: 1.0}
    assert locked.at == 2.0  # but only runs in flight when it began are hit


def test_parse_journal() -> None:
    parsed = journal(
        "ready 7 0.0",
        "enq 1 7 0.5",
        "enq 1 7 0.6",
        "start 1 1 10 1.0",
        "end 1 1 10 1.5",
        "err conveyor.errors.BackendUnavailable 7 2.0 PostgreSQL: server closed the connection",
    )
    assert parsed.ready == [7]
    assert parsed.acks == 2 and list(parsed.enqueued) == [1]
    [run] = parsed.runs[1]
    assert (run.attempt, run.pid, run.started, run.ended, run.raised) == (1, 10, 1.0, 1.5, False)
    [err] = parsed.errors
    assert err.type == "conveyor.errors.BackendUnavailable"
    assert err.message == "PostgreSQL: server closed the connection"
    assert run.running_at(1.2) and not run.running_at(1.6)


class FakeApp:
    def __init__(self) -> None:
        #: running jobs: id -> (attempt, worker pid)
        self.running: dict[int, tuple[int, int | None]] = {1: (1, 10), 2: (1, 10), 3: (1, 10)}
        #: the ids each poll asked about
        self.asked: list[set[int]] = []

    def read(self, ids: set[int]) -> dict[int, tuple[int, int | None]]:
        self.asked.append(set(ids))
        return {j: at for j, at in dict(self.running).items() if j in ids}


def test_the_monitor_sees_victims_leave_running() -> None:
    app = FakeApp()
    monitor = VictimMonitor(app.read, interval=0.01)
    try:
        jobs = {1: 1, 2: 1, 3: 1, 4: 1}
        app.running[4] = (1, 10)
        app.running[5] = (1, 11)  # another worker's: never asked about
        time.sleep(0.05)
        assert app.asked == []  # no fault, no victim: the store is not read
        fault = Fault("kill -9", frozenset({10}), started=time.monotonic(), jobs=jobs)
        monitor.watch(fault)
        app.running[1] = (2, 11)  # re-claimed: attempt 1 is over
        del app.running[2]
        app.running[3] = (1, 11)  # claimed ahead, handed back uncounted, claimed elsewhere
        deadline = time.monotonic() + 5
        while len(fault.left) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # a few more polls: job 4 is still running in the victim
    finally:
        monitor.stop()
    assert set(fault.left) == {1, 2, 3}
    assert app.asked[0] == {1, 2, 3, 4} and app.asked[-1] == {4}  # only the victims still in
    stays = fault.stays()
    assert all((stay := stays[j]) is not None and stay < 5 for j in (1, 2, 3))
    assert stays[4] is None
