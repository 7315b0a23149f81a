"""``dotdo cluster status`` and ``dotdo cluster drain NODE``: a cluster as etcd holds it.

Both read etcd directly (``--cluster URLS``, or ``$DOTDO_CLUSTER``), so they work
whichever nodes are up: the nodes, the slots each owns and at which epoch, what is
moving, which slots are unavailable because their owner is not live, and each slot's
replicas and which of them are in sync. ``status`` also asks each live node's
``/_health`` how far behind the replicas of its active actors are (commits not yet
acknowledged, and the age of the oldest; figures of the worker that answers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from dotdo.durations import positive_duration
from dotdo.runtime.cluster.etcd import Etcd, EtcdError
from dotdo.runtime.cluster.view import ClusterView, State
from dotdo.runtime.placement.node import PREFIX

CLUSTER_ENV = "DOTDO_CLUSTER"


def add_arguments(cluster: argparse.ArgumentParser, urls: Any) -> None:
    """The ``cluster`` command's sub-commands (``urls`` parses ``--cluster``)."""
    actions = cluster.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    status = actions.add_parser("status", help="nodes, their slots and epochs, what is moving or unavailable")
    status.add_argument("--json", action="store_true", help="print the status as one JSON object")
    status.add_argument("--slots", action="store_true", help="list every slot (owner, epoch, move)")
    drain = actions.add_parser(
        "drain",
        help="hand all of a node's slots to the other nodes",
        description="Ask NODE to hand all its slots to the other live nodes, and wait until it has "
        "(progress on stderr). The node keeps running and relaying calls; it takes slots again "
        "when it restarts or when the drain is cancelled.",
    )
    drain.add_argument("node")
    drain.add_argument("--no-wait", action="store_true", help="ask, and return at once")
    drain.add_argument("--cancel", action="store_true", help="stop draining NODE: it takes its share of the slots again")
    for sub in (status, drain):
        sub.add_argument(
            "--cluster",
            type=urls,
            default=os.environ.get(CLUSTER_ENV) or None,
            metavar="URLS",
            help=f"etcd client URLs, comma-separated (default: ${CLUSTER_ENV})",
        )
        sub.add_argument("--timeout", type=positive_duration, default=600.0, metavar="SECONDS", help="give up after this long (default: 600)")


def main(args: argparse.Namespace) -> int:
    if not args.cluster:
        print(f"dotdo cluster: give --cluster URLS (or set ${CLUSTER_ENV})", file=sys.stderr)
        return 2
    endpoints = args.cluster if isinstance(args.cluster, tuple) else tuple(u.strip() for u in args.cluster.split(",") if u.strip())
    run = _status if args.action == "status" else _drain

    async def bounded() -> int:
        with trio.fail_after(args.timeout):
            return await run(endpoints, args)

    try:
        return trio.run(bounded)
    except trio.TooSlowError:
        print(f"dotdo cluster: gave up after {args.timeout:g} s", file=sys.stderr)
        return 1
    except EtcdError as exc:
        print(f"dotdo cluster: etcd: {exc}", file=sys.stderr)
        return 1


LAG_TIMEOUT = 2.0
"""Seconds ``status`` waits for a node's replication figures."""


def report(state: State) -> dict[str, Any]:
    """The cluster's state as ``dotdo cluster status --json`` prints it."""
    config = state.config
    owned: dict[str, list[int]] = {}
    for record in state.slots.values():
        owned.setdefault(record.owner, []).append(record.slot)
    names = sorted(set(state.nodes) | set(owned))
    nodes = []
    for name in names:
        info = state.nodes.get(name)
        slots = sorted(owned.get(name, []))
        nodes.append(
            {
                "name": name,
                "live": info is not None,
                "advertise": info.advertise if info else None,
                "http": info.http if info else None,
                "draining": name in state.draining,
                "slots": len(slots),
                "ranges": ranges(slots),
            }
        )
    moving = [
        {"slot": r.slot, "from": r.owner, "to": r.moving_to, "epoch": r.epoch}
        for r in sorted(state.slots.values(), key=lambda r: r.slot)
        if r.moving_to is not None
    ]
    promoting = [
        {"slot": r.slot, "owner": r.owner, "epoch": r.epoch}
        for r in sorted(state.slots.values(), key=lambda r: r.slot)
        if r.promoting
    ]
    unavailable = sorted(r.slot for r in state.slots.values() if r.owner not in state.nodes)
    catching_up = sorted(r.slot for r in state.slots.values() if len(r.in_sync) < len(r.replicas))
    return {
        "revision": state.revision,
        "slots": config.slots if config else 0,
        "formed": bool(config and config.formed and len(state.slots) == config.slots),
        "nodes": nodes,
        "moving": moving,
        "promoting": promoting,
        "unavailable": ranges(unavailable),
        "unavailable_slots": len(unavailable),
        "catching_up": ranges(catching_up),
        "catching_up_slots": len(catching_up),
        "table": [
            {
                "slot": r.slot, "owner": r.owner, "epoch": r.epoch, "moving_to": r.moving_to,
                "replicas": list(r.replicas), "in_sync": list(r.in_sync),
            }
            for r in sorted(state.slots.values(), key=lambda r: r.slot)
        ],  # fmt: skip
    }


def ranges(slots: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``"0-2,5,7-8"``."""
    parts: list[str] = []
    start = prev = None
    for slot in slots:
        if prev is not None and slot == prev + 1:
            prev = slot
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
        start = prev = slot
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)


async def _read(endpoints: tuple[str, ...]) -> State:
    async with Etcd(list(endpoints)) as etcd:
        view = ClusterView(etcd, PREFIX)
        await view.reload()
        return view.state


async def _lags(state: State) -> dict[str, Any]:
    """Each live node's replication figures, from its ``/_health`` (None: no answer)."""
    import httpx

    found: dict[str, Any] = {}

    async def ask(client: httpx.AsyncClient, name: str, http: str, advertise: str) -> None:
        host, _, port = http.rpartition(":")
        if port in ("", "0"):
            return  # started on a port picked at random: not known here
        if host.strip("[]") in ("0.0.0.0", "::", ""):
            host = advertise.rpartition(":")[0]
        try:
            response = await client.get(f"http://{host}:{port}/_health")
            found[name] = response.json().get("replicas") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            found[name] = None

    async with httpx.AsyncClient(timeout=LAG_TIMEOUT, trust_env=False) as client, trio.open_nursery() as nursery:
        for name, info in state.nodes.items():
            if info.http:
                nursery.start_soon(ask, client, name, info.http, info.advertise)
    return found


async def _status(endpoints: tuple[str, ...], args: argparse.Namespace) -> int:
    state = await _read(endpoints)
    status = report(state)
    lags = await _lags(state)
    for node in status["nodes"]:
        node["replication"] = lags.get(node["name"])
    if not args.slots:
        del status["table"]
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    if not status["slots"]:
        print(f"no cluster in etcd at {', '.join(endpoints)} (no node has formed one)")
        return 0
    formed = "formed" if status["formed"] else "being formed"
    print(f"cluster of {status['slots']} slots, {formed}, at etcd revision {status['revision']}")
    rows = [("NODE", "STATE", "SLOTS", "TRANSPORT", "HTTP", "WHICH")]
    for node in status["nodes"]:
        state = ("live" if node["live"] else "NOT LIVE") + (", draining" if node["draining"] else "")
        rows.append((node["name"], state, str(node["slots"]), node["advertise"] or "-", node["http"] or "-", node["ranges"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
    for node in status["nodes"]:
        behind = node.get("replication")
        if behind:
            figures = ", ".join(
                f"{replica} {f['commits']:g} commits behind ({f['seconds']:.2f} s)" + (f", {f['bases']:g} bases to send" if f["bases"] else "")
                for replica, f in sorted(behind.items())
            )
            print(f"replicas of {node['name']}'s active actors: {figures}")
    for move in status["moving"]:
        print(f"moving: slot {move['slot']} from {move['from']} to {move['to']} (epoch {move['epoch']})")
    for taken in status["promoting"]:
        print(f"taking over: slot {taken['slot']} on {taken['owner']}, from its replica's copies (epoch {taken['epoch']})")
    if status["unavailable_slots"]:
        print(f"unavailable: {status['unavailable_slots']} slots ({status['unavailable']}): their owner is not live; they come back with it")
    if status["catching_up_slots"]:
        print(
            f"catching up: {status['catching_up_slots']} slots ({status['catching_up']}) have replicas that are being "
            "brought up to date (see --slots); only replicas in sync can take a slot over"
        )
    for row in status.get("table", []):
        move = f" -> {row['moving_to']}" if row["moving_to"] else ""
        replicas = ""
        if row["replicas"]:
            behind = [r for r in row["replicas"] if r not in row["in_sync"]]
            replicas = f"  replicas {','.join(row['replicas'])}" + (f" (catching up: {','.join(behind)})" if behind else "")
        print(f"slot {row['slot']:>5}  {row['owner']}{move}  epoch {row['epoch']}{replicas}")
    return 0


async def _drain(endpoints: tuple[str, ...], args: argparse.Namespace) -> int:
    name = args.node
    async with Etcd(list(endpoints)) as etcd:
        view = ClusterView(etcd, PREFIX)
        await view.reload()
        if args.cancel:
            await view.set_draining(name, False)
            print(f"node {name} is no longer draining: it takes its share of the slots again")
            return 0
        state = view.state
        if name not in state.nodes:
            held = sum(1 for r in state.slots.values() if r.owner == name)
            print(f"dotdo cluster drain: node {name} is not live ({held} slots): only a running node hands its slots over", file=sys.stderr)
            return 1
        await view.set_draining(name)
        if args.no_wait:
            print(f"node {name} is draining")
            return 0
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run)
            left = None
            while True:
                state = view.state
                held = sum(1 for r in state.slots.values() if r.owner == name)
                takers = [n for n in state.nodes if n != name and n not in state.draining]
                if held != left:
                    print(f"node {name}: {held} slots left", file=sys.stderr, flush=True)
                    left = held
                if not held:
                    break
                if name not in state.nodes:
                    print(f"dotdo cluster drain: node {name} stopped with {held} slots", file=sys.stderr)
                    return 1
                if not takers:
                    print(f"dotdo cluster drain: no other live node can take the {held} slots of {name}", file=sys.stderr)
                    return 1
                await view.changed()
            nursery.cancel_scope.cancel()
    print(f"node {name} is drained: it holds no slots")
    return 0
