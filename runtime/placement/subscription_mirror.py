"""The subscription index across a cluster: every node's index holds every subscription.

On one machine a sender finds its event's subscribers in the shared subscription
index (``dotdo.storage.subscriptions``) of its data directory. In a cluster the
subscribers live on every node, so each node's index also mirrors the others':

- **publishing**: when a process rewrites an actor's entries from its table (a turn
  that subscribed or unsubscribed, a declaration at activation, an actor received in a
  move), and its node owns the actor's slot, it writes them to etcd under
  ``/dotdo.subs/{namespace}/{hex}``: one key per subscribing actor, holding all its
  entries (deleted when it has none). The owner is the only writer of an actor's key;
  each key holds the state of the actor's table at the time of writing, so the last
  write wins and no order between writes matters;
- **following**: worker 0 of every node reads that prefix (in pages, at one
  revision) and then watches it, and makes its index match it for every actor whose
  slot the node does not own (its own actors' entries it keeps from their tables).

A sender on any node therefore finds every subscriber, and the delivery goes to the
subscriber's owner like any call. A subscription reaches the senders of other nodes
once its turn has committed and etcd's watch has carried it (milliseconds); an event
sent elsewhere in between does not see it, as an event sent before the subscription.

Scale: 100,000 subscriptions cost one etcd key per subscribing actor (a few hundred
bytes each: tens of MB in etcd, well inside its default 2 GB quota) and one row per
subscription in each node's index (the one SQLite file senders already read, with
lookups cached in memory); a change costs one etcd write and one watch event per node.
A node reads the whole prefix only when it starts or its watch breaks.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import trio

from dotdo.storage.subscriptions import Subscription

from dotdo.runtime.cluster.etcd import Compacted, Etcd, EtcdError, EtcdUnavailable, Event, KeyValue
from dotdo.runtime.cluster.slots import slot_of
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.placement.cluster import ClusterLocator
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.cluster")

PREFIX = "/dotdo.subs/"
RETRY = 0.5


def subscription_key(namespace: str, hex_id: str) -> str:
    return f"{PREFIX}{namespace}/{hex_id}"


def encode(entries: list[Subscription]) -> bytes:
    return json.dumps([[s.noun, s.verb, s.method, s.priority, s.timeout, s.name] for s in entries]).encode()


def decode(key: str, value: bytes) -> tuple[str, str, list[Subscription]]:
    """The actor a key names and its entries.

    Raises:
        ValueError: Not a key or value of the mirror.
    """
    parts = key[len(PREFIX) :].split("/")
    if len(parts) != 2:
        raise ValueError(f"not a subscription key: {key!r}")
    namespace, hex_id = parts
    entries = []
    for row in json.loads(value) if value else []:
        noun, verb, method, priority, timeout, name = row
        entries.append(Subscription(noun, verb, namespace, hex_id, name, method, int(priority), timeout))
    return namespace, hex_id, entries


class SubscriptionMirror:
    """Publishes this process's subscribers and (when ``follow``) mirrors the others'
    into the node's index (see the module).

    Args:
        etcd: The cluster's etcd.
        supervisor: This worker's supervisor.
        locator: The node's locator (which slots the node owns).
        follow: Whether this process keeps the node's index in step (worker 0).
    """

    def __init__(self, etcd: Etcd, supervisor: Supervisor, locator: ClusterLocator, *, follow: bool) -> None:
        self.etcd = etcd
        self.sup = supervisor
        self.locator = locator
        self.follow = follow
        self._pending: dict[tuple[str, str], ActorId] = {}
        self._wake = trio.Event()
        self._reread = trio.Event()
        supervisor.subscriptions.on_change.append(self.changed)

    def owns(self, hex_id: str) -> bool:
        config = self.locator.view.state.config
        if config is None:
            return False
        record = self.locator.view.slot(slot_of(hex_id, config.slots))
        return record is not None and record.owner == self.locator.name

    def changed(self, actor: ActorId) -> None:
        """The index entries of ``actor`` were rewritten here: publish them soon."""
        if not self.owns(actor.hex):
            return
        self._pending[actor.namespace, actor.hex] = actor
        self._wake.set()

    def refresh(self) -> None:
        """Read the whole mirror again (the node was cut off: its watch may be dead)."""
        self._reread.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish)
            if self.follow:
                nursery.start_soon(self._follow)

    # -- publishing ------------------------------------------------------------------

    def publish_slots(self, slots: frozenset[int]) -> int:
        """Publish every subscriber of ``slots`` that the index lists (slots this node
        just took, or all of its slots at start: what a crash left unpublished); how
        many actors."""
        config = self.locator.view.state.config
        if config is None:
            return 0
        actors = {(s.namespace, s.hex) for s in self.sup.subscriptions.index.all() if slot_of(s.hex, config.slots) in slots}
        for namespace, hex_id in actors:
            self._pending[namespace, hex_id] = ActorId(namespace, hex_id)
        self._wake.set()
        return len(actors)

    async def _publish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                (namespace, hex_id), actor = self._pending.popitem()
                if not self.owns(hex_id):
                    continue  # moved away: its new owner publishes it
                entries = self.sup.subscriptions.index.of_actor(namespace, hex_id)
                key = subscription_key(namespace, hex_id)
                try:
                    if entries:
                        await self.etcd.put(key, encode(entries))
                    else:
                        await self.etcd.delete(key)
                except EtcdError as exc:
                    log.warning("cannot publish the subscriptions of %s yet: %s", actor, exc)
                    self._pending.setdefault((namespace, hex_id), actor)
                    await trio.sleep(RETRY)

    # -- following -------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            try:
                revision = await self._read_all()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, revision, nursery.cancel_scope)
                    await self._reread.wait()
                    nursery.cancel_scope.cancel()
                self._reread = trio.Event()
            except (EtcdUnavailable, Compacted) as exc:
                log.info("subscription mirror: %s; reading it again", exc)
                await trio.sleep(RETRY)

    async def _read_all(self) -> int:
        kvs, revision = await self.etcd.scan(PREFIX)
        index = self.sup.subscriptions.index
        held: set[tuple[str, str]] = set()
        for kv in kvs:
            actor = self._apply_put(kv)
            if actor is not None:
                held.add(actor)
        for subscription in index.all():  # mirrored entries of actors that have none now
            key = (subscription.namespace, subscription.hex)
            if key not in held and not self.owns(subscription.hex):
                index.replace(subscription.namespace, subscription.hex, [])
        return revision

    async def _watch(self, revision: int, done: trio.CancelScope) -> None:
        try:
            async with self.etcd.watch(PREFIX, revision + 1) as batches:
                async for events, _ in batches:
                    self._apply(events)
        except (EtcdUnavailable, Compacted) as exc:
            log.info("subscription mirror watch ended: %s", exc)
            await trio.sleep(RETRY)
        self._reread.set()
        done.cancel()

    def _apply(self, events: list[Event]) -> None:
        index = self.sup.subscriptions.index
        for event in events:
            if event.type == "put":
                self._apply_put(event.kv)
                continue
            try:
                namespace, hex_id, _ = decode(event.kv.key, b"")
            except ValueError:
                continue
            if not self.owns(hex_id):
                index.replace(namespace, hex_id, [])

    def _apply_put(self, kv: KeyValue) -> tuple[str, str] | None:
        try:
            namespace, hex_id, entries = decode(kv.key, kv.value)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring %s: %s", kv.key, exc)
            return None
        if not self.owns(hex_id):  # this node's own actors: their tables are the truth
            self.sup.subscriptions.index.replace(namespace, hex_id, entries)
        return namespace, hex_id
