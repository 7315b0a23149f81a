"""Listing the actors of a namespace: every actor whose database this server's data
directory holds, from the actor directory (``dotdo.storage.directory``, where an
actor's name is recorded when it is created), a page at a time in id order, each with
its name, its files' size, when they last changed (its last write) and its pending
alarm and schedules (from the alarm index). Nothing is opened or activated: a listing
costs a query and a ``stat`` of each actor's files.

On a cluster node the listing is the node's: the actors of the slots it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dotdo.storage.directory import ActorDirectory, files_of
from dotdo.storage.errors import InvalidInput

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Listed:
    """One actor of a listing: ``bytes`` and ``changed`` (epoch seconds, None without a
    file yet) are of its files; ``alarm`` is when its alarm is due (None: none),
    ``schedules`` how many it has."""

    namespace: str
    hex: str
    name: str | None
    bytes: int
    changed: float | None
    alarm: float | None
    schedules: int


def list_actors(supervisor: Supervisor, namespace: str, after: str | None = None, limit: int = 100) -> list[Listed]:
    """A page of the actors of ``namespace`` (see the module), after the id ``after``.

    Raises:
        ActorNotFound: The namespace is not served.
        InvalidInput: ``limit`` is not 1 to 1,000, or ``after`` is not an id.
    """
    supervisor.registry.kind(namespace)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
    if after is not None and (len(after) != 64 or any(c not in "0123456789abcdef" for c in after)):
        raise InvalidInput("after is the id (64 hex digits) of the last actor of the page before")
    data_dir = supervisor.config.data_dir
    directory = supervisor.table.directory
    if directory is None:  # a read-only server keeps none open
        directory = ActorDirectory.open(data_dir, read_only=True)
        try:
            entries = directory.page(namespace, after, limit)
        finally:
            directory.close()
    else:
        entries = directory.page(namespace, after, limit)
    pending = supervisor.alarms.index.of_actors(namespace, [e.hex for e in entries])
    alarms = {p.hex: p.due for p in pending if p.kind == "alarm"}
    schedules: dict[str, int] = {}
    for p in pending:
        if p.kind != "alarm":
            schedules[p.hex] = schedules.get(p.hex, 0) + 1
    listed = []
    for entry in entries:
        size, changed = 0, None
        for path in files_of(data_dir, entry.namespace, entry.hex):
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            size += stat.st_size if not path.is_dir() else _folder_size(path)
            changed = stat.st_mtime if changed is None else max(changed, stat.st_mtime)
        listed.append(Listed(entry.namespace, entry.hex, entry.name, size, changed, alarms.get(entry.hex), schedules.get(entry.hex, 0)))
    return listed


def _folder_size(path: os.PathLike[str]) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
