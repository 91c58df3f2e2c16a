"""Text for terminals and log lines: control characters a job put in it are shown, not obeyed.

Error messages, tracebacks, progress stages, notes and results are written by tasks (and the
libraries they call) and may hold anything: `ESC [2J` clears a screen, `ESC ]52;` writes the
clipboard, a carriage return overwrites a line, a bidi override reorders what is read, a
newline starts a log line of its own. Everything the CLI prints for people and every logfmt or
console log line passes job-supplied text through `printable`, which spells those characters
out (`\\x1b`, `\\u202e`). Output for programs (`--json`, JSON logs) escapes them the JSON way and
is otherwise exact.
"""

from __future__ import annotations

import functools
import re

#: C0 controls but for newline and tab, DEL, the C1 range, and the bidi embeddings, overrides
#: and isolates (U+202A to U+202E, U+2066 to U+2069).
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


@functools.lru_cache(maxsize=8)
def _unsafe(keep: str) -> re.Pattern[str]:
    extra = "".join(c for c in "\n\t" if c not in keep)
    return re.compile(f"[{_UNSAFE}{re.escape(extra) if extra else ''}]")


def _spelled(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character (C0, DEL, C1) and bidi control spelled out as an
    escape (`\\x1b`, `\\r`, `\\u202e`), so a terminal shows it rather than obeys it.

    Newline and tab are escaped too, unless named in `keep`: a detail view keeps `"\\n\\t"`
    (a traceback has lines), a table cell or a log line keeps nothing (one entry, one line).
    Backslashes already in `text` are left alone, so `\\x1b` may also be text that said so.
    """
    pattern = _unsafe(keep)
    if pattern.search(text) is None:
        return text
    return pattern.sub(_spelled, text)


#: What `printable` escapes that JSON (without `ensure_ascii`) writes as it is: DEL, C1 and
#: the bidi controls. JSON has no raw control characters below U+0020.
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def json_printable(text: str) -> str:
    """JSON text with the characters a terminal would obey written as `\\uXXXX` escapes: the
    same JSON value, safe to print. They can only occur inside JSON strings, where the escape
    means the same character."""
    return _RAW_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
