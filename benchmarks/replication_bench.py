"""Replicated storage benchmarks : three cluster nodes of one
worker each and one etcd on this machine, as in ``cluster_bench.py``.

- ``writes``: wrk posting ``/_rpc/Counter/<id>/increment`` over 2,000 counters through
  all three nodes, with every slot on two replicas acknowledged by quorum, against the
  same cluster without replicas, in the same run (rounds alternating between two
  clusters started side by side).
- ``failover``: ``--kills`` times, a node is killed (``kill -9``) and the time until
  every one of its slots is served again from a replica is taken from the slot table;
  the node is then started again on its disk and the cluster left to settle.

    python benchmarks/replication_bench.py [--scenarios writes,failover] [--duration 8]
        [--rounds 2] [--kills 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cluster_bench
from cluster_bench import Cluster, loads, warm

NAMES = ("a", "b", "c")


class ReplicatedCluster(Cluster):
    """A ``Cluster`` whose nodes keep ``replicas`` copies of each slot."""

    def __init__(self, scratch: Path, replicas: int) -> None:
        super().__init__(scratch)
        self.replicas = replicas

    def options(self) -> list[str]:
        return ["--replicas", str(self.replicas)]

    def settle_replicas(self, names: list[str]) -> None:
        """Balanced, and every slot on ``replicas`` other live nodes, in sync."""
        self.settle(names)
        want = min(self.replicas, len(names) - 1)
        cluster_bench._until(
            lambda: all(len(row["in_sync"]) == want for row in self.status()["table"]), "the replicas to be in sync", timeout=300
        )


def writes(args: argparse.Namespace, scratch: Path) -> list[str]:
    counters = [f"c{i}" for i in range(args.counters)]
    results: dict[str, list[float]] = {"replicas 2, quorum": [], "replicas 0": []}
    p99: dict[str, list[float]] = {k: [] for k in results}
    clusters = {}
    try:
        for label, count in (("replicas 2, quorum", 2), ("replicas 0", 0)):
            (scratch / label.replace(" ", "_").replace(",", "")).mkdir()
            cluster = clusters[label] = ReplicatedCluster(scratch / label.replace(" ", "_").replace(",", ""), count)
            for name in NAMES:
                cluster.start(name)
            cluster.settle_replicas(list(NAMES))
            warm(cluster.nodes["a"].url, counters)
        replicated = clusters["replicas 2, quorum"]
        before = shipped(replicated)
        for _ in range(args.rounds):
            for label, cluster in clusters.items():
                runs = loads([(cluster.nodes[n].url, counters) for n in NAMES], args, scratch, max(1, args.connections // 3))
                results[label].append(sum(r.rate for r in runs))
                p99[label].append(max(r.p99_ms for r in runs))
        after = shipped(replicated)
    finally:
        for cluster in clusters.values():
            cluster.close()
    (on, on_rate), (off, off_rate) = [(k, statistics.median(v)) for k, v in results.items()]
    lines = [f"writes {k:<20} {statistics.median(v):>9,.0f} req/s  p99 {statistics.median(p99[k]):7.2f} ms" for k, v in results.items()]
    lines.append(f"writes {on} / {off}: {on_rate / off_rate:.2f}x")
    sent = {key: after[key] - before.get(key, 0) for key in after}
    if sent.get("commits"):
        lines.append(
            f"shipped per commit to each replica: {sent['commit_bytes'] / sent['commits']:,.0f} bytes of pages; "
            f"{sent['commits'] / max(sent['calls'], 1):.1f} commits per call ({sent['calls']:,} calls, "
            f"{sent['bases']} bases of {sent['base_bytes']:,} bytes)"
        )
    return lines


def shipped(cluster: ReplicatedCluster) -> dict[str, int]:
    """What the cluster's nodes have sent their replicas so far (``/_health``), in all."""
    total: dict[str, int] = {}
    for node in cluster.nodes.values():
        body = cluster_bench._get(f"{node.url}/_health")
        for key, value in (json.loads(body).get("shipped", {}) if body else {}).items():
            total[key] = total.get(key, 0) + value
    return total


def failover(args: argparse.Namespace, scratch: Path) -> list[str]:
    cluster = ReplicatedCluster(scratch, 2)
    times: list[float] = []
    try:
        for name in NAMES:
            cluster.start(name, "--lease-ttl", str(args.ttl))
        cluster.settle_replicas(list(NAMES))
        warm(cluster.nodes["a"].url, [f"c{i}" for i in range(200)])
        for kill in range(args.kills):
            victim = NAMES[kill % 3]
            node = cluster.nodes[victim]
            node.proc.kill()  # kill -9 (one worker: the node is this one process)
            node.proc.wait()
            killed = time.monotonic()
            cluster_bench._until(
                lambda: all(row["owner"] != victim for row in cluster.status()["table"]) and not cluster.status()["promoting"],
                "the slots to come back",
                timeout=120,
            )
            times.append(time.monotonic() - killed)
            cluster.start(victim, "--lease-ttl", str(args.ttl))
            cluster.settle_replicas(list(NAMES))
    finally:
        cluster.close()
    times.sort()
    return [
        f"failover {len(times)} kills (lease TTL {args.ttl} s): p50 {statistics.median(times):.2f} s, max {times[-1]:.2f} s, "
        f"all: {', '.join(f'{t:.2f}' for t in times)}"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="writes,failover")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--counters", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=5)
    args = parser.parse_args()
    print(f"replication bench on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    for name in args.scenarios.split(","):
        with tempfile.TemporaryDirectory(prefix=f"replication-{name}-") as scratch:
            for line in {"writes": writes, "failover": failover}[name](args, Path(scratch)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
