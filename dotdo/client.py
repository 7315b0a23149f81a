"""``connect``: stubs for actors served by another process, over the transport.

::

    S = await connect("tcp://127.0.0.1:8788", token=...)
    await S.Customer("alice").notify("hi")
    await S.aclose()

    async with connect("tcp://127.0.0.1:8788") as S:   # closes on exit
        ...

    # the nodes of a cluster: the first that answers (each relays to the owner)
    S = await connect(["tcp://10.0.0.1:8788", "tcp://10.0.0.2:8788"])
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Any
from urllib.parse import urlsplit

from dotdo.runtime.core.errors import ConnectionLost
from dotdo.runtime.transport.connection import Connection, RemoteNamespaces
from dotdo.storage.errors import InvalidInput

TOKEN_ENV = "DOTDO_TOKEN"


def parse_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` as (host, port).

    Raises:
        InvalidInput: Another scheme, or no host or port.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise InvalidInput(f"a transport address looks like tcp://host:port, got {url!r}")
    return parts.hostname, port


class _Connect:
    """What ``connect`` returns: await it, or use it with ``async with``."""

    __slots__ = ("_urls", "_kwargs", "_S")

    def __init__(self, urls: list[str], kwargs: dict[str, Any]) -> None:
        self._urls = urls
        self._kwargs = kwargs
        self._S: RemoteNamespaces | None = None

    async def _open(self) -> RemoteNamespaces:
        """A connection to the first address that answers, in order."""
        addresses = [parse_url(url) for url in self._urls]  # refuse a bad one before trying any
        failures: list[str] = []
        for url, (host, port) in zip(self._urls, addresses):
            try:
                connection = await Connection.open(host, port, **self._kwargs)
            except ConnectionLost as exc:  # nothing answered there: the next one
                failures.append(f"{url}: {exc}")
                continue
            return connection.S
        if len(failures) == 1:
            raise ConnectionLost(failures[0])
        raise ConnectionLost("none of the servers answered: " + "; ".join(failures))

    def __await__(self) -> Generator[Any, None, RemoteNamespaces]:
        return self._open().__await__()

    async def __aenter__(self) -> RemoteNamespaces:
        self._S = await self._open()
        return self._S

    async def __aexit__(self, *exc_info: object) -> None:
        if self._S is not None:
            await self._S.aclose()


def connect(
    url: str | Sequence[str], *, token: str | None = None, max_inflight: int = 64, connect_timeout: float = 10.0
) -> _Connect:
    """Connect to a dotdo server's transport (``dotdo serve`` prints its address).

    Args:
        url: ``tcp://host:port``; or several (a list, or one string with commas), such
            as the nodes of a cluster: they are tried in order and the first that
            answers is used (any node reaches every actor). A connection that breaks
            later is not moved to another: connect again.
        token: The server's client token (its admin token works too); defaults to
            ``$DOTDO_TOKEN``.
        max_inflight: Calls this connection sends before waiting for replies (the
            server's own cap, if lower, wins).
        connect_timeout: Seconds to connect and shake hands.

    Raises:
        Unauthorized: Wrong or missing token (nothing was run).
        ConnectionLost: Nothing answered there.
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    urls = [part.strip() for part in url.split(",")] if isinstance(url, str) else list(url)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise InvalidInput(f"connect() needs one or more tcp://host:port addresses, got {url!r}")
    return _Connect(urls, {"token": token, "max_inflight": max_inflight, "connect_timeout": connect_timeout})
