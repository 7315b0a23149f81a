"""The files an actor keeps beside its database, replicated with it: its history
archive (``<db>.history/``, ``dotdo.storage.history``) and its branches
(``<db>.branches/``, ``dotdo.storage.branches``).

A primary describes the side files as a *manifest*: for each file, by its path
relative to the database's folder kind (``history/...``, ``branches/...``), its inode
and size. What a replica was last sent is a manifest too, and ``changes`` compares
them: a file with the same inode that grew is sent from where the replica's copy ends
(the archive's logs are only appended to), any other new or changed file whole (the
archive's snapshots and every branch file are written beside their place and renamed
into it, so a change is a new inode), and a file that is gone is deleted. The changes
are *operations*, each idempotent: write these bytes at this offset (and, when it is
the file's last part, cut the file there), or delete the file. A replica applies them
to the side files of its copy (``apply``), in order, after the commits they came with.

Synchronous, like the rest of ``storage``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from dotdo.storage.errors import StorageError
from dotdo.storage.history_log import history_dir

KINDS = ("history", "branches")
"""The folders of side files, as the first part of every relative path."""

Manifest = dict[str, tuple[int, int]]
"""Each side file (relative path) with its inode and the bytes of it sent (or held)."""
Operation = list[Any]
"""``[path, offset, data, last]``: ``data`` written at ``offset``, the file cut after it
when ``last``; ``[path, -1, b"", True]``: the file deleted."""


def roots(db: Path) -> dict[str, Path]:
    """The side folders of the database at ``db``, by kind."""
    return {"history": history_dir(db), "branches": Path(f"{db}.branches")}


def manifest(folders: dict[str, Path]) -> Manifest:
    """The side files in ``folders`` (a database's ``roots``) as they are now (none:
    empty)."""
    found: Manifest = {}
    for kind, root in folders.items():
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            try:
                status = path.lstat()
            except FileNotFoundError:
                continue  # removed while listed
            if path.is_file() and not path.is_symlink():
                found[f"{kind}/{path.relative_to(root).as_posix()}"] = (status.st_ino, status.st_size)
    return found


def changes(folders: dict[str, Path], sent: Manifest, budget: int) -> tuple[list[Operation], Manifest, bool]:
    """What a replica that was sent ``sent`` lacks of the side files in ``folders`` (a
    database's ``roots``): the operations (at most about ``budget`` bytes of data), the
    manifest it holds once it has applied them, and whether that is everything (False:
    more in another round)."""
    now = manifest(folders)
    held = dict(sent)
    ops: list[Operation] = []
    for rel in sorted(set(held) - set(now)):
        ops.append([rel, -1, b"", True])
        del held[rel]
    complete = True
    for rel, (inode, size) in sorted(now.items()):
        before = held.get(rel)
        start = before[1] if before is not None and before[0] == inode and before[1] <= size else 0
        if before == (inode, size):
            continue
        if budget <= 0:
            complete = False
            break
        kind, name = rel.split("/", 1)
        path = folders[kind] / name
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read(min(size - start, budget))
        except FileNotFoundError:
            complete = False  # replaced or removed while read: the next round
            continue
        last = start + len(data) >= size
        ops.append([rel, start, data, last])
        budget -= len(data)
        held[rel] = (inode, start + len(data))
        if not last:
            complete = False
    return ops, held, complete


def apply(db: Path, ops: list[Operation], *, durable: bool = False) -> None:
    """Apply operations from ``changes`` to the side files of the copy at ``db``
    (``durable``: each file written is fsynced).

    Raises:
        StorageError: An operation is malformed, or names a path outside the side
            folders, or the files cannot be written.
    """
    folders = roots(db)
    for op in ops:
        if not (isinstance(op, list) and len(op) == 4 and isinstance(op[0], str) and isinstance(op[1], int)
                and isinstance(op[2], bytes) and isinstance(op[3], bool)):
            raise StorageError(f"a side-file operation is malformed: {op!r:.200}")
        rel, offset, data, last = op
        parts = PurePosixPath(rel).parts
        if len(parts) < 2 or parts[0] not in folders or any(p in ("", ".", "..") for p in parts) or rel.startswith("/"):
            raise StorageError(f"a side-file operation names {rel!r}, which is not a side file")
        path = folders[parts[0]].joinpath(*parts[1:])
        try:
            if offset < 0:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, data, offset)
                if last:
                    os.ftruncate(fd, offset + len(data))
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write the side file {rel} of {db.name}: {exc}") from exc


def move(source: Path, target: Path) -> None:
    """Move the side folders of the database at ``source`` to those of ``target``
    (replacing what ``target`` had), as a promoted copy's database moves."""
    destinations = roots(target)
    for kind, root in roots(source).items():
        shutil.rmtree(destinations[kind], ignore_errors=True)
        if root.is_dir():
            destinations[kind].parent.mkdir(parents=True, exist_ok=True)
            os.replace(root, destinations[kind])


def remove(db: Path) -> None:
    """Delete the side folders of the database at ``db``."""
    for root in roots(db).values():
        shutil.rmtree(root, ignore_errors=True)
