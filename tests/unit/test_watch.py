"""What `conveyor jobs watch` draws on a terminal (the piped and JSON forms are tested through
the command in tests/integration/test_cli.py)."""

from __future__ import annotations

from rich.console import Console

from conveyor.cli.watch import panel


def test_the_live_view_shows_state_attempts_worker_progress_stage_and_message() -> None:
    shown = {
        "job_id": 7,
        "task": "render",
        "queue": "video",
        "state": "running",
        "attempt": 2,
        "max_attempts": 5,
        "progress": 60.0,
        "stage": "encode",
        "message": "frame 10\x1b[2J",  # a control sequence the job wrote: shown, not obeyed
        "worker": "render-1:3fa2b9c1",
        "at": 0.0,
    }
    out = Console(record=True, width=100, color_system=None)
    out.print(panel(shown))
    lines = [line.rstrip() for line in out.export_text().splitlines()]
    assert lines[0] == "job 7 · render · queue video"
    assert lines[1] == "running · attempt 2/5 · on render-1:3fa2b9c1"
    assert lines[2].endswith("60% encode · frame 10\\x1b[2J")
    assert "━" in lines[2]  # the bar


def test_a_job_that_reported_no_progress_shows_an_empty_bar_and_no_percentage() -> None:
    shown = {
        "job_id": 8, "task": "t", "queue": "q", "state": "queued", "attempt": 0,
        "max_attempts": 3, "progress": None, "stage": None, "message": None, "worker": None,
        "at": 0.0,
    }  # fmt: skip
    out = Console(record=True, width=100, color_system=None)
    out.print(panel(shown))
    lines = [line.rstrip() for line in out.export_text().splitlines()]
    assert lines[1] == "queued · attempt 0/3"
    assert "%" not in lines[2]
