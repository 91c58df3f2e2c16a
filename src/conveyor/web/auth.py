"""API tokens: roles `read` and `admin`, sent as `Authorization: Bearer <token>`, compared in
constant time, never accepted in a query string.

`CONVEYOR_API_TOKENS="admin:<token>,read:<token>"`, or `CONVEYOR_API_TOKENS_FILE` naming a file
of `role:sha256:<hex digest>` lines (so the file holds no usable token). Only digests are kept
in memory either way. A token must be long and varied: at least 24 characters, of at least 10
different ones (`python -c "import secrets; print(secrets.token_urlsafe(32))"` makes one).

Failed tokens are throttled (`Throttle`): a client address that presents unknown tokens more
than a few times a minute gets 429 for a while, whatever it presents, so guessing is slow.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.errors import ConfigurationError

ROLES = ("read", "admin")
#: The shortest token accepted, and the fewest different characters: a guessable token is no
#: protection.
MIN_TOKEN_LENGTH = 24
MIN_TOKEN_VARIETY = 10
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Tokens:
    """The known tokens, as (role, SHA-256 digest) pairs."""

    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, text: str) -> Tokens:
        entries = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            role, sep, token = item.partition(":")
            if not sep or role not in ROLES:
                raise ConfigurationError(
                    "CONVEYOR_API_TOKENS entries are role:token with a role of read or admin"
                )
            if len(token) < MIN_TOKEN_LENGTH or len(set(token)) < MIN_TOKEN_VARIETY:
                raise ConfigurationError(
                    f"the {role} token is too weak: API tokens must be at least "
                    f"{MIN_TOKEN_LENGTH} characters, of at least {MIN_TOKEN_VARIETY} different "
                    f"ones; make one with {MAKE_TOKEN}"
                )
            entries.append((role, digest(token)))
        if not entries:
            raise ConfigurationError("CONVEYOR_API_TOKENS names no token")
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """`role:sha256:<hex>` lines (`#` comments and blank lines allowed)."""
        entries = []
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(
                f"CONVEYOR_API_TOKENS_FILE: cannot read {path}: {exc.strerror or exc}"
            ) from None
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            role, _, rest = line.partition(":")
            algorithm, _, hexdigest = rest.partition(":")
            try:
                value = bytes.fromhex(hexdigest)
            except ValueError:
                value = b""
            if role not in ROLES or algorithm != "sha256" or len(value) != 32:
                raise ConfigurationError(f"{path}:{n}: expected role:sha256:<64 hex digits>")
            entries.append((role, value))
        if not entries:
            raise ConfigurationError(f"{path} names no token")
        return cls(tuple(entries))

    @classmethod
    def from_environment(cls) -> Tokens | None:
        if path := os.environ.get("CONVEYOR_API_TOKENS_FILE"):
            return cls.from_file(path)
        if text := os.environ.get("CONVEYOR_API_TOKENS"):
            return cls.parse(text)
        return None

    def role_of(self, token: str) -> str | None:
        """The role of a presented token, None if unknown. Every entry is compared (in
        constant time), so the answer's timing says nothing about which one matched."""
        presented = digest(token)
        found = None
        for role, known in self.entries:
            if hmac.compare_digest(presented, known) and found != "admin":
                found = role
        return found


@dataclass
class Throttle:
    """Failed token checks, counted per client address and overall over the last minute.

    A client address with `per_client` failures in the last minute is refused (429) whatever it
    presents, until its oldest failure is a minute old: it cannot go on guessing, and a right
    guess would not be told apart from a wrong one. Once `overall` failures from everyone are
    reached (guessing from many addresses), every address that failed at least once in the
    minute is refused too. A client that never presented a wrong token is never slowed."""

    per_client: int = 10
    overall: int = 100
    window_s: float = 60.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _expire(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._all and self._all[0] <= cutoff:
            self._all.popleft()
        for client in [c for c, times in self._failures.items() if times[-1] <= cutoff]:
            del self._failures[client]

    def retry_after(self, client: str) -> int | None:
        """Seconds `client` must wait before a token of its is checked again; None: now."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            mine = self._failures.get(client)
            if not mine:
                return None
            while mine[0] <= now - self.window_s:
                mine.popleft()
            if len(mine) >= self.per_client:
                return max(1, math.ceil(mine[0] + self.window_s - now))
            if len(self._all) >= self.overall:
                return max(1, math.ceil(self._all[0] + self.window_s - now))
            return None

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            self._failures.setdefault(client, deque()).append(now)
            self._all.append(now)
