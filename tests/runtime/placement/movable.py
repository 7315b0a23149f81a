"""A locator whose answers a test changes, and another supervisor as an owner: how the
cluster will move addresses, in one process."""

from __future__ import annotations

import trio

from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.placement.locator import MOVING, Locator, Owner
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport import wire


class Other(Owner):
    """Another supervisor in this process, as an owner (a stand-in for a node)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.label = f"supervisor {sup.env['NAME']}"
        self.calls = 0

    async def call_raw(
        self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float, chain: str | None, path: tuple[str, ...]
    ) -> bytes:
        self.calls += 1
        return await self.sup.call_from_peer(target, steps, timeout=timeout, chain=chain, path=path, trusted=True)

    async def fetch(self, target: ActorId, request: wire.HttpRequest, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.calls += 1
        handler = self.sup.wire_fetch
        assert handler is not None, "give the other supervisor a wire_fetch (dotdo.http.fetch_handler)"
        return await handler(target, request, timeout)


class Movable(Locator):
    """Places each address here unless told otherwise; an address can be put in motion
    and settled later, as a cluster does when a slot changes hands."""

    def __init__(self) -> None:
        self.owners: dict[ActorId, Owner | None] = {}
        self.settled = trio.Event()
        self.asked = 0

    def locate(self, target: ActorId) -> Owner | None:
        self.asked += 1
        return self.owners.get(target)

    async def placed(self, target: ActorId) -> Owner | None:
        while self.owners.get(target) is MOVING:
            await self.settled.wait()
        return self.owners.get(target)

    def settle(self, target: ActorId, owner: Owner | None) -> None:
        self.owners[target] = owner
        self.settled.set()
        self.settled = trio.Event()
