"""The locator: the one place that decides where an address runs.

Every path that reaches an actor (a call, a pipeline step, an HTTP request, an event
delivery, an alarm, a lifecycle operation) asks the locator once, at its entry:
``locate(target)`` answers None when the address runs here, or the ``Owner`` to relay
the call to. Nothing else computes an owner.

Ownership may change at run time (the cluster moves slots between nodes). The interface
allows for it in three ways:

- an ``Owner`` may be ``moving``: the address is between two owners, and a call waits
  (``placed``) until it has one, then goes there, or runs here;
- a call that was waiting for an actor's turn here when its address moved away is told
  ``Moved`` by the turn core, and the supervisor sends it on (``placed`` again);
- whoever moves ownership tells the supervisor (``Supervisor.moved``), which closes
  the activations it no longer owns once their turns end.

``Locator`` itself places everything here (one process). ``WorkerLocator`` splits the
addresses of a server between its worker processes (``worker_of``, a fixed partition).
"""

from __future__ import annotations

from collections.abc import Sequence

from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.peers import Peers


def worker_of(hex_id: str, workers: int) -> int:
    """Which of ``workers`` worker processes owns the actor with this 64-hex id (its
    first 32 bits, which are uniform: the id is a hash). The same in every process and
    run."""
    return int(hex_id[:8], 16) % workers


class Owner:
    """Where a call goes when it does not run here: a link to the process that owns the
    address (or, while ``moving``, a promise of one)."""

    moving = False
    label = "another owner"

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        """Run a call (or pipeline) on the owner; its result packed."""
        raise NotImplementedError

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Hand an HTTP request to the owner's actor; its (status, headers, body)."""
        raise NotImplementedError


class Moving(Owner):
    """The owner of an address that is between two owners: a call to it waits for the
    move to end (``Locator.placed``), then goes to the new one."""

    moving = True
    label = "an owner being chosen"


MOVING = Moving()
"""What ``locate`` answers for an address that is moving (it holds no state)."""


class Locator:
    """Places every address here (a server of one process)."""

    def locate(self, target: ActorId) -> Owner | None:
        """None when ``target`` runs here, else the owner to relay to (which may be
        ``moving``)."""
        return None

    async def placed(self, target: ActorId) -> Owner | None:
        """Like ``locate``, once ``target`` is not moving (waiting for that)."""
        return self.locate(target)

    async def elsewhere(self, target: ActorId, owner: Owner) -> Owner | None:
        """Where ``target`` runs once that is no longer ``owner`` (a call to it was not
        sent: its owner went away). Here nothing moves by itself: ``owner`` at once,
        and the caller gives up."""
        return owner

    def serves(self, hex_id: str) -> bool:
        """Whether actors with this id run here (the alarm index wakes only those)."""
        return True

    @property
    def partial(self) -> bool:
        """Whether some addresses run elsewhere (then ``serves`` filters)."""
        return False

    def describe(self) -> dict[str, int]:
        """What ``/_health`` says of this process's place (empty: nothing)."""
        return {}

    async def aclose(self) -> None:
        """Close the links to other owners."""


class Worker(Owner):
    """Another worker process of this server, reached over its link."""

    def __init__(self, peers: Peers, index: int) -> None:
        self.peers = peers
        self.index = index
        self.label = f"worker {index}"

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        return await self.peers.call_raw(self.index, target, steps, timeout, chain, path)

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return await self.peers.fetch(self.index, target, request, timeout)


class WorkerLocator(Locator):
    """Worker ``peers.index`` of ``peers.count``: each address belongs to one worker
    (``worker_of``); the others are reached over ``peers``."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.index = peers.index
        self.count = peers.count
        self._owners: Sequence[Worker | None] = [
            None if i == peers.index else Worker(peers, i) for i in range(peers.count)
        ]

    def locate(self, target: ActorId) -> Owner | None:
        return self._owners[worker_of(target.hex, self.count)]

    def serves(self, hex_id: str) -> bool:
        return worker_of(hex_id, self.count) == self.index

    @property
    def partial(self) -> bool:
        return self.count > 1

    def describe(self) -> dict[str, int]:
        return {"worker": self.index, "workers": self.count}

    async def aclose(self) -> None:
        await self.peers.aclose()
