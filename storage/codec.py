"""Encoding of stored values: msgpack, with the types it supports made explicit.

Values round-trip as follows:

======================  =================================================
stored                  read back
======================  =================================================
None, bool, int, float  the same (ints must fit in 64 bits)
str, bytes              the same
list, tuple             list
dict                    dict (keys may be str, int, bytes, bool or None)
datetime (aware)        datetime in UTC with the same instant
======================  =================================================

Naive datetimes are refused (their instant is ambiguous); sets, custom objects and
ints beyond 64 bits are refused with ``InvalidValue``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any

import msgpack

from dotdo.storage.errors import InvalidValue


def unstorable(obj: object) -> InvalidValue:
    """The error saying why ``obj`` cannot be encoded."""
    if isinstance(obj, int):
        return InvalidValue(f"cannot store the integer {obj}: integers must fit in 64 bits")
    if isinstance(obj, _dt.datetime):
        return InvalidValue(
            "cannot store a naive datetime: give it a timezone (e.g. tzinfo=datetime.UTC)"
        )
    return InvalidValue(
        f"cannot store a value of type {type(obj).__name__}: use None, bool, int, float, "
        "str, bytes, list, dict or an aware datetime"
    )


def _default(obj: object) -> object:
    raise unstorable(obj)


def encode(value: Any, default: Callable[[object], object] = _default) -> bytes:
    """Encode ``value`` for storage.

    Args:
        default: Called with each object msgpack cannot encode: returns what to encode
            instead (such as a ``msgpack.ExtType``) or raises (``unstorable(obj)``).

    Raises:
        InvalidValue: The value (or something inside it) is not storable.
    """
    try:
        return msgpack.packb(value, use_bin_type=True, datetime=True, default=default)
    except InvalidValue:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # Naive datetimes nested in containers reach msgpack's own check first.
        if "tzinfo" in str(exc):
            raise unstorable(_dt.datetime.now()) from None
        raise InvalidValue(f"cannot store this value: {exc}") from None


def decode(raw: bytes) -> Any:
    """Decode a value written by ``encode``."""
    return msgpack.unpackb(raw, raw=False, timestamp=3, strict_map_key=False)
