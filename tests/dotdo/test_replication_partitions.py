"""Replicated storage under partitions, pauses and lost disks (issue 21), Jepsen-style:
three nodes with two replicas per slot (``--ack quorum``) and a real etcd. Node c runs
in a network namespace of its own (``tests/dotdo/netns.py``, one namespace host per
test process) and is the node faulted, round after round: it owns some slots and
replicates the others. It listens on every address, so that the test reaches it over
its peer link or over its etcd link, whichever is up. Under a write load through a and
b, a write load through c and readers that read accounts' counts through all three:

1. c cut off from etcd and from its peers: its slots are served again by a and b from
   their copies; healed, c rejoins and the cluster settles.
2. c cut off from etcd only: it stops serving at its deadline; its slots fail over.
3. c cut off from its peers only: it stays live and keeps its slots, and no write to
   them is acknowledged meanwhile (neither of its replicas can hold it).
4. c paused (SIGSTOP) past its lease: its slots fail over; resumed, it answers nothing
   from its stale copies (fenced: what it answers holds the writes made meanwhile).
5. c killed (kill -9) and restarted on its disk.
6. c killed, its disk removed, restarted empty under its name: it gets copies again.

Whenever c comes back (healed, resumed, restarted), it is asked at once, and for a few
seconds, for the accounts it lost, each just written and read through a: it must answer
none of them from what it held (``Harness.fence``). After each failover and each round,
every acknowledged write is present and no address was active on two nodes at once
(``check_history``); no reader ever saw an account's count go down; with the nodes
killed, every actor database and replica copy on every disk passes ``PRAGMA
integrity_check``. The nodes run with dotdo's defaults but for the lease TTL (2 s) and the slots (16).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest
import trio

from dotdo.runtime.cluster.slots import slot_of
from dotdo.runtime.core.ids import resolve
from dotdo.storage.address import Address
from dotdo.storage.alarm_index import INDEX_DIR
from dotdo.storage.replication import REPLICAS_DIR, ReplicaCopy
from tests.dotdo.cluster import ACCOUNTS, CALLERS, FAULT_KINDS, JSON, SLOTS, TTL, Load, check_history, cluster_node, history
from tests.dotdo.netns import NamespaceHost, namespace_host, require
from tests.dotdo.serving import Served, dotdo, kill_group, post_whole
from tests.etcd_server import EtcdServer, etcd_server

NAMES = {"a", "b", "c"}
FAILOVER_TIMEOUT = 30.0
"""A faulted c's slots are served by a and b again within this."""
SETTLE_TIMEOUT = 90.0
TEST_TIMEOUT = 300
C_HTTP, C_RPC = 7400, 7401
"""c's ports, inside its namespace (nothing else listens there): fixed, because it
listens on every address and must advertise one."""
PAUSE = 2 * TTL + 1
PEER_CUT = 10.0
LAG = 3.0
"""Replication's LAG: an in-sync replica that leaves a commit unacknowledged this long
is taken out of its slots' in-sync sets, and writes go on without it."""
READERS = 3
READ_TIMEOUT = 5.0
PROBE_TIMEOUT = 20.0
FENCE_WINDOW = 4.0
"""Seconds c is asked for the accounts it lost, once it is back (``Harness.fence``)."""
FENCE_CALL = 5.0
EMPTY = json.dumps({"args": [], "kwargs": {}}).encode()


async def status(tmp_path: Path, etcd: EtcdServer) -> dict[str, Any]:
    """``dotdo cluster status --json --slots``: what etcd says (read on this machine)."""
    done = await dotdo("cluster", "status", "--json", "--slots", "--cluster", etcd.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def live(state: dict[str, Any]) -> set[str]:
    return {node["name"] for node in state["nodes"] if node["live"]}


def settled(state: dict[str, Any]) -> bool:
    """Every slot owned by a live node and replicated on the two others (in sync, where
    the table says), nothing moving or promoting."""
    return (
        live(state) == NAMES
        and len(state["table"]) == SLOTS
        and all(
            set(row["replicas"]) == NAMES - {row["owner"]} and set(row.get("in_sync", row["replicas"])) == set(row["replicas"])
            and not row["moving_to"]
            for row in state["table"]
        )
        and not state["promoting"]
        and not state["moving"]
    )  # fmt: skip


def owners(state: dict[str, Any]) -> dict[str, str]:
    """The node each account is on, by the slot table."""
    owner = {row["slot"]: row["owner"] for row in state["table"]}
    return {account: owner[slot_of(resolve("Account", account).hex, SLOTS)] for account in ACCOUNTS}


def describe(state: dict[str, Any]) -> str:
    rows = " ".join(
        f"{r['slot']}:{r['owner']}{'>' + r['moving_to'] if r['moving_to'] else ''}/{','.join(r['replicas'])}" for r in state["table"]
    )
    return f"live {sorted(live(state))}, promoting {state['promoting']}, slots {rows}"


@dataclass
class Readers:
    """Clients reading accounts' counts through random nodes (``entries``); a count
    that goes down for one client is a read back in time."""

    client: httpx.AsyncClient
    rng: random.Random
    entries: dict[str, Served] = field(default_factory=dict)
    reads: int = 0
    back_in_time: list[str] = field(default_factory=list)
    running: bool = True

    async def reader(self) -> None:
        seen: dict[str, int] = {}
        while self.running:
            account = self.rng.choice(ACCOUNTS)
            name, node = self.rng.choice(sorted(self.entries.items()))
            try:
                with trio.fail_after(READ_TIMEOUT):
                    response = await post_whole(self.client, f"{node.url}/_rpc/Account/{account}/count", EMPTY, JSON)
            except (httpx.HTTPError, trio.TooSlowError):
                await trio.sleep(0.05)
                continue
            if response.status_code != 200:
                assert response.status_code in (503, 504), response.text
                await trio.sleep(0.05)
                continue
            count = response.json()["result"]
            self.reads += 1
            if count < seen.get(account, 0):
                self.back_in_time.append(f"{account} read through {name}: {count} after {seen[account]} at {trio.current_time():.1f}")
            seen[account] = max(count, seen.get(account, 0))


class Harness:
    """The three nodes, the loads and the readers, and what the rounds measure."""

    def __init__(self, tmp_path: Path, etcd: EtcdServer, host: NamespaceHost, stack: AsyncExitStack, client: httpx.AsyncClient) -> None:
        self.tmp_path, self.etcd, self.host, self.stack, self.client = tmp_path, etcd, host, stack, client
        self.nodes: dict[str, Served] = {}
        self.seqs = itertools.count()
        self.load = Load(client, {}, random.Random(21), seqs=self.seqs)  # through a and b
        self.direct = Load(client, {}, random.Random(22), seqs=self.seqs, backoff=0.05)  # through c
        self.others: list[Load] = []  # through a and b, to their own slots only (round 3)
        self.readers = Readers(client, random.Random(23))
        self.probed: dict[str, set[int]] = {}  # writes the rounds' own probes had acknowledged
        self.probe_acks: dict[int, str] = {}  # of those, the ones c acknowledged: when
        self.stale: list[str] = []  # c's answers from a copy older than what its slots' new owners had
        self.fence_calls = 0
        self.probe_writes = 0  # writes sent by the rounds' own probes
        self.failovers: dict[str, float] = {}
        self.kills = 0
        self.c_runs = 0

    async def start(self, name: str) -> None:
        common = ("--replicas", "2", "--ack", "quorum", "--env", f"NODE={name}")
        if name != "c":
            self.nodes[name] = served = await self.stack.enter_async_context(
                cluster_node(self.tmp_path, self.etcd, name, "--host", self.host.peer_host, *common, FAULT_KINDS)
            )
            self.load.live[name] = self.readers.entries[name] = served
            return
        for suffix in ("out", "err"):  # a restart's output goes where the last run's was
            old = self.tmp_path / f"c.{suffix}"
            if old.exists():
                old.rename(self.tmp_path / f"c.{self.c_runs}.{suffix}")
        self.c_runs += 1
        served = await self.stack.enter_async_context(
            cluster_node(
                self.tmp_path, self.etcd, "c", "--host", "0.0.0.0", "--port", str(C_HTTP), "--rpc-port", str(C_RPC),
                "--advertise", f"{self.host.address}:{C_RPC}", *common, FAULT_KINDS,
                url=self.etcd.url_at(self.host.etcd_host), program=self.host.program(),
            )
        )  # fmt: skip
        self.nodes["c"] = served
        self.reach_c("etcd")

    def reach_c(self, link: str) -> None:
        """Send what goes to c over its etcd link or its peer link."""
        address = self.host.etcd_address if link == "etcd" else self.host.address
        self.direct.live["c"] = self.readers.entries["c"] = dataclasses.replace(self.nodes["c"], url=f"http://{address}:{C_HTTP}")

    async def state(self) -> dict[str, Any]:
        return await status(self.tmp_path, self.etcd)

    def acked(self) -> dict[str, set[int]]:
        """Every write acknowledged so far, by account (a copy)."""
        merged: dict[str, set[int]] = {}
        for source in (self.load.acked, self.direct.acked, *(load.acked for load in self.others), self.probed):
            for account, seqs in source.items():
                merged.setdefault(account, set()).update(seqs)
        return merged

    async def until_failed_over(self, label: str, since: float) -> None:
        """Wait until c holds no lease and a and b own every slot, nothing promoting."""
        deadline = since + FAILOVER_TIMEOUT
        while True:
            state = await self.state()
            if "c" not in live(state) and all(row["owner"] in ("a", "b") for row in state["table"]) and not state["promoting"]:
                self.failovers[label] = trio.current_time() - since
                return
            assert trio.current_time() < deadline, f"{label}: c's slots not served by a and b within {FAILOVER_TIMEOUT} s: {describe(state)}"
            await trio.sleep(0.1)

    async def until_settled(self, label: str) -> None:
        deadline = trio.current_time() + SETTLE_TIMEOUT
        while not settled(state := await self.state()):
            assert trio.current_time() < deadline, f"{label}: the cluster did not settle within {SETTLE_TIMEOUT} s: {describe(state)}"
            await trio.sleep(0.2)

    async def until_written(self, label: str, accounts: list[str], since: float, load: Load | None = None) -> None:
        """Wait until each of ``accounts`` had a write acknowledged by ``load`` (default:
        the one through a and b) after ``since``."""
        load = load or self.load
        deadline = trio.current_time() + FAILOVER_TIMEOUT
        while waiting := [a for a in accounts if load.last_ok.get(a, -1.0) <= since]:
            assert trio.current_time() < deadline, f"{label}: no write acknowledged within {FAILOVER_TIMEOUT} s to {waiting}"
            await trio.sleep(0.05)

    async def check_acked(self, label: str) -> None:
        """Every write acknowledged before this is present, activations never overlapped."""
        acked = self.acked()
        for account in ACCOUNTS:
            record = await history(self.client, self.nodes["a"], account)
            try:
                check_history(account, record, acked.get(account, set()))
            except AssertionError as exc:
                present = {w["seq"] for w in record["writes"]}
                by_c = {seq: self.probe_acks[seq] for seq in acked.get(account, set()) - present if seq in self.probe_acks}
                raise AssertionError(f"{label}: {exc}" + (f" (acknowledged by c: {by_c})" if by_c else "")) from None

    async def call(self, node: Served, account: str, method: str, *args: Any, timeout: float = PROBE_TIMEOUT) -> httpx.Response | None:
        """One call of ``method`` on ``account`` through ``node``; None if no answer came."""
        body = json.dumps({"args": list(args), "kwargs": {}}).encode()
        self.probe_writes += method == "write"
        try:
            with trio.fail_after(timeout):
                return await post_whole(self.client, f"{node.url}/_rpc/Account/{account}/{method}", body, JSON)
        except (httpx.HTTPError, trio.TooSlowError):
            return None

    async def acknowledged_write(self, account: str) -> int:
        """A write to ``account`` through a, retried until acknowledged; its seq."""
        with trio.fail_after(FAILOVER_TIMEOUT):
            while True:
                seq = next(self.seqs)
                response = await self.call(self.nodes["a"], account, "write", seq)
                if response is not None and response.status_code == 200:
                    self.probed.setdefault(account, set()).add(seq)
                    return seq
                await trio.sleep(0.1)

    async def count_through_a(self, account: str) -> int:
        with trio.fail_after(FAILOVER_TIMEOUT):
            while (response := await self.call(self.nodes["a"], account, "count")) is None or response.status_code != 200:
                await trio.sleep(0.1)
        return int(response.json()["result"])

    async def fence(self, label: str, accounts: list[str], resume: Callable[[], Awaitable[None]]) -> None:
        """c, back (``resume``) after ``accounts`` failed over, answers nothing of them from
        what it held: each is written and read through a first, then c is asked for
        their counts and written, from before ``resume`` until ``FENCE_WINDOW`` s after
        it. A count it answers is never below what a read; a write it acknowledges
        must be there later (``check_acked``)."""
        floor = {}
        for account in accounts:
            await self.acknowledged_write(account)
            floor[account] = await self.count_through_a(account)

        async def ask(account: str) -> None:
            while True:
                self.fence_calls += 1
                response = await self.call(self.direct.live["c"], account, "count", timeout=FENCE_CALL)
                if response is not None and response.status_code == 200:
                    if (count := response.json()["result"]) < floor[account]:
                        now = trio.current_time()
                        self.stale.append(f"{label}: c answered {account}'s count {count} at {now:.1f} (its owner had {floor[account]})")
                elif response is not None:
                    assert response.status_code in (503, 504), response.text
                seq = next(self.seqs)
                response = await self.call(self.direct.live["c"], account, "write", seq, timeout=FENCE_CALL)
                if response is not None and response.status_code == 200:
                    self.probed.setdefault(account, set()).add(seq)
                    self.probe_acks[seq] = f"{label}, at {trio.current_time():.1f}"
                elif response is not None:
                    assert response.status_code in (503, 504), response.text
                await trio.sleep(0.02 if response is not None else 0.1)

        with trio.CancelScope() as window:
            async with trio.open_nursery() as nursery:
                for account in floor:
                    nursery.start_soon(ask, account)
                await trio.sleep(0.3)  # asked before it is back (a paused c answers them once it runs)
                await resume()
                window.deadline = trio.current_time() + FENCE_WINDOW

    # -- the rounds ----------------------------------------------------------------

    async def cut_off(self, label: str, *, etcd: bool, peers: bool) -> None:
        """Rounds 1 and 2: c cut off from etcd (and its peers): its slots fail over."""
        state = await self.state()
        on_c = [account for account, owner in owners(state).items() if owner == "c"]
        self.reach_c("peer" if not peers else "etcd")  # over a link that is up, if one is
        self.host.cut(etcd=etcd, peers=peers)
        cut = trio.current_time()
        await self.until_failed_over(label, cut)
        await self.until_written(label, on_c, trio.current_time())
        await self.check_acked(label)

        async def heal() -> None:
            self.host.heal()

        await self.fence(label, on_c[:6], heal)
        self.reach_c("etcd")
        await self.until_settled(label)
        await self.check_acked(f"{label}, healed")

    async def peers_cut(self, label: str) -> None:
        """Round 3: c cut off from its peers only stays live with its slots, nothing
        written to them after the cut is acknowledged until the link is back, and a's and b's own
        slots are written again once c is out of their in-sync sets (``LAG``)."""
        state = await self.state()
        on_c = [account for account, owner in owners(state).items() if owner == "c"]
        others = Load(self.client, dict(self.load.live), random.Random(24), [a for a in ACCOUNTS if a not in on_c], seqs=self.seqs)
        self.others.append(others)
        self.reach_c("etcd")
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # writes that never wait for c's slots
                nursery.start_soon(others.caller)
            await self.until_written(label, others.accounts[:1], trio.current_time(), load=others)
            self.host.cut(peers=True)
            cut = trio.current_time()
            boundary = next(self.seqs)  # a write numbered past it was sent after the cut
            await trio.sleep(2)
            sent = self.direct.sent

            async def probe(account: str) -> None:
                seq = next(self.seqs)
                response = await self.call(self.direct.live["c"], account, "write", seq)
                assert response is None or response.status_code in (503, 504), (
                    f"{label}: c acknowledged write {seq} to {account} with neither replica reachable: {response.text}"
                )

            async with trio.open_nursery() as probes:
                for account in on_c[:4]:
                    probes.start_soon(probe, account)
                await trio.sleep(max(0.0, cut + LAG + 3 - trio.current_time()))
                resumed = sum(len(seqs) for seqs in others.acked.values())
                await trio.sleep(max(0.0, cut + PEER_CUT - trio.current_time()))
            written = sum(len(seqs) for seqs in others.acked.values()) - resumed
            others.running = False  # each caller ends after its request
        state = await self.state()
        assert live(state) == NAMES, f"{label}: c lost its lease with only its peer link cut: {describe(state)}"
        assert all(owners(state)[account] == "c" for account in on_c), f"{label}: c's slots moved: {describe(state)}"
        now = self.acked()
        # A write sent before the cut may be acknowledged after it (a replica got it just
        # in time, and the one that did not was taken out of the in-sync set): not one
        # sent after.
        without_quorum = {a: sorted(s for s in now.get(a, set()) if s > boundary) for a in on_c}
        without_quorum = {a: seqs for a, seqs in without_quorum.items() if seqs}
        assert not without_quorum, f"{label}: writes to c's slots sent after c was cut off from its replicas were acknowledged: {without_quorum}"
        assert self.direct.sent > sent, f"{label}: nothing was sent to c"
        assert written > 0, (
            f"{label}: no write to a's and b's own slots acknowledged between {LAG + 3:g} s and {PEER_CUT:g} s after c was cut "
            f"off from its peers ({others.refused} refused: {others.reasons[-4:]}): a replica that is live but unreachable "
            "holds up its slots' writes"
        )
        self.host.heal()
        healed = trio.current_time()
        await self.until_written(label, on_c, healed)
        self.failovers[label] = float("nan")  # none, and none wanted
        await self.until_settled(label)
        await self.check_acked(f"{label}, healed")

    async def pause(self, label: str) -> None:
        """Round 4: c stopped past its lease; its slots fail over, and resumed it answers
        nothing from what it held (reads it answers count the writes made meanwhile)."""
        state = await self.state()
        on_c = [account for account, owner in owners(state).items() if owner == "c"]
        group = self.nodes["c"].process.pid
        os.killpg(group, signal.SIGSTOP)
        stopped = trio.current_time()

        async def resume() -> None:
            os.killpg(group, signal.SIGCONT)

        try:
            await self.until_failed_over(label, stopped)
            await trio.sleep(max(0.0, stopped + PAUSE - trio.current_time()))
            await self.fence(label, on_c[:6], resume)
        finally:
            await resume()
        await self.check_acked(label)
        await self.until_settled(label)
        await self.check_acked(f"{label}, resumed")

    async def kill(self, label: str, *, disk: bool) -> None:
        """Rounds 5 and 6: c killed (its slots fail over) and started again on its disk,
        or (``disk`` False) on an empty one: it is given copies again."""
        on_c = [account for account, owner in owners(await self.state()).items() if owner == "c"]
        await kill_group(self.nodes["c"].process)
        killed = trio.current_time()
        self.kills += 1
        await self.until_failed_over(label, killed)
        await self.check_acked(label)
        if not disk:
            shutil.rmtree(self.tmp_path / "c-data")
        await self.fence(label, on_c[:6], lambda: self.start("c"))
        await self.until_settled(label)
        await self.check_acked(f"{label}, restarted")
        if not disk:
            await self.until_copies(label)

    async def until_copies(self, label: str) -> None:
        """Wait until c holds a copy of every account of the slots it replicates."""
        root = self.tmp_path / "c-data" / INDEX_DIR / REPLICAS_DIR
        deadline = trio.current_time() + FAILOVER_TIMEOUT
        while True:
            state = await self.state()
            replicated = {row["slot"] for row in state["table"] if "c" in row["replicas"]}
            accounts = [a for a in ACCOUNTS if slot_of(resolve("Account", a).hex, SLOTS) in replicated]
            missing = [a for a in accounts if not Address("Account", resolve("Account", a).hex).path(root).exists()]
            if accounts and not missing:
                return
            assert trio.current_time() < deadline, f"{label}: c, back on an empty disk, has no copy of {missing} ({describe(state)})"
            await trio.sleep(0.2)


def check_integrity(data_dir: Path) -> tuple[int, int, list[str]]:
    """``PRAGMA integrity_check`` on every actor database and replica copy under
    ``data_dir`` (a copy's redo log written into it first, as its next open would):
    how many databases and copies, and what failed."""
    databases = copies = 0
    failed = []
    for path in sorted(data_dir.rglob("*.sqlite")):
        parts = path.relative_to(data_dir).parts
        if any(part.endswith((".branches", ".history")) for part in parts):
            continue  # an actor's side files (branches are databases, checked as their own)
        if parts[0] == INDEX_DIR:
            if parts[1] != REPLICAS_DIR or INDEX_DIR in parts[2:]:
                continue  # the node's own indexes
            ReplicaCopy.open(path).settle()
            copies += 1
        else:
            databases += 1
        connection = apsw.Connection(str(path))
        try:
            result = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        finally:
            connection.close()
        if result != ["ok"]:
            failed.append(f"{path}: {result[:5]}")
    return databases, copies, failed


@pytest.fixture
def namespaces() -> None:
    """Skip (fail under CI) before the test starts where no namespace can be made."""
    require()


@pytest.mark.timeout(TEST_TIMEOUT + 30)
async def test_replicated_slots_survive_partitions_pauses_kills_and_a_lost_disk(tmp_path: Path, namespaces: None) -> None:
    began = trio.current_time()
    with trio.fail_after(TEST_TIMEOUT):
        async with namespace_host() as host, etcd_server(tmp_path, hosts=[host.etcd_host]) as etcd:
            async with AsyncExitStack() as stack, httpx.AsyncClient(trust_env=False, timeout=PROBE_TIMEOUT) as client:
                harness = Harness(tmp_path, etcd, host, stack, client)
                for name in ("a", "b", "c"):
                    await harness.start(name)
                await harness.until_settled("formed")
                formed = await harness.state()
                assert any(row["owner"] == "c" for row in formed["table"]) and any("c" in row["replicas"] for row in formed["table"])
                async with trio.open_nursery() as nursery:
                    for _ in range(CALLERS):
                        nursery.start_soon(harness.load.caller)
                    for _ in range(2):
                        nursery.start_soon(harness.direct.caller)
                    for _ in range(READERS):
                        nursery.start_soon(harness.readers.reader)
                    await harness.until_written("formed", ACCOUNTS, trio.current_time())
                    await harness.cut_off("1 etcd+peers cut", etcd=True, peers=True)
                    await harness.cut_off("2 etcd cut", etcd=True, peers=False)
                    await harness.peers_cut("3 peers cut")
                    await harness.pause("4 SIGSTOP")
                    await harness.kill("5 kill -9", disk=True)
                    await harness.kill("6 kill -9, disk lost", disk=False)
                    await harness.until_written("end", ACCOUNTS, trio.current_time())
                    harness.load.running = harness.direct.running = harness.readers.running = False
                await trio.sleep(1)  # the alarms armed last fire
                acked = harness.acked()
                records = {account: await history(client, harness.nodes["a"], account) for account in ACCOUNTS}
                lost = sum(len(acked.get(a, set()) - {w["seq"] for w in records[a]["writes"]}) for a in ACCOUNTS)
                for name in ("a", "b", "c"):
                    await kill_group(harness.nodes[name].process)
            checked = {name: check_integrity(tmp_path / f"{name}-data") for name in ("a", "b", "c")}
    sent = harness.load.sent + harness.direct.sent + sum(load.sent for load in harness.others) + harness.probe_writes
    print(
        f"replication partitions: {len(harness.failovers)} rounds, {harness.kills} kills, {sent} writes sent, "
        f"{sum(len(s) for s in acked.values())} acknowledged, {lost} lost; {harness.readers.reads} reads, "
        f"{len(harness.readers.back_in_time)} back in time; {harness.fence_calls} calls to c as it came back, "
        f"{len(harness.stale)} answered from a stale copy; c's slots served by a and b again after (s): "
        + ", ".join(f"{label} {'-' if t != t else f'{t:.2f}'}" for label, t in harness.failovers.items())
        + "; integrity: "
        + ", ".join(f"{name} {d} databases + {c} copies" for name, (d, c, _) in checked.items())
        + f"; {trio.current_time() - began:.0f} s"
    )
    for account in ACCOUNTS:
        check_history(account, records[account], acked.get(account, set()))
    assert lost == 0
    assert not harness.readers.back_in_time, harness.readers.back_in_time[:10]
    assert not harness.stale, harness.stale[:10]
    assert harness.readers.reads > 100
    assert not [f for _, _, failed in checked.values() for f in failed]
    assert all(d > 0 for d, _, _ in checked.values()) and all(c > 0 for _, c, _ in checked.values())
    assert len(acked) == len(ACCOUNTS) and sum(len(s) for s in acked.values()) > 500
