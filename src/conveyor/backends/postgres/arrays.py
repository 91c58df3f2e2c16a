"""Column arrays for the batch statements, sent in PostgreSQL's binary array format.

An enqueue of 1,000 jobs sends 17 arrays of 1,000 values, a worker's batch of outcomes 23;
psycopg's own list dumper looks at every element to pick a type, then dumps and frames each one
in Python, which cost ~3.8 µs a job of `enqueue_many` (14 % of it) and a tenth of a worker's
event loop. Here each statement's parameter says its element type (`Texts`, `Ints`, ...), and
the whole array is packed at once: an array of one repeated value (most columns of a batch) by
repeating its bytes, the others by `struct` in a loop.

The wrappers are lists, so a connection whose adapters lack these dumpers (a map of its own,
made from psycopg's defaults before this module was imported) sends them through psycopg's
list dumper, as before: the same array, only slower.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import repeat
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_HEADER = struct.Struct("!iiiii")  # dimensions, has NULLs, element oid, length, lower bound
_EMPTY = struct.Struct("!iii")  # an empty array: no dimensions
_LENGTH = struct.Struct("!i")
_NULL = b"\xff\xff\xff\xff"  # an element's length of -1


class _Array(list[Any]):
    """A list sent as a PostgreSQL array of one element type (see the subclasses)."""

    __slots__ = ()
    oid = 0  # the array type's oid
    element_oid = 0

    @staticmethod
    def element(value: Any) -> bytes:
        """One element, framed: its length, then its bytes."""
        raise NotImplementedError

    @staticmethod
    def elements(values: list[Any]) -> bytes:
        """Every element, framed, none of them None."""
        raise NotImplementedError


def _text(value: str) -> bytes:
    data = value.encode()
    return _LENGTH.pack(len(data)) + data


def _texts(values: list[str]) -> bytes:
    return b"".join([_LENGTH.pack(len(data)) + data for data in [v.encode() for v in values]])


class Texts(_Array):
    __slots__ = ()
    oid, element_oid = 1009, 25
    element = staticmethod(_text)
    elements = staticmethod(_texts)


def _fixed(fmt: str, size: int) -> tuple[Any, Any]:
    """The packers of a type of `size` bytes (`struct` format `fmt`): `element`, `elements`."""
    pack = struct.Struct(f"!i{fmt}").pack

    def element(value: Any) -> bytes:
        return pack(size, value)

    def elements(values: list[Any]) -> bytes:
        return b"".join(map(pack, repeat(size, len(values)), values))

    return staticmethod(element), staticmethod(elements)


class Ints(_Array):
    """int4 values."""

    __slots__ = ()
    oid, element_oid = 1007, 23
    element, elements = _fixed("i", 4)


class BigInts(_Array):
    """int8 values."""

    __slots__ = ()
    oid, element_oid = 1016, 20
    element, elements = _fixed("q", 8)


class Floats(_Array):
    """float8 values."""

    __slots__ = ()
    oid, element_oid = 1022, 701
    element, elements = _fixed("d", 8)


class Bools(_Array):
    __slots__ = ()
    oid, element_oid = 1000, 16
    element, elements = _fixed("?", 1)


_PROBLEMS = (struct.error, TypeError, AttributeError, UnicodeEncodeError)


def pack(array: _Array) -> bytes:
    """`array` in the binary array format: one dimension, lower bound 1, NULL for None."""
    n = len(array)
    if not n:
        return _EMPTY.pack(0, 0, array.element_oid)
    first = array[0]
    element = array.element
    try:
        if array.count(first) == n:  # one value throughout (all None, all "default", ...)
            one = _NULL if first is None else element(first)
            return _HEADER.pack(1, first is None, array.element_oid, n, 1) + one * n
        if None in array:
            body = b"".join([_NULL if v is None else element(v) for v in array])
            return _HEADER.pack(1, 1, array.element_oid, n, 1) + body
        return _HEADER.pack(1, 0, array.element_oid, n, 1) + array.elements(array)
    except _PROBLEMS:
        bad = next(v for v in array if not _fits(element, v))
        raise psycopg.DataError(
            f"cannot send {bad!r} in an array of {type(array).__name__.lower()}"
        ) from None


def _fits(element: Callable[[Any], bytes], value: Any) -> bool:
    try:
        value is None or element(value)
    except _PROBLEMS:
        return False
    return True


class _ArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return pack(obj)


def _register(kind: type[_Array]) -> None:
    dumper = type(f"{kind.__name__}Dumper", (_ArrayDumper,), {"oid": kind.oid})
    psycopg.adapters.register_dumper(kind, dumper)


for _kind in (Texts, Ints, BigInts, Floats, Bools):
    _register(_kind)
