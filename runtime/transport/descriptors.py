"""The file-descriptor budget of a serving process: what its open-file limit is spent
on, and how many active actors fit in what is left.

A process out of descriptors fails whatever needs the next one: an accept, a peer link,
an actor's database. So every part of the process that holds descriptors has a bound
the server enforces, the budget adds the bounds up, and the active-actor cap gets what
remains, at ``DESCRIPTORS_PER_ACTOR`` (3) per actor::

    limit (soft RLIMIT_NOFILE)
    = process       its own: stdio, epoll, wakeup sockets, the alarm and subscription
                    indexes (measured, plus a margin)
    + http          --max-connections, and the listeners
    + transport     --max-connections, those still in their handshake, the listeners
    + workers       with N workers: N-1 links out, the peer server's caps (open and in
                    their handshake), its listener
    + reserve       transient opens: a clone's, backup's, compact's or branch's second
                    database, SQLite's temporary files, the history archive's reads
    + websockets    --max-websockets: WebSocket connections, which leave the HTTP cap
                    once upgraded (``websocket_share``)
    + actors        max_active x DESCRIPTORS_PER_ACTOR

WebSockets get a share of their own because they are long-lived and many: a room of a
thousand clients is common. Their share comes on top of the limit the server was
started with when the hard limit allows (the server raises its soft limit by that much,
``raise_soft_limit``, as Go's runtime raises it to the hard limit), else out of it.

``--history`` costs no descriptor while an actor is idle: its archive opens the WAL
and its log only for the moment it copies frames, so its share is in the reserve.

Should the reserve still run short (the system's table full, or a limit lowered under a
running server), an activation that finds no descriptor passivates idle actors and
tries once more, then answers ``Overloaded`` (``dotdo.runtime.core.table``).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from dotdo.storage.errors import DotdoError
from dotdo.storage.opening import DESCRIPTORS_PER_ACTOR

from dotdo.runtime.transport.server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES

PROCESS_OWN = 32
"""Descriptors a serving process holds before any connection or actor: measured 14 in
``dotdo serve --workers 1`` (stdin, stdout, stderr; trio's epoll and two socketpairs;
the alarm and subscription indexes' database, WAL and shared-memory files), about twice
that for what a deployment adds (a log file, a DNS lookup, a worker's dup of stdin)."""
LISTENERS = 2
"""Listening sockets per protocol: one per address the host resolves to (``localhost``
may give IPv4 and IPv6)."""
PEER_CONNECTIONS_PER_WORKER = 4
"""A worker's peer server takes at most this many connections per worker: each other
worker keeps one link to it, opened again after it broke, and the parent probes it.
As many again may be in their handshake."""
MIN_ACTIVE = 16
"""Fewest active actors a server is started with."""
RESERVE_MIN = 128
RESERVE_SHARE = 0.05
DEFAULT_MAX_WEBSOCKETS = 4096
"""WebSockets one serving process holds at most, unless ``--max-websockets`` says."""
WEBSOCKET_SHARE = 0.25
"""Of what a limit that could not be raised leaves the actors, the part the default
WebSocket cap may take."""
UNLIMITED = 65536
"""The limit planned for when the process has none (``RLIM_INFINITY``)."""


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """How one serving process's open-file limit is spent, in descriptors.

    Attributes:
        limit: The soft open-file limit (``ulimit -n``).
        process: The process's own, before any connection or actor.
        http: HTTP connections (``--max-connections``) and the listeners.
        transport: Transport connections (``--max-connections``), those still in their
            handshake, and the listeners.
        workers: Links to and from the other workers (0 with one worker).
        reserve: Transient opens (a lifecycle operation's second database, SQLite's
            temporary files, the history archive).
        per_actor: What each active actor holds.
        websockets: WebSocket connections (``--max-websockets``).
    """

    limit: int
    process: int
    http: int
    transport: int
    workers: int
    reserve: int
    per_actor: int
    websockets: int = 0

    @property
    def fixed(self) -> int:
        """Every part but the actors."""
        return self.process + self.http + self.transport + self.workers + self.reserve + self.websockets

    @property
    def max_active(self) -> int:
        """Active actors that fit in what the fixed parts leave (possibly fewer than
        ``MIN_ACTIVE``, or none)."""
        return max(0, (self.limit - self.fixed) // self.per_actor)

    def needed(self, max_active: int) -> int:
        """The open-file limit that ``max_active`` actors and the fixed parts need."""
        return self.fixed + max_active * self.per_actor

    def admit(self, max_active: int | None) -> int:
        """The active-actor cap to serve with: ``max_active`` when it fits, or with None
        every actor that fits.

        Raises:
            DotdoError: ``max_active`` does not fit, or the limit is too small for the
                fixed parts and ``MIN_ACTIVE`` actors; the message gives the figures
                and the remedy.
        """
        if self.max_active < MIN_ACTIVE:
            raise DotdoError(
                f"the open-file limit ({self.limit}) is too small: the server needs {self.fixed} descriptors "
                f"({self.describe()}) and {MIN_ACTIVE * self.per_actor} for its fewest {MIN_ACTIVE} active actors; "
                f"raise it (ulimit -n {self.needed(MIN_ACTIVE)} or more) or lower --max-connections"
                + (" or --max-websockets" if self.websockets else "")
            )
        if max_active is None:
            return self.max_active
        if max_active > self.max_active:
            raise DotdoError(
                f"--max-active {max_active} does not fit the open-file limit ({self.limit}): {max_active} actors hold "
                f"{max_active * self.per_actor} descriptors ({self.per_actor} each) and the server needs {self.fixed} "
                f"besides ({self.describe()}), so at most {self.max_active} fit; raise the limit "
                f"(ulimit -n {self.needed(max_active)}) or lower --max-active or --max-connections"
                + (" or --max-websockets" if self.websockets else "")
            )
        return max_active

    def describe(self) -> str:
        """The fixed parts, named: ``process 32, HTTP 258, ...``."""
        return (
            f"process {self.process}, HTTP {self.http}, transport {self.transport}, "
            f"worker links {self.workers}, transient reserve {self.reserve}"
            + (f", WebSockets {self.websockets}" if self.websockets else "")
        )


def descriptor_budget(
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    handshakes: int = DEFAULT_MAX_HANDSHAKES,
    workers: int = 1,
    limit: int | None = None,
    websockets: int = 0,
) -> DescriptorBudget:
    """The budget of one serving process (a worker, with ``workers`` > 1).

    Args:
        max_connections: The cap on open HTTP connections, and the one on open
            transport connections (``--max-connections``).
        handshakes: The cap on transport connections still in their handshake.
        workers: Worker processes of the server (``--workers``).
        limit: The open-file limit; None: this process's soft ``RLIMIT_NOFILE``.
        websockets: The cap on WebSocket connections (the reserve is a share of the
            limit without them).
    """
    if limit is None:
        limit = open_file_limit()
    return DescriptorBudget(
        limit=limit,
        process=PROCESS_OWN,
        http=max_connections + LISTENERS,
        transport=max_connections + handshakes + LISTENERS,
        workers=0 if workers <= 1 else (workers - 1) + 2 * peer_connections(workers) + 1,
        reserve=max(RESERVE_MIN, int((limit - websockets) * RESERVE_SHARE)),
        per_actor=DESCRIPTORS_PER_ACTOR,
        websockets=websockets,
    )


def peer_connections(workers: int) -> int:
    """The cap on connections a worker's peer server takes, with ``workers`` workers
    (and its cap on those still in their handshake)."""
    return PEER_CONNECTIONS_PER_WORKER * workers


def open_file_limit() -> int:
    """This process's soft open-file limit (``UNLIMITED`` when it has none)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def websocket_share(
    base: DescriptorBudget, gained: int, max_active: int | None, max_websockets: int | None
) -> int:
    """The WebSocket cap to serve with, when the limit of ``base`` (the budget without
    WebSockets, at the limit the server started with) was raised by ``gained`` for them
    (``raise_soft_limit``): ``max_websockets`` when given (``admit`` then says whether
    it fits); else ``DEFAULT_MAX_WEBSOCKETS``, or what fits of it: what the raise
    gained, plus (when that falls short) part of what the limit leaves the actors,
    ``WEBSOCKET_SHARE`` of it when their cap is the default, all that ``max_active``
    leaves when it is given, never so much that fewer than ``MIN_ACTIVE`` fit."""
    if max_websockets is not None:
        return max_websockets
    room = base.limit - base.fixed - (max_active or MIN_ACTIVE) * base.per_actor
    taken = room if max_active is not None else min(int((base.limit - base.fixed) * WEBSOCKET_SHARE), room)
    return max(0, min(DEFAULT_MAX_WEBSOCKETS, gained + max(0, taken)))


def raise_soft_limit(extra: int) -> int:
    """Raise this process's soft open-file limit by ``extra`` (at most to its hard
    limit); how many descriptors that gained. Processes it starts inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return extra  # no limit to raise
    if extra <= 0:
        return 0
    target = soft + extra if hard == resource.RLIM_INFINITY else min(hard, soft + extra)
    if target <= soft:
        return 0
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return 0
    return target - soft
