"""A host of its own for one cluster node: a Linux network namespace joined to this
machine by two veth pairs, so that a test can cut the node off from etcd, from the
other nodes, or from both, and heal it again (``async with namespace_host() as host:``).

The layout (K, K+1: two /24s of 10.213.0.0/16 nothing on this machine uses)::

    this machine (root namespace)                 namespace NS
    10.213.K.1    dptPIDe  <--- veth --->  e  10.213.K.2     the "etcd network"
    10.213.K+1.1  dptPIDp  <--- veth --->  p  10.213.K+1.2   the "peer network"
    dptPIDs (a veth whose peer dptPIDz stays down): the fallback route to both /24s

etcd listens on 10.213.K.1 (``etcd_host``), the other nodes on 10.213.K+1.1
(``peer_host``) and the node in the namespace on 10.213.K+1.2 (``address``). Local
addresses stay reachable from this machine whatever their link's state.

A cut sets this machine's end of a link down. The namespace's packets are then dropped
(its end has no carrier), and this machine's route to that /24 goes with the link, so
its packets to the namespace take the fallback route into the sink, where they are
dropped too: silence both ways, as in a real partition (no reset, no ICMP, only
timeouts). Healing sets the link up again, and the kernel puts the route back.

Needs root and iproute2 (``ip netns``, veth); without them a test skips, except under CI
(``CI=true``), where it fails (``require``, best from a sync fixture). Names carry the
test process's pid (namespace ``dotdo-part-PID``, links ``dptPID?``); what a crashed run
left behind (its pid gone) is removed before a new one is made.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

NAMESPACE_PREFIX = "dotdo-part-"
LINK_PREFIX = "dpt"  # + pid + one letter: at most 11 characters (the limit is 15)
NETWORK = "10.213"


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its output (``check``: fail on an error)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _unavailable(reason: str) -> None:
    reason = f"no network namespaces: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _remove(pid: int) -> None:
    """Remove the namespace and the links of run ``pid`` (those that exist). Processes
    still inside the namespace are ones a run started there: they are killed first, or
    they would keep the namespace, and its links, alive."""
    namespace = f"{NAMESPACE_PREFIX}{pid}"
    if namespace in _namespaces():
        for member in _ip("netns", "pids", namespace, check=False).split():
            try:
                os.kill(int(member), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", namespace, check=False)
    for suffix in "eps":  # the veths' other ends go with them
        _ip("link", "del", f"{LINK_PREFIX}{pid}{suffix}", check=False)


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _remove_leftovers() -> None:
    """Remove what runs whose process is gone left behind (and anything of this pid)."""
    pids = {int(m[1]) for name in _namespaces() if (m := re.fullmatch(rf"{NAMESPACE_PREFIX}(\d+)", name))}
    links = re.findall(rf"^\d+: {LINK_PREFIX}(\d+)[epsz][@:]", _ip("-o", "link"), re.MULTILINE)
    pids |= {int(pid) for pid in links}
    for pid in pids:
        if pid == os.getpid() or not os.path.exists(f"/proc/{pid}"):
            _remove(pid)


def _free_subnets() -> int:
    """K such that 10.213.K.0/24 and 10.213.K+1.0/24 appear in no address or route here
    (where the search starts depends on the pid, so parallel runs rarely meet)."""
    used = _ip("-o", "addr") + _ip("route", "show", "table", "all")
    start = os.getpid() % 127
    for i in range(127):
        k = 2 * ((start + i) % 127)
        if f"{NETWORK}.{k}." not in used and f"{NETWORK}.{k + 1}." not in used:
            return k
    raise RuntimeError(f"no free /24 pair left in {NETWORK}.0.0/16")


@dataclass
class NamespaceHost:
    """The namespace and its two links (see the module)."""

    namespace: str
    etcd_host: str
    """This machine's address on the etcd network: etcd listens here."""
    peer_host: str
    """This machine's address on the peer network: the other nodes listen here."""
    address: str
    """The namespace's address on the peer network: its node listens here."""
    etcd_link: str
    peer_link: str

    @property
    def etcd_address(self) -> str:
        """The namespace's address on the etcd network: its node, listening on every
        address, is reached there while its peer link is cut."""
        return self.etcd_host.rsplit(".", 1)[0] + ".2"

    def program(self) -> tuple[str, ...]:
        """The dotdo command, run inside the namespace (``ip netns exec`` execs it: the
        server keeps the process id it was started as)."""
        return ("ip", "netns", "exec", self.namespace, sys.executable, "-m", "dotdo")

    def cut(self, *, etcd: bool = False, peers: bool = False) -> None:
        """Cut the namespace off from etcd, from the peers, or both (silently)."""
        for link, chosen in ((self.etcd_link, etcd), (self.peer_link, peers)):
            if chosen:
                _ip("link", "set", link, "down")

    def heal(self) -> None:
        """Set both links up again; their routes are back when this returns."""
        for link, host in ((self.etcd_link, self.etcd_host), (self.peer_link, self.peer_host)):
            _ip("link", "set", link, "up")
            subnet = host.rsplit(".", 1)[0] + ".0/24"
            if subnet not in _ip("-4", "route", "show", "dev", link):  # the kernel adds it back; if not, we do
                _ip("route", "replace", subnet, "dev", link, "src", host)


def require() -> None:
    """Skip the test (fail it under CI) unless network namespaces can be made here: root,
    iproute2, and ``ip netns add`` working (tried, and undone). Call it from a sync
    fixture: under pytest-trio a skip raised inside the test loses its reason. Removes
    what crashed runs left behind."""
    if os.geteuid() != 0:
        _unavailable("they need root")
    if shutil.which("ip") is None:
        _unavailable("no ip command (iproute2)")
    try:
        _remove_leftovers()
        probe = f"{NAMESPACE_PREFIX}{os.getpid()}"
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (OSError, RuntimeError) as exc:
        _unavailable(str(exc))


@asynccontextmanager
async def namespace_host() -> AsyncIterator[NamespaceHost]:
    """A new namespace with its links (see the module), removed when the block ends,
    however it ends (processes still inside it are killed: they would keep it alive)."""
    require()
    pid = os.getpid()
    namespace = f"{NAMESPACE_PREFIX}{pid}"
    k = _free_subnets()
    etcd_net, peer_net = f"{NETWORK}.{k}", f"{NETWORK}.{k + 1}"
    etcd_link, peer_link, sink = (f"{LINK_PREFIX}{pid}{suffix}" for suffix in "eps")
    try:
        _ip("netns", "add", namespace)
        for link, inside, net in ((etcd_link, "e", etcd_net), (peer_link, "p", peer_net)):
            _ip("link", "add", link, "type", "veth", "peer", "name", inside, "netns", namespace)
            _ip("addr", "add", f"{net}.1/24", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", namespace, "addr", "add", f"{net}.2/24", "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", sink, "type", "veth", "peer", "name", f"{LINK_PREFIX}{pid}z")
        _ip("link", "set", sink, "up")
        for net in (etcd_net, peer_net):
            _ip("route", "add", f"{net}.0/24", "dev", sink, "metric", "1000")
        yield NamespaceHost(namespace, f"{etcd_net}.1", f"{peer_net}.1", f"{peer_net}.2", etcd_link, peer_link)
    finally:
        _remove(pid)
