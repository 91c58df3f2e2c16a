"""What redaction hides of a job beyond its arguments, what is left of a probe URL, and how
job-supplied control characters reach a terminal or a log line: escaped, never obeyed."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from conveyor import JobState
from conveyor.job import Job
from conveyor.logging import configure_logging, get_logger
from conveyor.redact import hidden_strings, hide_repeats, secrets, shown_job, url
from conveyor.terminal import json_printable, printable

SECRET = "hunter2-correct-horse"


def dead_job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": 7,
        "queue": "default",
        "task": "login",
        "args": ["ann"],
        "kwargs": {"password": SECRET, "region": "eu"},
        "priority": 5,
        "state": JobState.DEAD,
        "attempt": 1,
        "max_attempts": 1,
        "run_at": 0.0,
        "created_at": 0.0,
    }
    return Job(**{**values, **fields})


def test_a_result_that_echoes_a_secret_is_shown_without_it() -> None:
    job = dead_job(
        state=JobState.SUCCEEDED,
        result={"password": SECRET, "note": f"signed in with {SECRET}", "echo": [SECRET]},
    )

    shown = shown_job(job)

    assert shown.result == {"password": "***", "note": "signed in with ***", "echo": ["***"]}
    assert shown.kwargs == {"password": "***", "region": "eu"}
    assert SECRET not in repr(shown)
    # what is stored (and what the task got) is untouched
    assert job.result["note"] == f"signed in with {SECRET}"
    assert job.kwargs["password"] == SECRET


def test_errors_stage_and_unique_key_are_shown_without_the_hidden_values() -> None:
    quoted = 'it\'s "quoted"\n'
    job = dead_job(
        kwargs={"password": SECRET, "api_token": quoted},
        stage=f"logging in with {SECRET}",
        unique_key=f"login:{SECRET}",
        errors=[
            {
                "type": "ValueError",
                "message": f"bad password {SECRET!r}",
                "traceback": f"Traceback ...\nValueError: bad password {SECRET!r} ({quoted!r})\n",
                "attempt": 1,
                "at": 0.0,
                "worker": "w1",
            }
        ],
    )

    shown = shown_job(job)

    assert shown.errors[0]["message"] == "bad password '***'"
    assert shown.errors[0]["traceback"].endswith("bad password '***' ('***')\n")
    assert shown.stage == "logging in with ***"
    assert shown.unique_key == "login:***"
    assert shown.status_message == "Failed: ValueError: bad password '***'"
    assert job.errors[0]["message"] == f"bad password {SECRET!r}"


def test_short_and_non_string_secrets_are_hidden_only_where_they_are() -> None:
    job = dead_job(
        kwargs={"password": "pw1", "pin": 1234, "secret_pin": 98765},
        result="pw1 was 98765",
        errors=[{"type": "ValueError", "message": "pw1 is not a password"}],
    )

    shown = shown_job(job)

    assert shown.kwargs == {"password": "***", "pin": 1234, "secret_pin": "***"}
    # too short, or not text: looking for them in free text would hide ordinary words
    assert shown.result == "pw1 was 98765"
    assert shown.errors[0]["message"] == "pw1 is not a password"


def test_a_longer_hidden_value_is_hidden_whole() -> None:
    hidden = hidden_strings(
        {"token": "abcd", "secret": "abcdefgh"}, secrets({"token": "abcd", "secret": "abcdefgh"})
    )
    assert hide_repeats("x abcdefgh y abcd z", hidden) == "x *** y *** z"


def test_a_custom_redactor_decides_what_is_hidden() -> None:
    def hide_cards(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<card>" if k == "card" else v for k, v in value.items()}
        return value

    job = dead_job(
        kwargs={"card": "4242-4242-4242-4242", "password": "not-hidden-here"},
        result={"card": "4242-4242-4242-4242", "receipt": "paid with 4242-4242-4242-4242"},
        errors=[{"type": "CardDeclined", "message": "4242-4242-4242-4242 declined"}],
    )

    shown = shown_job(job, hide_cards)

    assert shown.result == {"card": "<card>", "receipt": "paid with ***"}
    assert shown.errors[0]["message"] == "*** declined"
    assert shown.kwargs == {"card": "<card>", "password": "not-hidden-here"}


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        (
            "https://ann:s3cret@host:8443/health?token=abc&v=2#frag",
            "https://host:8443/health?token=&v=",
        ),
        ("https://user@host/health", "https://host/health"),
        ("https://a:p@ss@host/", "https://host/"),
        ("http://[::1]:8080/ping?key=k", "http://[::1]:8080/ping?key="),
        ("https://host/health?opaque-token", "https://host/health"),
        ("https://host/health", "https://host/health"),
        ("not a url?x=1", "not a url?x="),
    ],
)
def test_a_probe_url_is_shown_without_credentials_or_query_values(address: str, shown: str) -> None:
    assert url(address) == shown


@pytest.mark.parametrize(
    ("text", "keep", "shown"),
    [
        ("plain [red]text[/red]", "", "plain [red]text[/red]"),
        ("clear\x1b[2J bell\x07 nul\x00", "", r"clear\x1b[2J bell\x07 nul\x00"),
        ("del\x7f csi\x9b", "", r"del\x7f csi\x9b"),
        ("clip\x1b]52;c;aGk=\x07", "", r"clip\x1b]52;c;aGk=\x07"),
        ("evil\u202egnp.exe \u2066x\u2069", "", r"evil\u202egnp.exe \u2066x\u2069"),
        ("line\nnext\ttab\rover", "", r"line\nnext\ttab\rover"),
        ("line\nnext\ttab\rover", "\n\t", "line\nnext\ttab\\rover"),
        ("naïve — ünïcode ✓", "", "naïve — ünïcode ✓"),
    ],
)
def test_control_characters_are_spelled_out(text: str, keep: str, shown: str) -> None:
    assert printable(text, keep) == shown


def test_json_for_a_terminal_holds_the_same_value() -> None:
    value = {"message": "a\x1b[2J\x9b\u202eb\x7f"}
    text = json_printable(json.dumps(value, ensure_ascii=False))
    assert not any(c in text for c in "\x1b\x9b\u202e\x7f")
    assert json.loads(text) == value


HOSTILE = "bad\x1b[2J\x1b]52;c;aGk=\x07 nul\x00 \u202eevil\nlevel=error event=forged"


@pytest.mark.parametrize("fmt", ["logfmt", "console"])
def test_a_log_line_escapes_what_a_job_wrote(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", fmt, cache=False)
    get_logger("test").error("job.dead", job_id=7, error=HOSTILE, tags=["a\x1bb"])
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        get_logger("test").exception("job.internal_error", job_id=8)

    # the console format colours its own output; nothing else may reach the terminal raw
    err = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().err)
    for raw in ("\x1b", "\x00", "\x07", "\u202e"):
        assert raw not in err
    lines = err.splitlines()
    assert "job.dead" in lines[0] and "forged" in lines[0]
    assert "\\x1b[2J" in lines[0]
    # no line but an event's own starts at the left edge
    assert [line for line in lines if not line.startswith(" ")] == [lines[0], lines[1]]
    assert "job.internal_error" in lines[1]
    if fmt == "logfmt":  # the traceback too is part of the event's line
        assert len(lines) == 2


def test_a_json_log_line_keeps_the_text_exact(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", cache=False)
    get_logger("test").error("job.dead", error=HOSTILE.replace("\x00", ""))
    line = capsys.readouterr().err
    assert "\x1b" not in line
    assert json.loads(line)["error"] == HOSTILE.replace("\x00", "")
