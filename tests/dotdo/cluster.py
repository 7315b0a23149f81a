"""Helpers for the tests that run ``dotdo serve --cluster`` nodes as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.dotdo.serving import Served, dotdo_serve_group
from tests.etcd_server import EtcdServer

SECRET = "cluster-secret-for-tests-0123456789"
TTL = 2
SLOTS = 16
SETTLE_TIMEOUT = 60.0


def node_args(etcd: EtcdServer, name: str, *extra: str) -> list[str]:
    """``dotdo serve`` arguments of node ``name`` (its data in ``NAME-data``)."""
    return [
        "--cluster", etcd.url, "--node", name, "--data", f"{name}-data",
        "--lease-ttl", str(TTL), "--slots", str(SLOTS), "--log-level", "info", *extra,
    ]  # fmt: skip


@asynccontextmanager
async def cluster_node(run_dir: Path, etcd: EtcdServer, name: str, *extra: str) -> AsyncIterator[Served]:
    """Node ``name`` as a process group of its own (so that kill -9 reaches all of it),
    with the cluster secret in its environment."""
    env = {"DOTDO_CLUSTER_SECRET": SECRET}
    async with dotdo_serve_group(run_dir, name, *node_args(etcd, name, *extra), env=env) as served:
        yield served


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
