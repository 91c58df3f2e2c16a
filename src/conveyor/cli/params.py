"""Option types for the command line: durations, JSON values, priorities."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor.config import parse_duration


class Duration(click.ParamType[float]):
    """A length of time: `30d`, `12h`, `15m`, `90s`, or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class JsonValue(click.ParamType[Any]):
    """A JSON document of a given kind (`list` for --args, `dict` for --kwargs)."""

    def __init__(self, kind: type[list[Any]] | type[dict[str, Any]], example: str) -> None:
        self.kind = kind
        self.example = example
        self.name = "json " + ("array" if kind is list else "object")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.kind):
            return value
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"not valid JSON ({exc}); for example {self.example}", param, ctx)
        if not isinstance(decoded, self.kind):
            kind = "an array" if self.kind is list else "an object"
            self.fail(f"must be {kind}, for example {self.example}; got {value!r}", param, ctx)
        return decoded


class Priority(click.ParamType[int | str]):
    """1 (highest) to 10 (lowest) or a name; the range is checked where jobs are built."""

    name = "priority"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            return int(text)
        except ValueError:
            return text.lower()


DURATION = Duration()
ARGS = JsonValue(list, "--args '[1, \"two\"]'")
KWARGS = JsonValue(dict, '--kwargs \'{"name": "x"}\'')
PRIORITY = Priority()
