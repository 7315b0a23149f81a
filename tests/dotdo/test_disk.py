"""A full disk and a read-only data directory, with a real ``dotdo serve``.

A small file system of its own is a tmpfs mounted in a private user and mount namespace
(``unshare -rm``), so no privilege is needed and nothing outside the test's directory is
touched; a read-only data directory is a read-only bind mount in such a namespace. The
tests are skipped where the kernel allows no unprivileged namespaces.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest
import trio

from tests.dotdo.serving import STOP_TIMEOUT, dotdo_serve, environment, stop, wait_for_url

KINDS = str(Path(__file__).with_name("disk_kinds.py"))
FS_SIZE = "8m"  # the whole file system: data directory and filler
FILLER_MB = 2
BLOB = 256 * 1024
INTEGRITY = """
import apsw, json, pathlib, sys
found = {}
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.sqlite")):
    # Read only, the WAL's index in memory: no -shm file needs room on the full disk.
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY, vfs="unix-none")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
    found[str(path)] = conn.execute("PRAGMA integrity_check").fetchall()[0][0]
    conn.close()
print("integrity " + json.dumps(found), flush=True)
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="unprivileged user namespaces are not available")


class Namespaced:
    """A shell script run as root of a private user and mount namespace, its output in
    files; the script starts ``dotdo serve`` in the background (its pid in ``pidfile``)."""

    def __init__(self, process: trio.Process, stdout: Path, stderr: Path, pidfile: Path) -> None:
        self.process = process
        self.stdout = stdout
        self.stderr = stderr
        self.pidfile = pidfile

    def output(self) -> str:
        return self.stdout.read_text()

    async def url(self) -> str:
        return await wait_for_url(self.process, self.stdout, self.stderr)

    async def stop_server(self) -> None:
        """SIGTERM to the server; the script goes on with what follows it."""
        pid = int(self.pidfile.read_text())
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        with trio.fail_after(STOP_TIMEOUT + 30):
            await self.process.wait()


@asynccontextmanager
async def namespaced(tmp_path: Path, script: str, **env: str) -> AsyncIterator[Namespaced]:
    stdout, stderr, pidfile = tmp_path / "ns.out", tmp_path / "ns.err", tmp_path / "server.pid"
    variables = {**environment(), "PY": sys.executable, "PIDFILE": str(pidfile), "KINDS": KINDS, **env}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await trio.lowlevel.open_process(
            ["unshare", "-rm", "sh", "-ec", script],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).parents[2],  # the repository: `python -m tests...` works
            env=variables,
        )
    try:
        yield Namespaced(process, stdout, stderr, pidfile)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()


async def rpc(client: httpx.AsyncClient, actor: str, method: str, *args: Any, namespace: str = "Blob") -> httpx.Response:
    return await client.post(f"/_rpc/{namespace}/{actor}/{method}", json={"args": list(args)})


# -- a full disk -----------------------------------------------------------------------

FULL_DISK = """
mount -t tmpfs -o size=$FS_SIZE tmpfs "$FS"
head -c $((FILLER_MB * 1048576)) /dev/zero > "$FS/filler"
"$PY" -m dotdo serve "$KINDS" --data "$FS/data" --port 0 --rpc-port 0 --workers 1 --env filler="$FS/filler" &
echo $! > "$PIDFILE"
wait $! || echo "server exit $?"
"$PY" -c "$INTEGRITY" "$FS/data"
"""


async def test_a_full_disk_refuses_writes_keeps_reads_and_corrupts_nothing(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    env = {"FS": str(fs), "FS_SIZE": FS_SIZE, "FILLER_MB": str(FILLER_MB), "INTEGRITY": INTEGRITY}
    async with namespaced(tmp_path, FULL_DISK, **env) as ns:
        url = await ns.url()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            acknowledged: dict[str, dict[str, int]] = {"a": {}, "b": {}}
            for actor in acknowledged:
                for i in range(2):
                    assert (await rpc(client, actor, "put", f"small-{i}", 1000)).status_code == 200
                    acknowledged[actor][f"small-{i}"] = 1000
            # Fill the disk: each put adds a quarter of a megabyte, until one is refused.
            refused = None
            for i in range(60):
                response = await rpc(client, "a", "put", f"big-{i}", BLOB)
                if response.status_code != 200:
                    refused = response
                    break
                acknowledged["a"][f"big-{i}"] = BLOB
            assert refused is not None, "the disk never filled"
            assert refused.status_code == 507
            assert refused.json()["error"] == "StorageFull" and "disk is full" in refused.json()["message"]
            # Full: every other write is refused as clearly, and every read still works.
            again = await rpc(client, "b", "put", "big", BLOB)
            assert again.status_code == 507 and again.json()["error"] == "StorageFull"
            fresh = await rpc(client, "fresh", "put", "big", BLOB)
            assert fresh.status_code in (200, 507) and (fresh.status_code == 200 or fresh.json()["error"] == "StorageFull")
            if fresh.status_code == 200:
                acknowledged["fresh"] = {"big": BLOB}
            assert (await client.get("/_health")).json()["status"] == "ok"
            for actor, keys in acknowledged.items():
                stored = (await rpc(client, actor, "keys")).json()
                assert "result" in stored, (actor, stored)
                stored = stored["result"]
                assert stored == {"keys": keys, "puts": len(keys)}  # no refused turn left a trace
            # Space comes back: writes work again.
            assert (await rpc(client, "a", "free")).json() == {"result": True}
            assert (await rpc(client, "b", "put", "after", BLOB)).status_code == 200
            acknowledged["b"]["after"] = BLOB
            for actor, keys in acknowledged.items():
                assert (await rpc(client, actor, "keys")).json()["result"]["keys"] == keys
        await ns.stop_server()
    output = ns.output()
    assert "server exit" not in output, ns.stderr.read_text()
    lines = [line for line in output.splitlines() if line.startswith("integrity ")]
    assert len(lines) == 1, (output, ns.stderr.read_text())
    [line] = lines
    checked = json.loads(line.removeprefix("integrity "))
    assert len(checked) >= 4  # a, b and the two indexes at least
    assert set(checked.values()) == {"ok"}, checked
    assert "Traceback" not in ns.stderr.read_text()


# -- a read-only data directory ---------------------------------------------------------

READ_ONLY = """
mount --bind "$DATA" "$DATA"
mount -o remount,ro,bind "$DATA"
"$PY" -m dotdo serve "$KINDS" --data "$DATA" --port 0 --rpc-port 0 --workers "$WORKERS" &
echo $! > "$PIDFILE"
wait $! || echo "server exit $?"
"""


def _snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_read_only_data_directory_is_served_for_reads(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    async with dotdo_serve(tmp_path, KINDS, "--data", str(data), "--rpc-port", "0") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            for actor in ("a", "b", "c"):
                assert (await rpc(client, actor, "put", "k", 100)).status_code == 200
        assert await stop(served, signal.SIGTERM) == 0
    before = _snapshot(data)
    async with namespaced(tmp_path, READ_ONLY, DATA=str(data), WORKERS=str(workers)) as ns:
        url = await ns.url()
        assert "read-only" in ns.output()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            health = (await client.get("/_health")).json()
            assert health["status"] == "ok" and health["read_only"] is True
            for actor in ("a", "b", "c"):
                read = await rpc(client, actor, "keys")
                assert read.json() == {"result": {"keys": {"k": 100}, "puts": 1}}
                write = await rpc(client, actor, "put", "k2", 100)
                assert write.status_code == 503 and write.json()["error"] == "StorageReadOnly"
            new = await rpc(client, "never-seen", "keys")
            assert new.status_code == 503 and "cannot be created" in new.json()["message"]
            assert (await client.get("/_admin/alarms")).status_code == 200
            # Still serving after every refusal.
            assert (await rpc(client, "a", "keys")).status_code == 200
        await ns.stop_server()
    assert "server exit" not in ns.output(), ns.stderr.read_text()
    assert "Traceback" not in ns.stderr.read_text()
    assert _snapshot(data) == before  # not a byte changed
    for path in data.rglob("*.sqlite"):
        conn = apsw.Connection(str(path))
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
