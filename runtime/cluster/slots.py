"""The slot table of a cluster: which node owns each slot of addresses, at which epoch.

Addresses hash to a fixed number of slots (``slot_of``, chosen when the cluster is
made and kept in etcd with it). Each slot has one record in etcd, under
``{prefix}/slots/{slot:05d}``, holding its owner and, while it moves, the node it moves
to. A record's epoch is its etcd ``mod_revision``: every change of owner or state is a
transaction that compares it, so an owner that acts on an old view of a slot fails
instead of overwriting a newer one, and a node serves a slot only at the epoch it was
given it at.

The records say where a slot lives, never where it could live: a node that dies keeps
its slots (they are unavailable until it returns: its files are the only copy). Only
their owner moves them, to the node ``plan`` names, after handing its actors over.

``plan`` is a pure function of the table and the live nodes, the same on every node:
the nodes that can take slots (live, not draining) end up with equal shares (within
one), and as few slots move as that allows: a draining node's slots first, then the
surplus of the nodes above their share, each to the nodes below theirs in name order.
This module does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_SLOTS = 256
MAX_SLOTS = 16384


def slot_of(hex_id: str, slots: int) -> int:
    """Which of ``slots`` slots the actor with this 64-hex id is in: bits 32 to 63 of
    the id, independent of the first 32 that split a node's actors between its workers
    (``worker_of``), so every worker gets a share of every slot."""
    return int(hex_id[8:16], 16) % slots


def slot_key(prefix: str, slot: int) -> str:
    """The etcd key of a slot's record."""
    return f"{prefix}/slots/{slot:05d}"


def parse_slot_key(prefix: str, key: str) -> int | None:
    """The slot a key of the table names, or None for a key that is not a slot's."""
    head = f"{prefix}/slots/"
    if not key.startswith(head) or not key[len(head) :].isdigit():
        return None
    return int(key[len(head) :])


@dataclass(frozen=True, slots=True)
class SlotRecord:
    """One slot as etcd holds it.

    Attributes:
        slot: The slot's number.
        owner: The node that holds the slot and its actors' files.
        epoch: The record's etcd revision: what a change compares and what fences the
            owners before it.
        moving_to: While the owner hands the slot over, the node that takes it; None
            when it is not moving. Calls to a moving slot wait for the move to end.
        replicas: The nodes that keep copies of the slot's actors (``--replicas``),
            besides its owner, in the order of their assignment.
        promoting: The owner took the slot over from a dead owner as its replica and
            is making its copies the actors' databases; calls wait, as for a move.
        in_sync: The replicas that hold every acknowledged commit of the slot's actors
            (a subset of ``replicas``): a reply waits for each of them, and only they
            can take the slot over. A replica joins once it has caught up; one that
            lags or dies is taken out (by the owner, in one transaction) before a
            reply leaves without it.
    """

    slot: int
    owner: str
    epoch: int
    moving_to: str | None = None
    replicas: tuple[str, ...] = ()
    promoting: bool = False
    in_sync: tuple[str, ...] = ()

    @property
    def moving(self) -> bool:
        return self.moving_to is not None or self.promoting

    def encode(self) -> bytes:
        """The record's value in etcd (the epoch is etcd's revision, not stored)."""
        body: dict[str, object] = {"owner": self.owner}
        if self.moving_to is not None:
            body["moving_to"] = self.moving_to
        if self.replicas:
            body["replicas"] = list(self.replicas)
        if self.promoting:
            body["promoting"] = True
        if self.in_sync:
            body["in_sync"] = list(self.in_sync)
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, slot: int, value: bytes, epoch: int) -> SlotRecord:
        """A record from its value in etcd.

        Raises:
            ValueError: The value is not a slot record.
        """
        try:
            body = json.loads(value)
            owner = body["owner"]
            moving_to = body.get("moving_to")
            replicas = body.get("replicas", [])
            promoting = body.get("promoting", False)
            in_sync = body.get("in_sync", [])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"slot {slot}: not a slot record: {value[:80]!r}") from exc
        if (
            not isinstance(owner, str)
            or not (moving_to is None or isinstance(moving_to, str))
            or not isinstance(replicas, list)
            or not all(isinstance(r, str) for r in replicas)
            or not isinstance(promoting, bool)
            or not isinstance(in_sync, list)
            or not all(isinstance(r, str) and r in replicas for r in in_sync)
        ):
            raise ValueError(f"slot {slot}: not a slot record: {value[:80]!r}")
        return cls(slot, owner, epoch, moving_to, tuple(replicas), promoting, tuple(in_sync))


@dataclass(frozen=True, slots=True)
class Move:
    """One slot that ``plan`` moves: from its owner to another node."""

    slot: int
    source: str
    target: str


def shares(slots: int, nodes: Iterable[str]) -> dict[str, int]:
    """How many of ``slots`` slots each node gets when they are balanced: equal
    shares, the remainder one each to the first nodes in name order."""
    ordered = sorted(set(nodes))
    if not ordered:
        return {}
    base, extra = divmod(slots, len(ordered))
    return {node: base + (1 if i < extra else 0) for i, node in enumerate(ordered)}


def plan(table: Mapping[int, SlotRecord], live: Iterable[str], draining: Iterable[str] = ()) -> list[Move]:
    """The moves that balance ``table`` over the ``live`` nodes that are not
    ``draining``; slots whose owner is not live, and slots already moving, stay.

    Deterministic: every node that reads the same table and membership computes the
    same moves. Each owner carries out the moves of its own slots.
    """
    alive = set(live)
    leaving = set(draining) & alive
    takers = alive - leaving
    if not takers:
        return []
    movable = [r for r in table.values() if r.owner in alive and not r.moving]
    want = shares(len(movable), takers)
    held: dict[str, list[int]] = {node: [] for node in alive}
    for record in sorted(movable, key=lambda r: r.slot):
        held[record.owner].append(record.slot)
    # What leaves: every slot of a draining node, then each taker's highest slots over
    # its share (the lowest stay, so that a node's slots change as little as they can).
    given: list[tuple[int, str]] = []
    for node in sorted(alive):
        keep = 0 if node in leaving else want[node]
        given.extend((slot, node) for slot in held[node][keep:])
    moves: list[Move] = []
    room = [(node, want[node] - len(held[node])) for node in sorted(takers) if want[node] > len(held[node])]
    for slot, source in sorted(given):
        while room and room[0][1] == 0:
            room.pop(0)
        if not room:
            break
        node, free = room[0]
        moves.append(Move(slot, source, node))
        room[0] = (node, free - 1)
    return moves


def first_table(slots: int, node: str) -> dict[int, bytes]:
    """The records of a new cluster's table: every slot owned by its first node."""
    return {slot: SlotRecord(slot, node, 0).encode() for slot in range(slots)}


@dataclass(frozen=True, slots=True)
class ReplicaChange:
    """The replicas ``replica_plan`` gives one slot instead of the ones it has."""

    slot: int
    replicas: tuple[str, ...]


def replica_plan(table: Mapping[int, SlotRecord], live: Iterable[str], count: int, draining: Iterable[str] = ()) -> list[ReplicaChange]:
    """The slots whose replicas should change so that each has ``count`` replicas on
    live nodes other than its owner (as many as there are), balanced, changing as few
    as that allows: a replica that is live, not the owner and not draining stays; the
    others are dropped, and the nodes holding the fewest replicas (then the next after
    the owner, by name) are added. Deterministic, like ``plan``; moving slots are left
    alone.
    """
    alive = set(live)
    leaving = set(draining)
    load: dict[str, int] = {node: 0 for node in alive - leaving}
    ring = sorted(set(load) | {r.owner for r in table.values()})
    place = {node: i for i, node in enumerate(ring)}
    kept: dict[int, list[str]] = {}
    for record in sorted(table.values(), key=lambda r: r.slot):
        keep = [r for r in record.replicas if r in load and r != record.owner][:count]
        kept[record.slot] = keep
        for node in keep:
            load[node] += 1
    changes: list[ReplicaChange] = []
    for record in sorted(table.values(), key=lambda r: r.slot):
        if record.moving:
            continue
        chosen = list(kept[record.slot])
        while len(chosen) < count:
            # The least loaded first; among equals, the next nodes after the owner in
            # name order (as a ring): with balanced owners this balances replicas too.
            start = place[record.owner]
            candidates = sorted(
                (n for n in load if n != record.owner and n not in chosen),
                key=lambda n: (load[n], (place[n] - start) % len(ring)),
            )
            if not candidates:
                break
            chosen.append(candidates[0])
            load[candidates[0]] += 1
        if tuple(chosen) != record.replicas:
            changes.append(ReplicaChange(record.slot, tuple(chosen)))
    return changes
