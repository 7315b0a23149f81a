"""Errors across the transport: each arrives as the class it was sent as."""

from __future__ import annotations

import pytest

from dotdo.runtime.transport import wire, wire_errors
from dotdo.runtime.core.errors import ActorError, DeadlockError, MethodNotAllowed, Overloaded
from dotdo.storage.errors import DotdoError, InvalidValue, OutOfDescriptors


@pytest.mark.parametrize(
    "error",
    [
        ActorError("ValueError", "no stock", address=("Shop", "ab" * 32)),
        MethodNotAllowed("Shop", "nope", ["a", "b"]),
        DeadlockError("stuck", ["Shop/a", "Shop/b"]),
        Overloaded("busy", address=("Shop", "cd" * 32)),
        OutOfDescriptors("no descriptor left", address=("Shop", "ab" * 32)),
        InvalidValue("cannot travel"),
        DotdoError("plain"),
    ],
)
def test_errors_cross_with_their_class_and_attributes(error: DotdoError) -> None:
    frame = wire.decode(wire.encode(wire_errors.error_frame(7, error))[wire.HEADER.size :])
    assert isinstance(frame, wire.Error)
    back = wire_errors.error_from_frame(frame)
    assert type(back) is type(error) and str(back) == str(error) and back.address == error.address
    for name in ("remote_type", "message", "method", "allowed", "chain"):
        assert getattr(back, name, None) == getattr(error, name, None)


def test_an_unknown_error_type_arrives_as_a_dotdo_error() -> None:
    back = wire_errors.error_from_frame(wire.Error(1, "SomethingNew", "from a newer server"))
    assert type(back) is DotdoError and str(back) == "from a newer server"
