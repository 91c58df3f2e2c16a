"""The steps a Redis plan yields, and the Lua scripts they run.

A Redis plan is a plan as `conveyor.backends.plan` describes one, yielding `Script` steps (one
atomic Lua script, every multi-step change) and `Cmd` steps (one command, for reads), or a list
of them to send together (pipelined, not atomic). Each script is its own file preceded by the
statements of `lua/lib.lua` (then of any `lua/lib_*.lua`, by name) it runs, loaded by SHA and
re-loaded when the server has lost it (a restart, SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
import re
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


#: A top-level statement of a library file begins at the left margin with one of these.
_STATEMENT = re.compile(r"(local|function|if)\b")
_DEFINES = re.compile(r"local\s+function\s+(\w+)|local\s+([\w\s,]+?)\s*(?:=|$)")
_EXTENDS = re.compile(r"function\s+(\w+)[.:]")
_NAME = re.compile(r"[A-Za-z_]\w*")
#: What ends a block at the left margin, within a statement.
_CLOSING = re.compile(r"(end|else|elseif)\b|[})\]]")


@dataclass(frozen=True, slots=True)
class _Statement:
    text: str
    defines: frozenset[str]
    extends: frozenset[str]
    names: frozenset[str]


def _statements(source: str) -> list[_Statement]:
    """A library file's top-level statements (each with the comment above it): a local, a
    function, or a block that sets what locals above it declared."""
    blocks: list[list[str]] = []
    pending: list[str] = []
    for line in source.splitlines():
        if _STATEMENT.match(line):
            blocks.append([*pending, line])
            pending = []
        elif line.startswith("--") or not blocks:
            pending.append(line)
        elif line[:1] in ("", " ") or _CLOSING.match(line):
            blocks[-1].append(line)
        else:  # a statement this reading would hide in the one above it, kept or not with it
            raise ValueError(f"a library statement begins with local, function or if: {line!r}")
    statements = []
    for block in blocks:
        head = next(line for line in block if _STATEMENT.match(line))
        found = _DEFINES.match(head)
        defines: set[str] = set()
        if found:
            defines = (
                {found.group(1)}
                if found.group(1)
                else set(found.group(2).replace(",", " ").split())
            )
        extends = set(_EXTENDS.findall(head)) if head.startswith("function") else set()
        code = "\n".join(line.split("--", 1)[0] for line in block)
        statements.append(
            _Statement(
                "\n".join(block),
                frozenset(defines),
                frozenset(extends),
                frozenset(_NAME.findall(code)),
            )
        )
    return statements


def _needed(statements: list[_Statement], body: str) -> str:
    """The statements `body` uses, and those they use in turn, in their order: a script
    carries only the part of the library it runs (every script is run whole, each time: what
    it defines and never calls costs the server time, the more when its caches are cold)."""
    names = set(_NAME.findall(body))
    taken = [not s.defines and not s.extends for s in statements]
    for s, take in zip(statements, taken, strict=True):
        if take:
            names |= s.names
    grew = True
    while grew:
        grew = False
        for i, s in enumerate(statements):
            if not taken[i] and (s.defines & names or s.extends & names):
                taken[i] = grew = True
                names |= s.names
    return "\n".join(s.text for s, take in zip(statements, taken, strict=True) if take)


@cache
def _library() -> list[_Statement]:
    folder = resources.files("conveyor.backends.redis") / "lua"
    libraries = sorted(
        (f for f in folder.iterdir() if f.name.startswith("lib_") and f.name.endswith(".lua")),
        key=lambda f: f.name,
    )
    return [s for f in [folder / "lib.lua", *libraries] for s in _statements(f.read_text("utf-8"))]


@cache
def lua(name: str) -> Lua:
    folder = resources.files("conveyor.backends.redis") / "lua"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    # The shebang makes the server refuse the whole script up front when it is out of memory
    # (maxmemory under noeviction), instead of failing at its first write past the limit.
    source = "#!lua\n" + _needed(_library(), body) + "\n" + body
    return Lua(name, source, hashlib.sha1(source.encode()).hexdigest())
