"""The slot table (dotdo.runtime.cluster.slots): slots of addresses, records, and the plan
that balances them over live nodes moving as few as it can."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotdo.runtime.cluster.slots import (
    Move,
    ReplicaChange,
    SlotRecord,
    first_table,
    parse_slot_key,
    plan,
    replica_plan,
    shares,
    slot_key,
    slot_of,
)
from dotdo.runtime.placement.locator import worker_of


def table(owners: list[str], moving: dict[int, str] | None = None) -> dict[int, SlotRecord]:
    moving = moving or {}
    return {i: SlotRecord(i, owner, 100 + i, moving.get(i)) for i, owner in enumerate(owners)}


def apply(t: dict[int, SlotRecord], moves: list[Move]) -> dict[int, SlotRecord]:
    out = dict(t)
    for move in moves:
        assert out[move.slot].owner == move.source
        out[move.slot] = SlotRecord(move.slot, move.target, out[move.slot].epoch + 1)
    return out


def test_slots_spread_ids_and_split_evenly_between_workers() -> None:
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    per_slot = Counter(slot_of(h, 64) for h in ids)
    assert len(per_slot) == 64 and min(per_slot.values()) > 200
    # Inside one slot, the workers still share the actors (other bits of the id).
    in_slot = [h for h in ids if slot_of(h, 64) == 5]
    assert Counter(worker_of(h, 2) for h in in_slot).keys() == {0, 1}


def test_keys_and_records_round_trip() -> None:
    assert slot_key("/dotdo/c", 7) == "/dotdo/c/slots/00007"
    assert parse_slot_key("/dotdo/c", "/dotdo/c/slots/00007") == 7
    assert parse_slot_key("/dotdo/c", "/dotdo/c/nodes/a") is None
    assert parse_slot_key("/dotdo/c", "/dotdo/c/slots/x") is None
    record = SlotRecord(3, "a", 42, "b")
    assert SlotRecord.decode(3, record.encode(), 42) == record and record.moving
    assert SlotRecord.decode(3, SlotRecord(3, "a", 1).encode(), 9) == SlotRecord(3, "a", 9)
    for bad in (b"", b"[]", b'{"owner": 5}', b'{"nobody": "a"}', b'{"owner": "a", "moving_to": 3}'):
        with pytest.raises(ValueError, match="not a slot record"):
            SlotRecord.decode(3, bad, 1)
    assert {s: SlotRecord.decode(s, v, 1).owner for s, v in first_table(4, "n1").items()} == dict.fromkeys(range(4), "n1")


def test_shares_are_equal_within_one_in_name_order() -> None:
    assert shares(10, ["c", "a", "b"]) == {"a": 4, "b": 3, "c": 3}
    assert shares(10, []) == {}


def test_a_joining_node_takes_an_equal_share_from_the_others() -> None:
    t = table(["a"] * 8)
    moves = plan(t, ["a", "b"])
    assert moves == [Move(4, "a", "b"), Move(5, "a", "b"), Move(6, "a", "b"), Move(7, "a", "b")]
    assert plan(apply(t, moves), ["a", "b"]) == []  # balanced: nothing more


def test_a_draining_node_gives_away_everything_and_dead_nodes_keep_theirs() -> None:
    t = table(["a", "a", "b", "b", "c", "c"])
    moves = plan(t, ["a", "b", "c"], draining=["b"])
    assert sorted((m.slot, m.source) for m in moves) == [(2, "b"), (3, "b")]
    assert {m.target for m in moves} == {"a", "c"}
    # c is dead: its slots stay (unavailable until it returns), the rest balance.
    assert plan(t, ["a", "b"]) == []
    assert plan(t, ["a", "b"], draining=["b"]) == [Move(2, "b", "a"), Move(3, "b", "a")]
    assert plan(t, ["b"], draining=["b"]) == []  # nowhere to go


def test_moving_slots_stay_where_they_are() -> None:
    t = table(["a"] * 4, moving={3: "b"})
    assert plan(t, ["a", "b"]) == [Move(2, "a", "b")]  # 3 is already on its way


@settings(max_examples=200, deadline=None)
@given(
    owners=st.lists(st.sampled_from("abcde"), min_size=1, max_size=60),
    live=st.sets(st.sampled_from("abcdef"), min_size=1),
    draining=st.sets(st.sampled_from("abcdef")),
)
def test_a_plan_balances_and_moves_no_more_than_needed(owners: list[str], live: set[str], draining: set[str]) -> None:
    t = table(owners)
    moves = plan(t, live, draining)
    after = apply(t, moves)
    takers = live - draining
    movable = [r for r in t.values() if r.owner in live]
    if not takers:
        assert moves == []
        return
    held = Counter(after[r.slot].owner for r in movable)
    assert all(after[r.slot].owner in takers for r in movable)
    assert max(held[n] for n in takers) - min(held[n] for n in takers) <= 1
    # Minimal: a slot moves only from a draining node or a node above its share.
    want = shares(len(movable), takers)
    before = Counter(r.owner for r in movable)
    for node in takers:
        assert sum(m.source == node for m in moves) == max(0, before[node] - want[node])
    assert plan(after, live, draining) == []
    assert all(after[s] == r for s, r in t.items() if r.owner not in live)


def test_a_record_keeps_its_replicas_through_encoding_and_old_records_have_none() -> None:
    record = SlotRecord(3, "a", 9, None, ("b", "c"))
    assert SlotRecord.decode(3, record.encode(), 9) == record
    assert SlotRecord.decode(3, b'{"owner": "a"}', 9).replicas == ()
    with pytest.raises(ValueError):
        SlotRecord.decode(3, b'{"owner": "a", "replicas": "b"}', 9)


def test_a_records_in_sync_replicas_are_some_of_its_replicas() -> None:
    record = SlotRecord(3, "a", 9, None, ("b", "c"), in_sync=("c",))
    assert SlotRecord.decode(3, record.encode(), 9) == record
    assert SlotRecord.decode(3, SlotRecord(3, "a", 9, None, ("b",)).encode(), 9).in_sync == ()
    with pytest.raises(ValueError):  # a node in sync that is no replica
        SlotRecord.decode(3, b'{"owner": "a", "replicas": ["b"], "in_sync": ["c"]}', 9)


def test_replicas_are_balanced_on_live_nodes_other_than_the_owner_and_change_as_little_as_they_can() -> None:
    owners = ["a", "b", "c", "d"] * 4
    t = table(owners)
    changes = replica_plan(t, ["a", "b", "c", "d"], 2)
    assert len(changes) == 16
    after = {c.slot: c.replicas for c in changes}
    load = Counter(node for replicas in after.values() for node in replicas)
    assert set(load.values()) == {8}  # 32 replicas over 4 nodes
    assert all(t[s].owner not in r and len(set(r)) == 2 for s, r in after.items())
    settled = {s: SlotRecord(s, t[s].owner, 1, None, r) for s, r in after.items()}
    assert replica_plan(settled, ["a", "b", "c", "d"], 2) == []  # stable
    # d dies: only the slots that had d as a replica change, each keeping its live one.
    changed = replica_plan(settled, ["a", "b", "c"], 2)
    assert {c.slot for c in changed} == {s for s, r in after.items() if "d" in r}
    for change in changed:
        assert "d" not in change.replicas and settled[change.slot].owner not in change.replicas
        kept = [n for n in after[change.slot] if n != "d"]
        assert change.replicas[: len(kept)] == tuple(kept)
    # Fewer nodes than replicas asked for: as many as there are.
    assert replica_plan(table(["a"] * 2), ["a", "b"], 2) == [ReplicaChange(0, ("b",)), ReplicaChange(1, ("b",))]
    assert replica_plan(table(["a"]), ["a"], 2) == []


@settings(max_examples=200, deadline=None)
@given(
    owners=st.lists(st.sampled_from("abcde"), min_size=1, max_size=40),
    live=st.sets(st.sampled_from("abcde"), min_size=1),
    count=st.integers(0, 3),
)
def test_replica_plans_are_deterministic_and_never_use_the_owner_or_a_dead_node(owners: list[str], live: set[str], count: int) -> None:
    t = table(owners)
    changes = replica_plan(t, live, count)
    assert changes == replica_plan(t, sorted(live, reverse=True), count)
    for change in changes:
        owner = t[change.slot].owner
        assert owner not in change.replicas and set(change.replicas) <= live
        assert len(change.replicas) == min(count, len(live - {owner}))
