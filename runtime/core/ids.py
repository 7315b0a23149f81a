"""Actor ids: 64 hex characters, derived from a name, parsed from a string, or random.

An id is 32 bytes shown as hex: 28 bytes of body and a 4-byte tag that binds the body to
its namespace. The tag lets ``id_from_string`` refuse an id minted for another
namespace (or a mistyped one) instead of silently creating a new empty actor.

- ``id_from_name(ns, name)``: the body is a hash of the namespace and the name, so the
  same name always reaches the same actor.
- ``new_unique_id(ns)``: the body is 28 random bytes (224 bits): it never repeats.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass, field

from dotdo.storage.address import Address, validate_namespace
from dotdo.storage.errors import InvalidId

MAX_NAME_BYTES = 512

_HEX_RE = re.compile(r"[0-9a-f]{64}\Z")


def _tag(namespace: str, body: bytes) -> bytes:
    return hashlib.sha256(b"dotdo-id\x00" + namespace.encode("ascii") + b"\x00" + body).digest()[:4]


@dataclass(frozen=True, slots=True)
class ActorId:
    """The identity of one actor. Compares and hashes by namespace and hex only.

    Attributes:
        namespace: The actor kind's namespace.
        hex: 64 lowercase hex characters.
        name: The name it was derived from, when it was (not part of equality).
    """

    namespace: str
    hex: str
    name: str | None = field(default=None, compare=False)

    @property
    def address(self) -> Address:
        """The storage address of this actor."""
        return Address(self.namespace, self.hex)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name if self.name is not None else self.hex}"

    def __repr__(self) -> str:
        named = f" name={self.name!r}" if self.name is not None else ""
        return f"<ActorId {self.namespace}/{self.hex[:16]}…{named}>"


def _validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidId(f"invalid name: expected text, got {type(name).__name__}")
    if not name:
        raise InvalidId("invalid name: it is empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidId("invalid name: it is not valid unicode (lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise InvalidId(f"invalid name: {size} bytes of UTF-8, the limit is {MAX_NAME_BYTES}")
    return name


def id_from_name(namespace: str, name: str) -> ActorId:
    """The id for ``name`` in ``namespace``: the same name always gives the same id.

    Raises:
        InvalidNamespace: The namespace is not a short identifier.
        InvalidId: The name is empty, not text or over ``MAX_NAME_BYTES``.
    """
    validate_namespace(namespace)
    _validate_name(name)
    body = hashlib.sha256(
        b"dotdo-name\x00" + namespace.encode("ascii") + b"\x00" + name.encode("utf-8")
    ).digest()[:28]
    return ActorId(namespace, (body + _tag(namespace, body)).hex(), name)


def new_unique_id(namespace: str) -> ActorId:
    """A fresh random id in ``namespace`` (224 random bits: it never repeats)."""
    validate_namespace(namespace)
    body = secrets.token_bytes(28)
    return ActorId(namespace, (body + _tag(namespace, body)).hex())


def id_from_string(namespace: str, value: str) -> ActorId:
    """Parse an id previously produced for ``namespace`` (its ``hex``).

    Raises:
        InvalidId: Not 64 lowercase hex characters, or minted for another namespace.
    """
    validate_namespace(namespace)
    if not isinstance(value, str) or not _HEX_RE.match(value):
        shown = repr(value)[:80]
        raise InvalidId(f"invalid id {shown}: expected 64 lowercase hex characters")
    raw = bytes.fromhex(value)
    if _tag(namespace, raw[:28]) != raw[28:]:
        raise InvalidId(f"invalid id: {value[:16]}… is not an id of namespace {namespace!r}")
    return ActorId(namespace, value)


def is_id_of(namespace: str, value: str) -> bool:
    """Whether ``value`` is a well-formed id of ``namespace``."""
    if not _HEX_RE.match(value):
        return False
    raw = bytes.fromhex(value)
    return _tag(namespace, raw[:28]) == raw[28:]


@functools.lru_cache(maxsize=4096)
def named(namespace: str, hex_id: str, name: str) -> ActorId:
    """The id ``hex_id`` of ``namespace`` carrying ``name``, which must be the name it
    was derived from: a peer cannot give an actor a name that is not its own (the
    actor would keep it as ``self.id.name``). Checked once per triple (a name is at
    most ``MAX_NAME_BYTES``, so the cache holds at most 2 MiB of names).

    Raises:
        InvalidId: ``name`` is not the name of that id (or is no valid name).
    """
    if id_from_name(namespace, name).hex != hex_id:
        raise InvalidId(f"the name {name[:64]!r} is not the name of {namespace} id {hex_id[:16]}...")
    return ActorId(namespace, hex_id, name)


def resolve(namespace: str, name_or_id: str) -> ActorId:
    """An id from text that is either a 64-hex id of this namespace or a name."""
    if len(name_or_id) == 64 and is_id_of(namespace, name_or_id):
        return ActorId(namespace, name_or_id)
    return id_from_name(namespace, name_or_id)
