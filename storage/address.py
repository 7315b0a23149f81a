"""Actor addresses and where their databases live on disk.

An address is ``(namespace, id)``. The namespace is a short identifier; the id is any
text. Neither reaches the filesystem as given: the file name is the SHA-256 of the
address, so ``../``, NUL bytes or 1 KiB of unicode in an id are just bytes to hash::

    <data_dir>/<namespace>/<first 2 hex of digest>/<64 hex digest>.sqlite

The original address is kept inside the database (table ``_dotdo_meta``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from dotdo.storage.errors import InvalidId, InvalidNamespace

MAX_NAMESPACE_LENGTH = 64
MAX_ID_BYTES = 1024

_NAMESPACE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,%d}\Z" % (MAX_NAMESPACE_LENGTH - 1))


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a valid namespace, else raise ``InvalidNamespace``."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        shown = repr(namespace)[:80]
        raise InvalidNamespace(
            f"invalid namespace {shown}: expected a letter followed by up to "
            f"{MAX_NAMESPACE_LENGTH - 1} letters, digits or underscores"
        )
    return namespace


def validate_id(actor_id: object) -> str:
    """Return ``actor_id`` if it is a storable id, else raise ``InvalidId``.

    Any non-empty text up to ``MAX_ID_BYTES`` bytes of UTF-8 is accepted; lone
    surrogates (text that cannot be encoded) are not.
    """
    if not isinstance(actor_id, str):
        raise InvalidId(f"invalid id: expected text, got {type(actor_id).__name__}")
    if not actor_id:
        raise InvalidId("invalid id: it is empty")
    try:
        size = len(actor_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidId("invalid id: it is not valid unicode (lone surrogate)") from None
    if size > MAX_ID_BYTES:
        raise InvalidId(f"invalid id: {size} bytes of UTF-8, the limit is {MAX_ID_BYTES}")
    return actor_id


@dataclass(frozen=True, slots=True)
class Address:
    """Where an actor lives: its namespace and its id, both validated on construction.

    Raises:
        InvalidNamespace: The namespace is not a short identifier.
        InvalidId: The id is empty, not text, or longer than ``MAX_ID_BYTES``.
    """

    namespace: str
    id: str

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        validate_id(self.id)

    @property
    def digest(self) -> str:
        """The SHA-256 of the address, as 64 hex characters."""
        raw = self.namespace.encode("ascii") + b"\x00" + self.id.encode("utf-8")
        return hashlib.sha256(raw).hexdigest()

    def path(self, data_dir: Path) -> Path:
        """The database file for this address under ``data_dir``."""
        digest = self.digest
        return data_dir / self.namespace / digest[:2] / f"{digest}.sqlite"

    def __str__(self) -> str:
        shown = self.id if len(self.id) <= 80 else self.id[:77] + "..."
        return f"{self.namespace}/{shown}"
