"""Helpers for the tests that run ``dotdo serve --cluster`` nodes as processes."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.dotdo.serving import DOTDO, Served, dotdo_serve_group, post_whole
from tests.etcd_server import EtcdServer

FAULT_KINDS = str(Path(__file__).with_name("cluster_fault_kinds.py"))
"""The ``Account`` kind of the fault tests, by path."""
ACCOUNTS = [f"acct{i}" for i in range(40)]
CALLERS = 8
CALL_TIMEOUT = 10.0
JSON = {"Content-Type": "application/json"}

SECRET = "cluster-secret-for-tests-0123456789"
TTL = 2
SLOTS = 16
SETTLE_TIMEOUT = 60.0


def node_args(etcd: EtcdServer, name: str, *extra: str, url: str | None = None) -> list[str]:
    """``dotdo serve`` arguments of node ``name`` (its data in ``NAME-data``), reaching
    etcd at ``url`` (default: ``etcd.url``)."""
    return [
        "--cluster", url or etcd.url, "--node", name, "--data", f"{name}-data",
        "--lease-ttl", str(TTL), "--slots", str(SLOTS), "--log-level", "info", *extra,
    ]  # fmt: skip


@asynccontextmanager
async def cluster_node(
    run_dir: Path, etcd: EtcdServer, name: str, *extra: str, url: str | None = None, program: Sequence[str] = DOTDO
) -> AsyncIterator[Served]:
    """Node ``name`` as a process group of its own (so that kill -9 reaches all of it),
    with the cluster secret in its environment; ``url``: where it reaches etcd (default:
    ``etcd.url``), ``program``: the dotdo command (``serving.spawn_group``)."""
    env = {"DOTDO_CLUSTER_SECRET": SECRET}
    args = node_args(etcd, name, *extra, url=url)
    async with dotdo_serve_group(run_dir, name, *args, env=env, program=program) as served:
        yield served


async def fault_node(stack: AsyncExitStack, run_dir: Path, etcd: EtcdServer, name: str, *extra: str, program: Sequence[str] = DOTDO) -> Served:
    """Node ``name`` serving the fault tests' ``Account`` kind (which reads its node's name
    from ``NODE``), with ``extra`` arguments, stopped when ``stack`` closes; started again
    under the same name, it runs on the same data."""
    return await stack.enter_async_context(
        cluster_node(run_dir, etcd, name, "--env", f"NODE={name}", *extra, FAULT_KINDS, program=program)
    )


async def health(client: httpx.AsyncClient, served: Served) -> dict[str, Any]:
    response = await client.get(f"{served.url}/_health")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def until_slots(client: httpx.AsyncClient, expected: dict[str, int], nodes: dict[str, Served]) -> None:
    """Wait until each node holds the number of slots ``expected`` says."""
    with trio.fail_after(SETTLE_TIMEOUT):
        while True:
            held = {name: (await health(client, nodes[name]))["slots"] for name in expected}
            if held == expected:
                return
            await trio.sleep(0.1)


async def increment(client: httpx.AsyncClient, served: Served, name: str) -> httpx.Response:
    return await client.post(f"{served.url}/_rpc/Counter/{name}/increment", json={"args": [], "kwargs": {}})


# -- a write load, and what it must find afterwards ------------------------------------


@dataclass
class Load:
    """Writes to random accounts (of ``accounts``) through random live nodes, noting
    what was acknowledged and how long each account went without a successful write."""

    client: httpx.AsyncClient
    live: dict[str, Served]
    rng: random.Random
    accounts: list[str] = field(default_factory=lambda: list(ACCOUNTS))
    acked: dict[str, set[int]] = field(default_factory=dict)
    armed: set[str] = field(default_factory=set)
    refused: int = 0
    reasons: list[str] = field(default_factory=list)
    """Why calls were refused, the last ones (for a failing test's message)."""
    sent: int = 0
    last_ok: dict[str, float] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)
    longest: dict[str, float] = field(default_factory=dict)
    """Per account, the longest time between two successful writes."""
    seqs: Any = field(default_factory=itertools.count)
    running: bool = True
    backoff: float = 0.0
    """Seconds a caller waits after a request that got no answer (0: none; a node that
    refuses connections at once would otherwise be asked in a busy loop)."""

    async def caller(self) -> None:
        """Write until ``running`` is cleared (each caller then ends after its request:
        cancelling one mid-request would leave httpx's request stream unfinished)."""
        while self.running:
            account = self.rng.choice(self.accounts)
            node = self.rng.choice(sorted(self.live.values(), key=lambda s: s.url))
            seq = next(self.seqs)
            arm = self.rng.random() < 0.05
            self.sent += 1
            try:
                with trio.fail_after(CALL_TIMEOUT):  # the body in one chunk: a call given up leaves nothing to warn
                    body = json.dumps({"args": [seq], "kwargs": {"arm": arm}}).encode()
                    response = await post_whole(self.client, f"{node.url}/_rpc/Account/{account}/write", body, JSON)
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                self.refused += 1
                self.reasons = [*self.reasons[-19:], f"{node.url}: {exc!r}"]
                if self.backoff:
                    await trio.sleep(self.backoff)
                continue
            if response.status_code == 200:
                assert response.json() == {"result": seq}
                self.acked.setdefault(account, set()).add(seq)
                if arm:
                    self.armed.add(account)
                now = trio.current_time()
                if account in self.last_ok:
                    gap = now - self.last_ok[account]
                    self.gaps.append(gap)
                    self.longest[account] = max(gap, self.longest.get(account, 0.0))
                self.last_ok[account] = now
            else:
                assert response.status_code in (503, 504), response.text
                self.refused += 1
                self.reasons = [*self.reasons[-19:], f"{node.url}: {response.status_code} {response.text[:300]}"]
                await trio.sleep(0.05)


async def history(client: httpx.AsyncClient, node: Served, account: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            response = await client.post(f"{node.url}/_rpc/Account/{account}/history", json={"args": [], "kwargs": {}})
            if response.status_code == 200:
                return response.json()["result"]  # type: ignore[no-any-return]
            await trio.sleep(0.2)


async def fired_history(client: httpx.AsyncClient, node: Served, account: str, timeout: float = 30.0) -> dict[str, Any]:
    """The history of an account whose alarm was armed, once that alarm has fired (a
    write acknowledged just before the load stopped arms one that is due a little
    later): fails after ``timeout`` seconds with the account's activations."""
    record = await history(client, node, account)
    with trio.move_on_after(timeout):
        while not record["fired"]:
            await trio.sleep(0.1)
            record = await history(client, node, account)
    assert record["fired"], f"{account}: its alarm never fired ({record['activations']})"
    return record


def check_history(account: str, record: dict[str, Any], acked: set[int]) -> None:
    """Every acknowledged write is there, and the activations never overlapped: each
    one's writes all come before the next one started."""
    writes = record["writes"]
    present = {w["seq"] for w in writes}
    assert acked <= present, f"{account}: acknowledged writes missing: {sorted(acked - present)[:10]}"
    starts = {a["id"]: a["started"] for a in record["activations"]}
    last: dict[int, float] = {}
    previous = 0
    for write in writes:
        assert write["activation"] >= previous, f"{account}: activation {previous} wrote after {write['activation']} began"
        previous = write["activation"]
        last[write["activation"]] = write["at"]
    ids = sorted(starts)
    for earlier, later in zip(ids, ids[1:]):
        if earlier in last:
            assert last[earlier] <= starts[later], f"{account}: activations {earlier} and {later} overlapped"
