"""This node's membership: an etcd lease, the node's key bound to it, and the local
deadline until which the node may serve.

A node joins by granting a lease (TTL ``ttl``, 5 s by default) and creating its key,
``{prefix}/nodes/{name}``, bound to it, in one transaction that compares the key's
``create_revision`` with 0: two live processes never hold one name. The key names the
node's data directory (``NodeInfo.data_id``): a process restarted on the same data
within the old lease's TTL takes its key over (revoking the old lease), while another
data directory under a taken name is refused (``NodeNameTaken``), so that a node's
slots are never served from a different directory's files.

The lease is kept alive every ``ttl / 3`` seconds (more often while etcd does not
answer). A keep-alive sent at local time ``t`` that etcd answers with TTL ``s`` means
etcd cannot expire the lease before ``t + s`` by its own clock, which runs no faster
than ours in any way that matters over seconds; the node's **deadline** is ``t + s -
margin``. Time here is trio's monotonic clock: a process paused (SIGSTOP, a long
garbage collection) wakes up past its deadline and is not ``serving`` before it has
renewed, and no wall clock is compared between machines.

Past the deadline the node is ``lost``: whoever serves on its behalf stops (the
cluster's locator refuses to place anything here, and the node passivates its actors).
If the lease still exists the next keep-alive makes the node serving again; if etcd
expired it (``LeaseExpired``), the session joins again with a new lease.

A node of several worker processes holds one lease: worker 0's session joins
(``follow=False``), and each other worker's session follows it (``follow=True``): it
reads the lease from the node's key (which must name this data directory), keeps that
same lease alive itself and computes its own deadline from its own keep-alives, so
that no worker trusts another's clock or liveness. A follower never creates, takes
over or revokes anything; after an expiry it waits for the leader's new lease.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from dotdo.runtime.cluster.etcd import Compare, Etcd, EtcdError, EtcdUnavailable, LeaseExpired, Op
from dotdo.storage.errors import DotdoError

log = logging.getLogger("dotdo.cluster")

DEFAULT_TTL = 5
RETRY = 0.25
"""Seconds between keep-alive attempts while etcd does not answer."""


class NodeNameTaken(DotdoError):
    """Another live node, with another data directory, holds this node's name."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node's key says of it.

    Attributes:
        name: The node's name in the cluster (``--node``).
        advertise: ``host:port`` of its transport, where other nodes reach it.
        data_id: The identity of its data directory (made once, kept in the directory).
        http: ``host:port`` of its HTTP server (for ``dotdo cluster status``).
    """

    name: str
    advertise: str
    data_id: str
    http: str = ""

    def encode(self) -> bytes:
        return json.dumps({"advertise": self.advertise, "data_id": self.data_id, "http": self.http}, sort_keys=True).encode()

    @classmethod
    def decode(cls, name: str, value: bytes) -> NodeInfo:
        """A node's record from its key's value.

        Raises:
            ValueError: The value is not a node record.
        """
        try:
            body = json.loads(value)
            info = cls(name, body["advertise"], body["data_id"], body.get("http", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"node {name}: not a node record: {value[:80]!r}") from exc
        if not all(isinstance(v, str) for v in (info.advertise, info.data_id, info.http)):
            raise ValueError(f"node {name}: not a node record: {value[:80]!r}")
        return info


def node_key(prefix: str, name: str) -> str:
    return f"{prefix}/nodes/{name}"


class Session:
    """This node's lease and deadline. ``await nursery.start(session.run)`` joins (it
    returns once the node is serving) and keeps the lease alive until cancelled; then
    the lease is revoked, and the node's key goes with it.

    Args:
        etcd: The cluster's etcd.
        prefix: The cluster's key prefix.
        info: What the node's key says.
        ttl: The lease's TTL in whole seconds (at least 2).
        margin: Seconds the deadline keeps clear of the lease's expiry (default: a
            fifth of the TTL, at least 0.5 s).
        clock: The monotonic clock (trio's by default; tests pass another).
        follow: Keep alive the lease of the node's key, made by another process of
            the node (see the module), instead of joining.
    """

    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        info: NodeInfo,
        *,
        ttl: int = DEFAULT_TTL,
        margin: float | None = None,
        clock: Callable[[], float] = trio.current_time,
        follow: bool = False,
    ) -> None:
        if not isinstance(ttl, int) or ttl < 2:
            raise ValueError(f"the lease TTL must be a whole number of seconds, at least 2 (got {ttl!r})")
        self.etcd = etcd
        self.prefix = prefix
        self.info = info
        self.ttl = ttl
        self.margin = max(0.5, ttl / 5) if margin is None else margin
        if not 0 < self.margin < ttl / 2:
            raise ValueError(f"the margin must be positive and under half the TTL (got {self.margin!r})")
        self._clock = clock
        self.follow = follow
        self.lease = 0
        self.deadline = -float("inf")
        self.joins = 0  # leases this session held (a new one after each expiry)
        self.joined_revision = 0
        """The etcd revision at which the node's key took its current lease: what
        happened to the node's slots while it was away is at or before it (a view must
        have seen it before the node serves: ``ClusterLocator.serving``)."""
        self._cut_off = False  # past the deadline for want of etcd's answer (and said so)
        self._changed = trio.Event()

    @property
    def key(self) -> str:
        return node_key(self.prefix, self.info.name)

    @property
    def serving(self) -> bool:
        """Whether the node may serve now: before its deadline."""
        return self._clock() < self.deadline

    def remaining(self) -> float:
        """Seconds until the deadline (negative past it)."""
        return self.deadline - self._clock()

    async def changed(self) -> None:
        """Wait until the deadline moves (renewed, or a new lease after expiry)."""
        await self._changed.wait()

    def _set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, report started, and keep the lease alive until cancelled.

        Raises:
            NodeNameTaken: Another data directory's node holds the name.
            EtcdUnavailable: etcd did not answer while joining.
        """
        try:
            await self._join()
            task_status.started()
            while True:
                await self._renew()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._leave()

    async def _join(self) -> None:
        if self.follow:
            await self._follow()
            return
        sent = self._clock()
        lease = await self.etcd.grant(self.ttl)
        try:
            revision = await self._claim(lease)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await _revoke_quietly(self.etcd, lease)
            raise
        self.lease = lease
        self.joins += 1
        self.joined_revision = revision
        self._set_deadline(sent + self.ttl - self.margin)
        log.info("node %s joined the cluster (lease %x)", self.info.name, lease)

    async def _follow(self) -> None:
        """Take the lease of the node's key once it names this data directory, and
        renew it once: the deadline comes from this process's own keep-alive."""
        while True:
            current = await self.etcd.get(self.key)
            theirs = None
            if current is not None:
                try:
                    theirs = NodeInfo.decode(self.info.name, current.value)
                except ValueError:
                    theirs = None
            if theirs is not None and theirs.data_id == self.info.data_id and current is not None and current.lease:
                sent = self._clock()
                try:
                    granted = await self.etcd.keepalive(current.lease)
                except LeaseExpired:
                    granted = 0
                if granted:
                    self.lease = current.lease
                    self.joins += 1
                    self.joined_revision = current.mod_revision  # the leader's claim
                    self._set_deadline(sent + granted - self.margin)
                    return
            await trio.sleep(RETRY)

    async def _claim(self, lease: int) -> int:
        """Create the node's key under ``lease``, or take over our own from a process
        that ran on the same data directory; the revision of the write."""
        value = self.info.encode()
        for _ in range(5):
            result = await self.etcd.txn(
                [Compare.create_revision(self.key, "==", 0)], [Op.put(self.key, value, lease)], [Op.get(self.key)]
            )
            if result.succeeded:
                return result.revision
            held = result.responses[0]
            if not held:
                continue  # it expired between the compare and the get: try again
            current = held[0]
            try:
                theirs = NodeInfo.decode(self.info.name, current.value)
            except ValueError:
                theirs = None
            if theirs is None or theirs.data_id != self.info.data_id:
                raise NodeNameTaken(
                    f"the node name {self.info.name!r} is held by a live node with another data directory "
                    f"({theirs.advertise if theirs else 'unreadable record'}); choose another --node, or stop that node"
                )
            # Our own key, from a process on this data directory that is gone (or this
            # one, after its lease expired): replace it and end its lease.
            replaced = await self.etcd.txn(
                [Compare.mod_revision(self.key, "==", current.mod_revision)], [Op.put(self.key, value, lease)]
            )
            if replaced.succeeded:
                if current.lease and current.lease != lease:
                    await _revoke_quietly(self.etcd, current.lease)
                return replaced.revision
        raise EtcdError(f"could not create the key of node {self.info.name!r}: it kept changing")

    async def _renew(self) -> None:
        """One keep-alive, on time (a third of the TTL after the last one, sooner when
        etcd did not answer); a new lease when etcd expired the old one."""
        await trio.sleep(self.ttl / 3)
        while True:
            sent = self._clock()
            try:
                with trio.fail_after(max(self.ttl / 3, RETRY)):
                    granted = await self.etcd.keepalive(self.lease)
            except LeaseExpired:
                log.warning("node %s: its lease expired in etcd; joining again", self.info.name)
                self._set_deadline(min(self.deadline, sent))
                await self._rejoin()
                return
            except (EtcdUnavailable, trio.TooSlowError) as exc:
                if not self._cut_off:
                    self._cut_off = True  # said once, not at every retry
                    why = f"no answer within {max(self.ttl / 3, RETRY):.3g} s" if isinstance(exc, trio.TooSlowError) else str(exc)
                    left = self.remaining()
                    when = f"it stops serving in {left:.2f} s" if left > 0 else "it is not serving"
                    log.warning("node %s: etcd does not answer (%s); %s unless etcd answers", self.info.name, why, when)
                await trio.sleep(RETRY)
                continue
            if self._cut_off:
                self._cut_off = False
                log.warning("node %s: etcd answers again", self.info.name)
            self._set_deadline(sent + granted - self.margin)
            return

    async def _rejoin(self) -> None:
        while True:
            try:
                await self._join()
                return
            except EtcdUnavailable:
                await trio.sleep(RETRY)

    async def _leave(self) -> None:
        if self.follow:
            self._set_deadline(-float("inf"))
            self.lease = 0
        elif self.lease:
            await _revoke_quietly(self.etcd, self.lease)
            self._set_deadline(-float("inf"))
            self.lease = 0

    def __repr__(self) -> str:
        return f"<Session {self.info.name} lease={self.lease:x} serving={self.serving}>"


async def _revoke_quietly(etcd: Etcd, lease: int) -> None:
    try:
        await etcd.revoke(lease)
    except EtcdError as exc:
        log.info("could not revoke lease %x: %s (it expires on its own)", lease, exc)
