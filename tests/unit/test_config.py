"""Settings: keyword arguments, then CONVEYOR_* variables, then defaults."""

from __future__ import annotations

import pytest

import conveyor
from conveyor.config import Settings


def test_defaults() -> None:
    s = Settings.load({}, environ={})
    assert (s.database_url, s.lease_seconds, s.max_attempts) == ("sqlite:///conveyor.db", 30, 3)
    assert s.max_payload_bytes == 1024 * 1024


def test_environment_fills_in_and_keywords_win() -> None:
    env = {
        "CONVEYOR_DATABASE_URL": "sqlite:///env.db",
        "CONVEYOR_MAX_ATTEMPTS": "7",
        "CONVEYOR_RETRY_BASE_DELAY": "0.5",
        "CONVEYOR_LEASE_SECONDS": "12",
        "CONVEYOR_AUTO_MIGRATE": "false",
    }
    s = Settings.load({"max_attempts": 2}, environ=env)
    assert (s.database_url, s.max_attempts, s.retry_base_delay, s.lease_seconds) == (
        "sqlite:///env.db",
        2,
        0.5,
        12.0,
    )
    assert s.auto_migrate is False


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"CONVEYOR_MAX_ATTEMPTS": "zero"}, "CONVEYOR_MAX_ATTEMPTS='zero'"),
        ({"CONVEYOR_LEASE_SECONDS": "-1"}, "must be > 0"),
        ({"CONVEYOR_AUTO_MIGRATE": "maybe"}, "expected true or false"),
        ({"CONVEYOR_SQLITE_SYNCHRONOUS": "sometimes"}, "OFF, NORMAL, FULL or EXTRA"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(conveyor.ConfigurationError, match=match):
        Settings.load({}, environ=env)


def test_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("CONVEYOR_MAX_ATTEMPTS", "9")
    app = conveyor.App()

    @app.task
    def work() -> None: ...

    assert app.url.endswith("/env.db")
    assert work.enqueue().max_attempts == 9
    app.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://localhost/x", "unknown database URL scheme 'mysql'"),
        ("jobs.db", "has no scheme"),
    ],
)
def test_unusable_urls_fail_when_the_app_is_made(url: str, match: str) -> None:
    with pytest.raises(conveyor.ConfigurationError, match=match):
        conveyor.App(url)
