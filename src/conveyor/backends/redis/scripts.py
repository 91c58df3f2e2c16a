"""The steps a Redis plan yields, and the Lua scripts they run.

A Redis plan is a plan as `conveyor.backends.plan` describes one, yielding `Script` steps (one
atomic Lua script, every multi-step change) and `Cmd` steps (one command, for reads), or a list
of them to send together (pipelined, not atomic). Each script is `lua/lib.lua` (then any
`lua/lib_*.lua`, by name) followed by its own file, loaded by SHA and re-loaded when the server
has lost it (a restart, SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Script:
    """Run the Lua script `name` with `args` (after the prefix and the clock); `now` is the
    caller's "now" (None: the App's clock, read when the step is sent)."""

    name: str
    args: tuple[Any, ...] = ()
    now: float | None = None


@dataclass(frozen=True, slots=True)
class Cmd:
    """One Redis command (a read, or a single-key write), its arguments as sent."""

    args: tuple[Any, ...]


#: A Redis plan: it yields `Script`s, `Cmd`s or lists of `Cmd`s and gets their replies.
RedisPlan = Generator["Script | Cmd | list[Cmd]", Any, T]


@dataclass(frozen=True, slots=True)
class Lua:
    """A script's source and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str


@cache
def lua(name: str) -> Lua:
    folder = resources.files("conveyor.backends.redis") / "lua"
    # The shebang makes the server refuse the whole script up front when it is out of memory
    # (maxmemory under noeviction), instead of failing at its first write past the limit.
    libraries = sorted(
        (f for f in folder.iterdir() if f.name.startswith("lib_") and f.name.endswith(".lua")),
        key=lambda f: f.name,
    )
    parts = [folder / "lib.lua", *libraries, folder / f"{name}.lua"]
    source = "#!lua\n" + "\n".join(p.read_text(encoding="utf-8") for p in parts)
    return Lua(name, source, hashlib.sha1(source.encode()).hexdigest())
