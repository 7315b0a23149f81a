"""Who may use the HTTP app: a client token for actors, an admin token for ``/_admin``.

Three kinds of route::

    /_health           open to everyone (load balancers, probes)
    /_admin, /_admin/* the admin token only (lifecycle, alarm listings)
    everything else    the client token or the admin token

A request presents its token as ``Authorization: Bearer <token>``. Tokens are compared
in constant time (``hmac.compare_digest``) and are never logged or echoed. With no token
configured a kind of route is open, which is the default on 127.0.0.1; when a client
token is set but no admin token, the admin routes are closed rather than open.

The msgpack/TCP transport asks for what the client routes ask for: with a client token
set, a connection's hello must present it or the admin token (``dotdo.runtime.transport.server``
compares them, also in constant time).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from dotdo.errors import DotdoError, Forbidden, Unauthorized

HEALTH_PATH = "/_health"
ADMIN_PREFIX = "/_admin"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The secrets a server asks for.

    Attributes:
        client: Needed for every route but ``/_health`` (None: those are open).
        admin: Needed for ``/_admin`` routes; it also opens every client route.
    """

    client: str | None = None
    admin: str | None = None

    def __post_init__(self) -> None:
        for name, token in (("token", self.client), ("admin token", self.admin)):
            if token is not None and (not token or token != token.strip() or not token.isprintable()):
                raise DotdoError(f"the {name} must be non-empty printable text without surrounding spaces")
        if self.client is not None and self.client == self.admin:
            raise DotdoError("the admin token must differ from the client token")

    @property
    def required(self) -> bool:
        """Whether any route asks for a token."""
        return self.client is not None or self.admin is not None

    def check(self, path: str, presented: bytes | None) -> DotdoError | None:
        """Why a request for ``path`` presenting ``presented`` is refused (None: it may
        go on). ``path`` is the decoded path the router matches on."""
        if path == HEALTH_PATH:
            return None
        admin_route = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        is_admin = _same(presented, self.admin)
        if admin_route:
            if is_admin:
                return None
            if self.admin is None and self.client is None:
                return None
            if self.admin is None:
                return Forbidden("admin routes are closed: the server has a client token but no admin token (--admin-token)")
            if _same(presented, self.client):
                return Forbidden("admin routes need the admin token, not the client token")
            return Unauthorized("admin routes need the admin token (Authorization: Bearer <token>)")
        if self.client is None or is_admin or _same(presented, self.client):
            return None
        return Unauthorized("wrong or missing token (Authorization: Bearer <token>)")


def _same(presented: bytes | None, expected: str | None) -> bool:
    """Whether ``presented`` is ``expected``, in time that does not depend on where
    they differ."""
    if presented is None or expected is None:
        return False
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header (None: there is none)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
            return None
    return None
