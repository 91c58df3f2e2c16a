"""What of a job's arguments and of a log line a person sees."""

from __future__ import annotations

import pytest

from conveyor.logging import configure_logging, get_logger
from conveyor.redact import secrets


def test_secret_looking_keys_are_hidden_at_any_depth() -> None:
    shown = secrets(
        {
            "user": "ann",
            "password": "pw",
            "options": [{"api_key": "k", "author": "bo"}],
            "pair": ("a", {"Authorization": "Bearer x"}),
        }
    )
    assert shown == {
        "user": "ann",
        "password": "***",
        "options": [{"api_key": "***", "author": "bo"}],
        "pair": ("a", {"Authorization": "***"}),
    }


def test_log_lines_never_carry_secret_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", cache=False)
    log = get_logger("test")
    log.info("login", user="ann", password="hunter2", settings={"token": "t0k3n", "depth": 2})
    log.info("job.succeeded", job_id=7, duration_ms=1.5)
    first, second = capsys.readouterr().err.strip().splitlines()
    assert "hunter2" not in first and "t0k3n" not in first
    assert '"password": "***"' in first and '"depth": 2' in first and '"user": "ann"' in first
    assert '"job_id": 7' in second
