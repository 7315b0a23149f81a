"""Values that cross between actors: arguments and results, copied through msgpack.

Every call's arguments and result are encoded at the sender and decoded at the receiver,
in memory as on the wire. So the two sides never share a mutable object, a value that
cannot travel fails at the call site, and in-process calls behave exactly like remote
ones. The types are those of ``dotdo.storage.codec`` plus *actor references*: a stub passed
as an argument or returned as a result arrives as a stub bound to the receiving side.

Actor references are msgpack extension type 1 whose payload is the msgpack array
``[namespace, hex_id, name_or_nil]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgpack

from dotdo.storage import codec
from dotdo.storage.codec import unstorable
from dotdo.storage.errors import InvalidId, InvalidValue

from dotdo.runtime.core.ids import ActorId, id_from_string, named

REF_EXT = 1


class Referable(Protocol):
    """Anything that names an actor and can travel as a reference (stubs do)."""

    def __dotdo_ref__(self) -> ActorId: ...


RefFactory = Callable[[ActorId], Any]


def _default(obj: object) -> object:
    ref = getattr(obj, "__dotdo_ref__", None)
    if ref is not None:
        target: ActorId = ref()
        return msgpack.ExtType(REF_EXT, msgpack.packb([target.namespace, target.hex, target.name]))
    raise unstorable(obj)


def pack(value: Any) -> bytes:
    """Encode a value for another actor.

    Raises:
        InvalidValue: Something in ``value`` cannot travel (the message says what).
    """
    return codec.encode(value, _default)


def unpack(raw: bytes, make_ref: RefFactory | None = None) -> Any:
    """Decode a value from ``pack``; references become ``make_ref(actor_id)``.

    Raises:
        InvalidValue: ``raw`` is not a valid encoding, or holds a bad reference.
    """

    def ext_hook(code: int, data: bytes) -> Any:
        if code != REF_EXT:
            raise InvalidValue(f"unknown msgpack extension type {code}")
        try:
            namespace, hex_id, name = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise InvalidValue(f"malformed actor reference: {exc}") from None
        actor_id = id_from_string(namespace, hex_id)
        if name is not None:
            if not isinstance(name, str):
                raise InvalidValue("malformed actor reference: name is not text")
            try:
                actor_id = named(actor_id.namespace, actor_id.hex, name)
            except InvalidId as exc:
                raise InvalidValue(f"malformed actor reference: {exc}") from None
        return make_ref(actor_id) if make_ref is not None else actor_id

    try:
        return msgpack.unpackb(raw, raw=False, timestamp=3, strict_map_key=False, ext_hook=ext_hook)
    except InvalidValue:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise InvalidValue(f"malformed value: {type(exc).__name__}: {exc}") from None


# Types whose values come back from ``unpack(pack(value))`` equal and of the same type;
# being immutable, they can be handed over as they are.
_AS_IS = frozenset({type(None), bool, float})
_MAX_LENGTH = 2**32  # msgpack's limit for str and bin


def copy(value: Any, make_ref: RefFactory | None = None) -> Any:
    """What the receiver of ``value`` gets: ``unpack(pack(value), make_ref)``.

    None, bools, floats, 64-bit ints, ASCII text and bytes are immutable and come back
    unchanged, so they skip the round trip.

    Raises:
        InvalidValue: Something in ``value`` cannot travel.
    """
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is int:
        if -(2**63) <= value < 2**64:
            return value
    elif kind is str:
        if value.isascii() and len(value) < _MAX_LENGTH:
            return value
    elif kind is bytes:
        if len(value) < _MAX_LENGTH:
            return value
    return unpack(pack(value), make_ref)
