"""Redaction: what of a job, and of a circuit's probe URL, a person may see.

`App(redact=...)` takes any function from a value to the value as shown. The default,
`secrets`, hides the values under keys that look like passwords, tokens, secrets, API keys or
credentials, at any depth, as `***`. What is stored, and what the task receives, never change:
redaction happens when a job is shown.

Wherever a job is shown — the CLI (`jobs list`, `jobs show`, `dlq list`, `dlq show`, and their
`--json`), the HTTP API's job JSON (and its `status_message`) and the dashboard's job, jobs and
dead-letter pages — it is shown as `shown_job` gives it:

- its args, kwargs, meta *and result* go through `redact` (so a result such as
  `{"password": ...}` is hidden by its key);
- every string that `redact` changed or left out of the args, kwargs or meta — a *hidden
  string* — is looked for, as written and as `repr()` and `json.dumps()` spell it, in every
  other string shown of the job, and each occurrence is replaced by `***`: in the result, in
  every error's type, message and traceback, in the progress stage, the unique key, the status
  message, and elsewhere in the arguments themselves. A longer hidden string is replaced before
  a shorter one it contains.

The same hidden strings are taken out of the error of a worker's `job.retry_scheduled` and
`job.dead` log lines and of a dead job's alert; fields of a log line under secret-looking keys
are `***` (see `conveyor.logging`).

Not covered:

- a secret the task computes, reads or fetches itself (unless it returns it under a
  secret-looking key);
- a hidden string changed before it is repeated: encoded (base64, URL-quoting), hashed,
  cut, re-cased, or split up;
- hidden strings shorter than 4 characters (`MIN_HIDDEN`), and hidden values that are not
  strings (numbers, booleans): looked for in free text, they would match ordinary text;
- a secret under a key that does not look secret (with `secrets`), or whatever a custom
  `redact` lets through — it decides what is hidden;
- text shown without its job: the notes of its history as the CLI, the API and the dashboard
  show them (a `Discard` reason, which the `job.dead` log line does hide), the stage and
  message of progress events on the event streams, and the store's own contents.

A hidden string that is also an ordinary word elsewhere in the job is hidden there too.

A circuit's probe URL is shown by `url`, to everyone: no user or password, no fragment, and
query parameters by name only (`https://host:8443/health?token=`). A secret in the path is
still shown. The full URL stays in the code that declares the circuit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.job import Job

#: Keys whose values are never shown.
SECRET_KEY = re.compile(
    r"passw|passphrase|^pass$|pwd|secret|token|api_?key|authorization|^auth$|credential"
    r"|private_?key|cookie",
    re.IGNORECASE,
)
HIDDEN = "***"
#: Hidden strings shorter than this are not looked for elsewhere: they would match by chance.
MIN_HIDDEN = 4

Redactor = Callable[[Any], Any]
#: JSON text as the API and `--json` write it (made once: `json.dumps` with options is not)
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)
_json_text = json.encoder.encode_basestring
_json_ascii = json.encoder.encode_basestring_ascii
#: Values with nothing inside (checked first: most of a job's values are these).
_LEAVES = frozenset({str, int, float, bool, type(None)})


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Whether values under `key` are hidden (keys repeat: the answer is remembered)."""
    return SECRET_KEY.search(key) is not None


def secrets(value: Any) -> Any:
    """`value` with the values under secret-looking keys replaced by `***`, at any depth."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, Mapping):
        return {k: HIDDEN if secret_key(str(k)) else secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(secrets(v) for v in value)
    return value


# -- what redaction hid, wherever else it shows up -----------------------------------------


def hidden_strings(original: Any, shown: Any) -> frozenset[str]:
    """The strings of `original` that `shown`, its redacted form, no longer shows (at least
    MIN_HIDDEN characters long), each also as `repr()` and `json.dumps()` spell it inside
    quotes. Lists and mappings are compared item by item; wherever the two differ otherwise,
    every string value of the original there counts as hidden (keys are names, not secrets:
    they are not)."""
    found = {s for s in _changed(original, shown) if len(s) >= MIN_HIDDEN}
    forms = set(found)
    for s in found:
        forms.update((repr(s)[1:-1], _json_ascii(s)[1:-1], _json_text(s)[1:-1]))
    return frozenset(forms)


def _changed(original: Any, shown: Any) -> Iterator[str]:
    kind = type(original)
    if kind is type(shown) and original == shown:  # most of a job: one C compare
        return
    if kind is str:
        yield original
    elif isinstance(original, Mapping) and isinstance(shown, Mapping):
        for key, value in original.items():
            if key in shown:
                yield from _changed(value, shown[key])
            else:
                yield from _strings(value)
    elif (
        isinstance(original, list | tuple)
        and isinstance(shown, list | tuple)
        and len(original) == len(shown)
    ):
        for item, shown_item in zip(original, shown, strict=True):
            yield from _changed(item, shown_item)
    else:
        yield from _strings(original)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping | list | tuple):
        for item in value.values() if isinstance(value, Mapping) else value:
            yield from _strings(item)


@functools.lru_cache(maxsize=256)
def _finder(hidden: frozenset[str]) -> re.Pattern[str]:
    # longest first, so a hidden string that contains another is replaced whole
    return re.compile("|".join(re.escape(s) for s in sorted(hidden, key=len, reverse=True)))


def hide_repeats(value: Any, hidden: frozenset[str]) -> Any:
    """`value` (text, or lists and mappings of it at any depth, keys included) with every
    occurrence of a hidden string replaced by `***`. A new value: `value` is left as it is."""
    if not hidden:
        return value
    return _hide(value, _finder(hidden))


def _hide(value: Any, finder: re.Pattern[str]) -> Any:
    kind = type(value)
    if kind is str or isinstance(value, str):
        return finder.sub(HIDDEN, value)
    if kind in _LEAVES:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {_hide(k, finder): _hide(v, finder) for k, v in value.items()}
    if kind is list or isinstance(value, list):
        return [_hide(v, finder) for v in value]
    if isinstance(value, tuple):
        return tuple(_hide(v, finder) for v in value)
    return value


def _repeats_any(value: Any, hidden: frozenset[str]) -> bool:
    """Whether some string in `value` may hold a hidden string: one search of its JSON text
    instead of a walk. JSON escapes character by character, so a string that holds a hidden
    string holds its JSON form in the JSON text (one of the forms looked for)."""
    try:
        text = _JSON.encode(value)
    except (TypeError, ValueError):  # not JSON after all: walk it
        return True
    return _finder(hidden).search(text) is not None


def job_hidden_strings(job: Job, redact: Redactor = secrets) -> frozenset[str]:
    """The hidden strings of a job's args, kwargs and meta under `redact`."""
    original = [job.args, job.kwargs, job.meta]
    return hidden_strings(original, [redact(v) for v in original])


def shown_job(job: Job, redact: Redactor = secrets) -> Job:
    """The job as a person may see it (see the module's docstring): a copy with its args,
    kwargs, meta and result through `redact`, and every hidden string of its args, kwargs and
    meta taken out of its result, errors, stage, unique key and the arguments as shown."""
    args, kwargs, meta = redact(job.args), redact(job.kwargs), redact(job.meta)
    hidden = hidden_strings([job.args, job.kwargs, job.meta], [args, kwargs, meta])
    shown = {
        "args": args,
        "kwargs": kwargs,
        "meta": meta,
        "result": redact(job.result),
        "errors": job.errors,
        "stage": job.stage,
        "unique_key": job.unique_key,
    }
    # most jobs repeat no hidden string anywhere (one search of their JSON says so); else
    # only the parts that do are walked
    if hidden and _repeats_any(list(shown.values()), hidden):
        shown = {
            name: hide_repeats(value, hidden) if _repeats_any(value, hidden) else value
            for name, value in shown.items()
        }
    return dataclasses.replace(job, **shown)


# -- URLs ----------------------------------------------------------------------------------


def url(address: str) -> str:
    """`address` as anyone may see it: without a user or password, without a fragment, and
    with query parameters by name only — `https://ann:pw@host:8443/health?token=abc#x` is
    shown as `https://host:8443/health?token=`. A parameter without `=` may be a token of its
    own and is left out. Plain string work: it cannot fail on a malformed URL."""
    rest = address.partition("#")[0]
    rest, _, query = rest.partition("?")
    scheme, colon_slashes, tail = rest.partition("://")
    if colon_slashes:
        authority, slash, path = tail.partition("/")
        rest = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    names = [part.partition("=")[0] + "=" for part in query.split("&") if "=" in part]
    return f"{rest}?{'&'.join(names)}" if names else rest
