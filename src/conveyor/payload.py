"""Turning a call into a stored job: arguments to JSON, checked at the edge, nothing half-stored."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import PayloadTooLarge, ValidationError, describe

# An escaped NUL: \u0000 after an even number of backslashes (an odd run is a literal "\").
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
# A surrogate code point on its own: not Unicode text, cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What stands in for a character no store keeps (U+FFFD REPLACEMENT CHARACTER).
REPLACEMENT = "\ufffd"
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


#: How many shapes of call (count of positional arguments, keyword names) a task remembers the
#: signature's answer for; a task called in more ways than that checks the rest each time.
MAX_SHAPES = 64
_UNSEEN = object()

#: The deepest nesting of lists and objects stored: deeper data breaks readers (JSON parsers and
#: serializers stop around 255 levels), so it is refused at the edge.
MAX_DEPTH = 100


def _depth(text: str) -> int:
    """How deeply the JSON `text` nests lists and objects."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _try_encode(value: Any) -> tuple[str, None] | tuple[None, str]:
    """`value` as JSON that reads back the same everywhere, or why it cannot be."""
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        return None, str(exc)
    except RecursionError:
        return None, "it nests too deeply (or refers to itself)"
    # JSON escapes NUL as \u0000; PostgreSQL's jsonb and many tools refuse it, so it is refused
    # everywhere. A lone surrogate cannot be written as UTF-8 at all.
    if "\\u0000" in text and _NUL.search(text):
        return None, "it contains a NUL character (\\x00), which conveyor does not store"
    if not text.isascii() and _SURROGATE.search(text):
        return None, "it contains a lone surrogate, which is not valid Unicode text"
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        return None, f"it nests lists and objects more than {MAX_DEPTH} levels deep"
    return text, None


def storable_text(text: str) -> str:
    """`text` as every store keeps it: NUL characters (which PostgreSQL refuses) and lone
    surrogates (which are not Unicode text) become U+FFFD. Everything a task writes — error
    messages and tracebacks, results, progress stages and messages, notes — goes through this
    (or `encode_result`) before it is written, on every backend."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if not text.isascii():
        text = _SURROGATE.sub(REPLACEMENT, text)
    return text


def encode_result(value: Any, what: str) -> str:
    """A task's result as JSON, made storable: NUL characters and lone surrogates in its text
    become U+FFFD (see `storable_text`). A value that is no JSON at all is a ValidationError."""
    if value is None:  # what most tasks return
        return "null"
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} cannot be stored as JSON: {exc}") from None
    except RecursionError:
        raise ValidationError(
            f"{what} cannot be stored as JSON: it nests too deeply (or refers to itself)"
        ) from None
    if "\\u0000" in text:
        text = _NUL.sub(lambda m: m.group(1) + REPLACEMENT, text)
    if not text.isascii():
        text = _SURROGATE.sub(REPLACEMENT, text)
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise ValidationError(
            f"{what} cannot be stored as JSON: it nests lists and objects more than "
            f"{MAX_DEPTH} levels deep"
        )
    return text


def _problem(value: Any) -> str | None:
    return _try_encode(value)[1]


def encode(value: Any, what: str) -> str:
    """`value` as compact JSON, or a ValidationError that names `what`."""
    text, problem = _try_encode(value)
    if text is None:
        raise ValidationError(f"{what} cannot be stored as JSON: {problem}")
    return text


def encode_arguments(
    task_name: str,
    signature: inspect.Signature | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    shapes: dict[tuple[Any, ...], str | None] | None = None,
) -> tuple[str, str]:
    """Check the call against the task's signature and encode it; errors name the argument.
    `shapes` keeps what the signature said of each shape of call (see `Task.build_job`)."""
    if type(args) not in (tuple, list) and (
        not isinstance(args, Sequence) or isinstance(args, str | bytes)
    ):
        raise ValidationError(f"args of {task_name} must be a list, got {describe(args)}")
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise ValidationError(f"kwargs of {task_name} must be a mapping, got {describe(kwargs)}")
    if signature is not None:
        # Whether a call binds depends only on how many positional arguments it has and which
        # keyword names, never on their values: the answer is kept per shape, if given a place.
        shape = (len(args), *kwargs)
        problem = _UNSEEN if shapes is None else shapes.get(shape, _UNSEEN)
        if problem is _UNSEEN:
            try:
                signature.bind(*args, **kwargs)
                problem = None
            except TypeError as exc:
                problem = str(exc)
            if shapes is not None and len(shapes) < MAX_SHAPES:
                shapes[shape] = problem
        if problem is not None:
            raise ValidationError(f"bad arguments for task {task_name}: {problem}")
    try:
        return encode(list(args), "args"), (encode(dict(kwargs), "kwargs") if kwargs else "{}")
    except ValidationError:
        pass
    for i, value in enumerate(args):
        if (problem := _problem(value)) is not None:
            name = _positional_name(signature, i)
            label = f"argument {name!r}" if name else f"positional argument {i}"
            raise ValidationError(
                f"{label} of {task_name} ({describe(value)}) cannot be stored as JSON: {problem}"
            ) from None
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise ValidationError(f"keyword names of {task_name} must be strings, got {key!r}")
        if (problem := _problem(value)) is not None:
            raise ValidationError(
                f"argument {key!r} of {task_name} ({describe(value)}) cannot be stored as JSON: "
                f"{problem}"
            ) from None
    raise ValidationError(f"the arguments of {task_name} cannot be stored as JSON")


def _positional_name(signature: inspect.Signature | None, index: int) -> str | None:
    """The name of the parameter that positional argument `index` binds to, if it has one."""
    if signature is None:
        return None
    positional = [
        name
        for name, param in signature.parameters.items()
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
    ]
    return positional[index] if index < len(positional) else None


def check_size(task_name: str, limit: int, *parts: str) -> None:
    if sum(map(len, parts)) * 4 <= limit:
        return  # a character is at most 4 bytes of UTF-8: no need to count them
    size = sum(len(p.encode("utf-8")) for p in parts)
    if size > limit:
        raise PayloadTooLarge(
            f"job {task_name} is {size:,} bytes of JSON, over the {limit:,}-byte limit "
            "(max_payload_bytes / CONVEYOR_MAX_PAYLOAD_BYTES); store large data elsewhere "
            "and pass a reference"
        )


def task_signature(fn: Any, pass_context: bool) -> inspect.Signature | None:
    """The signature enqueue checks calls against (without the context parameter)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if pass_context:
        params = list(signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"{fn!r} has pass_context=True but no first parameter for the context")
        signature = signature.replace(parameters=params[1:])
    return signature
