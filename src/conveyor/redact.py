"""Redaction: what of a job's arguments a person may see.

`App(redact=...)` takes any function from a value to the value as shown; it is applied to a
job's args, kwargs and meta wherever they are shown — the CLI, the HTTP API and the dashboard —
and never changes what the task receives. The default, `secrets`, hides the values under keys
that look like passwords, tokens, secrets, API keys or credentials, at any depth. Log events go
through `secrets` too (see `conveyor.logging`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

#: Keys whose values are never shown.
SECRET_KEY = re.compile(
    r"passw|passphrase|^pass$|pwd|secret|token|api_?key|authorization|^auth$|credential"
    r"|private_?key|cookie",
    re.IGNORECASE,
)
HIDDEN = "***"

Redactor = Callable[[Any], Any]


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Whether values under `key` are hidden (keys repeat: the answer is remembered)."""
    return SECRET_KEY.search(key) is not None


def secrets(value: Any) -> Any:
    """`value` with the values under secret-looking keys replaced by `***`, at any depth."""
    if isinstance(value, Mapping):
        return {k: HIDDEN if secret_key(str(k)) else secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(secrets(v) for v in value)
    return value
