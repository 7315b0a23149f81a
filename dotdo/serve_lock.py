"""One server per data directory: ``dotdo serve`` holds an exclusive lock on
``DATA/_dotdo/serve.lock`` while it serves (``fcntl.flock``: the kernel lets it go when
the process ends, however it ends), and writes in it who holds it, so that a second
``dotdo serve`` of the same directory refuses to start and names the first, rather
than starting and answering every call with ``DatabaseLocked``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dotdo.errors import DotdoError

LOCK = Path("_dotdo") / "serve.lock"


class ServeLock:
    """The lock of one data directory, held (see the module)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path
        self._held: dict[str, Any] = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "urls": []}
        self._write()

    def note(self, urls: list[str]) -> None:
        """Say where the server answers, once it is bound."""
        self._held["urls"] = list(urls)
        self._write()

    def _write(self) -> None:
        data = json.dumps(self._held).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)


@contextlib.contextmanager
def serving_lock(data_dir: Path) -> Iterator[ServeLock]:
    """Hold the lock of ``data_dir`` until the block ends.

    Raises:
        DotdoError: Another process serves the directory (named, with where it answers).
    """
    path = data_dir / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DotdoError(f"{data_dir} is served already, {_holder(fd)}: stop it first, or serve another --data") from None
        lock = ServeLock(fd, path)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        held = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        held = {}
    if not isinstance(held, dict) or "pid" not in held:
        return "by another process"
    where = f" at {', '.join(held['urls'])}" if held.get("urls") else ""
    return f"by process {held['pid']}{where} (since {held.get('started', '?')})"
