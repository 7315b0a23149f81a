"""Errors across the transport: the error frame an exception becomes, and the exception
a frame stands for at the other end (of the same class, with its public message and its
simple attributes)."""

from __future__ import annotations

from typing import Any

import msgpack

from dotdo.storage import errors as storage_errors
from dotdo.storage.errors import DotdoError

from dotdo.runtime.core import errors as runtime_errors
from dotdo.runtime.transport.wire import Error

# Attributes an error carries across the wire, by class (simple values only).
_ATTRS = (
    "remote_type", "message", "namespace", "known", "method", "allowed", "chain", "address", "thing_id", "expected", "actual",
    "target", "branch", "conflicts",
)


def _error_classes() -> dict[str, type[DotdoError]]:
    classes: dict[str, type[DotdoError]] = {"DotdoError": DotdoError}
    for module in (storage_errors, runtime_errors):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, DotdoError):
                classes[name] = value
    return classes


ERROR_CLASSES = _error_classes()
"""Error types a peer may name, by class name (the rest arrive as ``DotdoError``)."""


def error_frame(request: int | None, exc: DotdoError) -> Error:
    """The error frame for ``exc``: its class name, public message and attributes.

    An actor's own errors may hold anything: lone surrogates in text are escaped,
    attributes msgpack cannot carry are left out, and a public message that is not text
    becomes the class name, so that the frame always encodes.
    """
    attrs: dict[str, Any] = {}
    for name in _ATTRS:
        value = getattr(exc, name, None)
        if isinstance(value, str):
            value = _utf8(value)
        elif isinstance(value, tuple):
            value = list(value)
        if value is not None and _travels(value):
            attrs[name] = value
    name = type(exc).__name__
    if name not in ERROR_CLASSES:
        name = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in ERROR_CLASSES), "DotdoError")
    public = getattr(exc, "public", None)
    return Error(request, name, _utf8(public) if isinstance(public, str) else name, attrs)


def _utf8(text: str) -> str:
    """``text`` with its lone surrogates (which UTF-8 cannot carry) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _travels(value: Any) -> bool:
    """Whether msgpack can carry ``value`` in an error frame's attributes."""
    try:
        msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def error_from_frame(frame: Error) -> DotdoError:
    """The exception an error frame stands for, of the same class as at the peer."""
    cls = ERROR_CLASSES.get(frame.type, DotdoError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, frame.message)
    exc.public = frame.message
    address = frame.attrs.get("address")
    exc.address = tuple(address) if isinstance(address, list) and len(address) == 2 else None
    for name, value in frame.attrs.items():
        if name in _ATTRS and name != "address":
            setattr(exc, name, tuple(value) if isinstance(value, list) else value)
    return exc
