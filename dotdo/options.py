"""What ``dotdo serve`` can be told: ``ServeOptions``, read by the server
(``dotdo.server``) and by the parent of its worker processes (``dotdo.workers``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotdo.connections import DEFAULT_MAX_CONNECTIONS
from dotdo.http import DEFAULT_MAX_BODY
from dotdo.storage.options import Durability


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """Everything ``dotdo serve`` can be told (see ``dotdo serve --help``).

    ``max_active`` None: every active actor the open-file limit leaves room for
    (``dotdo.runtime.transport.descriptors``); a number that does not fit is refused at start-up.
    """

    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: Path = Path("dotdo-data")
    durability: Durability = Durability.NORMAL
    history: float = 0.0
    read_only: bool = False
    max_body: int = DEFAULT_MAX_BODY
    max_ws_message: int = 1024 * 1024
    idle_timeout: float = 120.0
    max_active: int | None = None
    call_timeout: float = 30.0
    cpu_limit: float | None = 30.0
    max_mailbox: int = 1000
    shutdown_grace: float = 10.0
    keep_alive_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_websockets: int | None = None
    """WebSocket connections one process holds at most (None: 4,096, or what fits)."""
    debug: bool = False
    access_log: bool = False
    """A line per HTTP request and WebSocket upgrade on the ``dotdo.access`` logger."""
    log_format: str = "text"
    """How worker processes log: ``text`` or ``json`` (``dotdo.logs``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    rpc_port: int | None = None
    token: str | None = None
    admin_token: str | None = None
    workers: int = 1
    cluster: tuple[str, ...] = ()
    """etcd's client URLs: with any, the server is a node of that cluster."""
    node: str | None = None
    advertise: str | None = None
    cluster_secret: str | None = field(default=None, repr=False)
    lease_ttl: int = 5
    slots: int = 256
    drain_timeout: float = 120.0
    replicas: int = 2
    """Copies of each of a cluster node's slots kept on other nodes (0: none)."""
    ack: str = "quorum"
    """Replicas holding a commit before its turn's reply leaves: quorum, all or none."""

    def transport_port(self) -> int | None:
        """The transport's port: ``rpc_port`` if given (0: no transport), else the HTTP
        port + 1 (a free port when the HTTP port is picked freely)."""
        if self.rpc_port is not None:
            return self.rpc_port or None
        return self.port + 1 if self.port else 0
