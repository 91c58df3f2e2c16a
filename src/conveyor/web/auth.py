"""API tokens: roles `read` and `admin`, sent as `Authorization: Bearer <token>`, compared in
constant time, never accepted in a query string.

`CONVEYOR_API_TOKENS="admin:<token>,read:<token>"`, or `CONVEYOR_API_TOKENS_FILE` naming a file
of `role:sha256:<hex digest>` lines (so the file holds no usable token). Only digests are kept
in memory either way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import ConfigurationError

ROLES = ("read", "admin")
#: The shortest token accepted: a guessable token is no protection.
MIN_TOKEN_LENGTH = 16


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
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigurationError(
                    f"API tokens must be at least {MIN_TOKEN_LENGTH} characters"
                )
            entries.append((role, digest(token)))
        if not entries:
            raise ConfigurationError("CONVEYOR_API_TOKENS names no token")
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """`role:sha256:<hex>` lines (`#` comments and blank lines allowed)."""
        entries = []
        for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
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
