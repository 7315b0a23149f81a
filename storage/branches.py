"""Git-style branches of one actor's data (``db.branches``).

The actor serves one branch at a time, ``main`` until a checkout. ``create`` forks the
committed state into a new branch, ``checkout`` switches, ``merge`` brings another
branch's changes since the fork into the current one (``dotdo.storage.merge``: what takes
part, how conflicts are found), ``diff`` counts what differs.

Files, beside the actor's database ``<db>``::

    <db>                                 the current branch, always complete
    <db>.branches/<name>.sqlite          every other branch, a complete copy
    <db>.branches/base/<name>.sqlite     the merge base of <name> and the branch it
                                         was forked from: the state they last shared
    <db>.branches/pending/<token>.sqlite a merge's next base, until the merge commits

Each copy carries its own name and lineage in its ``_dotdo_meta`` (``branch``,
``branch.uid``, ``branch.parent``, ``branch.parent_uid``, ``branch.created_at``; no
``branch`` row means ``main``), so a file's content and its name travel together.

**Crash safety.** Every copy is built beside its place and renamed into it
(``backup.save``); the live file changes only in one transaction (``backup.load``).
``checkout`` saves the current branch to its side file, loads the other into the live
file, then deletes that side file: a crash between leaves a side copy of the branch the
live file now is, which the next call removes (the live file's ``branch`` row wins).
``create`` writes the base before the branch, so a crash leaves at most a base of no
branch, also removed.

**Merge bases.** The branch forked from the other holds their base (made by ``create``);
two branches neither of which was forked from the other cannot be merged. A merge joins
the caller's transaction; its next base (the source as merged) is written to
``pending/`` and named by a ``branch.pending.<holder>`` row written in that same
transaction, so the base advances if and only if the merge commits. The next call made
with no transaction open moves it into place.

**Costs** (measured on a 9 MB database: 15,000 KV entries, 35,000 SQL rows, 8,000
things, on one core of the development machine): ``create`` copies it twice (about
50 ms), ``checkout`` twice (35 ms), ``merge`` compares the base and the source table
by table, reads the current branch's thing ids, and copies the source once (about
100 ms for 300 changed rows, 70 ms with nothing to merge); ``diff`` compares two copies
and first copies the current branch when it is one of them (95 ms); ``list`` opens each
side file (under 1 ms for two branches); ``delete`` removes two files.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

from dotdo.storage import backup, merge
from dotdo.storage.errors import BranchExists, BranchNotFound, InvalidInput, StorageError, TransactionError, translate

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

MAIN = "main"
MAX_NAME_LENGTH = 64
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_ROOT_UID = "root"  # the uid of the first main, which has no branch rows
_PENDING = "branch.pending."
_SUFFIX = ".sqlite"


@dataclass(frozen=True, slots=True)
class BranchInfo:
    """One branch of an actor.

    Attributes:
        name: Its name.
        current: Whether the actor serves it.
        parent: The branch it was forked from (None for the first ``main``).
        created_at: When it was forked (for the first ``main``: when the database was made).
        bytes: Its size on disk.
    """

    name: str
    current: bool
    parent: str | None
    created_at: float
    bytes: int


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What a merge did.

    Attributes:
        source: The branch merged from.
        target: The branch merged into (the current one).
        policy: ``fail``, ``source`` or ``current``.
        tables: Per table changed: rows ``inserted``, ``updated`` and ``deleted``.
        conflicts: The rows changed on both sides that the policy resolved, as in
            ``MergeConflict.conflicts``.
    """

    source: str
    target: str
    policy: str
    tables: dict[str, dict[str, int]]
    conflicts: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Lineage:
    name: str
    uid: str
    parent: str | None
    parent_uid: str | None
    created_at: float


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid branch name, else raise ``InvalidInput``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".tmp-" in name:
        raise InvalidInput(
            f"a branch name is 1 to {MAX_NAME_LENGTH} letters, digits, '_', '.' or '-', not starting "
            f"with '.' or '-' (and without '.tmp-'); got {name!r}"
        )
    return name


class Branches:
    """The branches of one ``ActorDatabase``. Synchronous; used inside the actor's turn."""

    __slots__ = ("_db", "_dir")

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db
        self._dir = Path(f"{db.path}.branches")

    def __repr__(self) -> str:
        return f"<Branches {self._db.address}>"

    # -- reading -----------------------------------------------------------------------

    def current(self) -> str:
        """The branch the actor serves."""
        rows = self._db.connection.execute("SELECT value FROM _dotdo_meta WHERE key = 'branch'").fetchall()
        return str(rows[0][0]) if rows else MAIN

    def list(self) -> builtins.list[BranchInfo]:
        """Every branch, the current one first, then by name."""
        self._recover()
        here = self._lineage(self._db.connection, MAIN)
        found = [BranchInfo(here.name, True, here.parent, here.created_at, backup.file_size(self._db.path))]
        for name, path in self._side_files():
            if name != here.name:
                with backup.opened(path) as conn:
                    info = self._lineage(conn, name)
                found.append(BranchInfo(name, False, info.parent, info.created_at, backup.file_size(path)))
        return found

    # -- changing ----------------------------------------------------------------------

    def create(self, name: str) -> BranchInfo:
        """Fork the committed state of the current branch into the new branch ``name``.
        The actor keeps serving the current branch.

        Raises:
            InvalidInput: A bad name. BranchExists: the name is taken.
            TransactionError: Uncommitted writes (commit first).
        """
        check_name(name)
        self._committed("create a branch")
        self._recover()
        conn = self._db.connection
        here = self._lineage(conn, MAIN)
        if name == here.name or self._side(name).exists():
            raise BranchExists(name)
        created = time.time()
        rows = [
            ("branch", name),
            ("branch.uid", secrets.token_hex(8)),
            ("branch.parent", here.name),
            ("branch.parent_uid", here.uid),
            ("branch.created_at", created),
        ]
        backup.save(conn, self._base(name))  # before the branch: see the module docstring
        staging = self._dir / f"{name}{_SUFFIX}.tmp-{secrets.token_hex(4)}"
        try:
            backup.save(conn, staging)
            with backup.opened(staging) as side:
                with side:
                    side.execute("DELETE FROM _dotdo_meta WHERE key GLOB 'branch*'")
                    side.executemany("INSERT INTO _dotdo_meta(key, value) VALUES (?, ?)", rows)
                side.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # syncs the file
            os.replace(staging, self._side(name))
            backup.fsync_dir(self._dir)
        except apsw.Error as exc:
            raise StorageError(f"creating the branch {name!r} failed: {exc}") from None
        finally:
            backup.remove(staging)
        return BranchInfo(name, False, here.name, created, backup.file_size(self._side(name)))

    def checkout(self, name: str) -> None:
        """Serve the branch ``name`` from now on. The branch served until now is kept.
        The caller drops what it cached about the data (the database forgets which
        features exist). Checking out the current branch does nothing.

        Raises:
            InvalidInput: A bad name. BranchNotFound: no such branch.
            TransactionError: Uncommitted writes (commit first).
        """
        check_name(name)
        self._committed("check out a branch")
        self._recover()
        here = self.current()
        if name == here:
            return
        side = self._side(name)
        if not side.exists():
            raise BranchNotFound(name)
        kept = self._side(here)
        backup.save(self._db.connection, kept)
        try:
            backup.load(self._db, side)
        except BaseException:
            backup.remove(kept)  # the live file is still `here`: its copy is stale
            raise
        self._db.forget_features()  # the other branch may have other tables
        backup.remove(side)
        backup.fsync_dir(self._dir)

    def delete(self, name: str) -> None:
        """Delete the branch ``name`` and its merge base.

        Raises:
            InvalidInput: A bad name, or the current branch (check out another first).
            BranchNotFound: No such branch.
        """
        check_name(name)
        self._recover()
        if name == self.current():
            raise InvalidInput(f"{name!r} is the current branch; check out another before deleting it")
        side = self._side(name)
        if not side.exists():
            raise BranchNotFound(name)
        backup.remove(side)
        backup.remove(self._base(name))
        backup.fsync_dir(self._dir)

    def merge(self, source: str, policy: str = "fail") -> MergeReport:
        """Bring the changes made on ``source`` since its merge base into the current
        branch (see ``dotdo.storage.merge`` for what takes part and what a conflict is).

        Joins the caller's transaction (outside a turn, commits on its own). On any
        error nothing is applied. A later merge of the same pair brings only what
        changed after this one.

        Args:
            source: The branch to merge from.
            policy: For rows changed on both sides: ``fail`` (raise, merge nothing),
                ``source`` (its row wins) or ``current`` (ours stays).

        Raises:
            InvalidInput: A bad name or policy; ``source`` is the current branch; neither
                branch was forked from the other; a table's columns differ.
            BranchNotFound: No such branch.
            MergeConflict: Rows changed on both sides under ``fail`` (or that the policy
                cannot resolve); ``conflicts`` names them. Nothing was applied.
        """
        if policy not in merge.POLICIES:
            raise InvalidInput(f"policy is one of {', '.join(merge.POLICIES)}; got {policy!r}")
        check_name(source)
        self._recover()
        db, conn = self._db, self._db.connection
        here = self._lineage(conn, MAIN)
        if source == here.name:
            raise InvalidInput(f"{source!r} is the current branch; merge another branch into it")
        side = self._side(source)
        if not side.exists():
            raise BranchNotFound(source)
        with backup.opened(side) as priv:
            there = self._lineage(priv, source)
            if there.parent_uid == here.uid:
                holder = source
            elif here.parent_uid == there.uid:
                holder = here.name
            else:
                raise InvalidInput(
                    f"neither {source!r} nor {here.name!r} was forked from the other, so they have no "
                    "merge base; merge each into the branch it was forked from"
                )
            base = self._base_of(holder)
            if not base.exists():
                raise StorageError(f"the merge base of {holder!r} is missing ({base})")
            try:
                priv.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
                priv.execute("ATTACH ? AS base", (str(base),))
                priv.execute("BEGIN")
                live = merge.tables(conn, "main")
                reference: Any = conn.execute(f"SELECT id, rid FROM {merge.THINGS}").fetchall() if merge.THINGS in live else []
                changes = merge.compare(priv, "main", "base", reference=reference, current=live)
                with db.transaction():
                    applied = merge.apply(db, priv, changes, policy, live, f"merging {source!r} into {here.name!r}")
                    priv.execute("ROLLBACK")
                    if not changes.empty:
                        token = secrets.token_hex(8)
                        backup.save(priv, self._dir / "pending" / f"{token}{_SUFFIX}")
                        conn.execute(
                            "INSERT OR REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)", (_PENDING + holder, token)
                        )
            except apsw.Error as exc:
                raise translate(exc, db.address) from None
            finally:
                if priv.in_transaction:
                    priv.execute("ROLLBACK")
        return MergeReport(source, here.name, policy, applied.tables, applied.resolved)

    def diff(self, a: str, b: str) -> dict[str, dict[str, int]]:
        """Per table that differs, the rows ``inserted``, ``updated`` and ``deleted``
        going from branch ``a`` to branch ``b`` (the tables of ``dotdo.storage.merge``).

        Raises:
            InvalidInput: A bad name; a table's columns differ.
            BranchNotFound: No such branch.
            TransactionError: One of them is the current branch and there are
                uncommitted writes (commit first).
        """
        check_name(a)
        check_name(b)
        self._recover()
        here = self.current()
        for name in (a, b):
            if name != here and not self._side(name).exists():
                raise BranchNotFound(name)
        if a == b:
            return {}
        snapshot = self._dir / f"diff-{secrets.token_hex(4)}.tmp-snapshot"
        try:
            if here in (a, b):
                self._committed("compare the current branch")
                backup.save(self._db.connection, snapshot)
            path_a, path_b = (snapshot if x == here else self._side(x) for x in (a, b))
            with backup.opened(path_b) as priv:
                priv.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
                priv.execute("ATTACH ? AS old", (str(path_a),))
                priv.execute("BEGIN")
                try:
                    return merge.compare(priv, "main", "old", reference="main").summary()
                except apsw.Error as exc:
                    raise translate(exc, self._db.address) from None
                finally:
                    priv.execute("ROLLBACK")
        finally:
            backup.remove(snapshot)

    # -- files -------------------------------------------------------------------------

    def _side(self, name: str) -> Path:
        return self._dir / f"{name}{_SUFFIX}"

    def _base(self, name: str) -> Path:
        return self._dir / "base" / f"{name}{_SUFFIX}"

    def _base_of(self, holder: str) -> Path:
        """The merge base held by ``holder``: a pending one visible to this
        transaction (a merge earlier in it), else the settled one."""
        rows = self._db.connection.execute("SELECT value FROM _dotdo_meta WHERE key = ?", (_PENDING + holder,)).fetchall()
        if rows:
            pending = self._dir / "pending" / f"{rows[0][0]}{_SUFFIX}"
            if pending.exists():
                return pending
        return self._base(holder)

    def _side_files(self) -> builtins.list[tuple[str, Path]]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in self._dir.iterdir():
                name = path.name[: -len(_SUFFIX)]
                if path.name.endswith(_SUFFIX) and path.is_file() and _NAME_RE.match(name) and ".tmp-" not in name:
                    found.append((name, path))
        return sorted(found)

    def _committed(self, doing: str) -> None:
        if self._db.connection.in_transaction or self._db.savepoint_depth:
            raise TransactionError(f"cannot {doing} with uncommitted writes; commit first")

    @staticmethod
    def _lineage(conn: apsw.Connection, default: str) -> _Lineage:
        meta = dict(conn.execute("SELECT key, value FROM _dotdo_meta WHERE key GLOB 'branch*' OR key = 'created_at'"))
        parent = meta.get("branch.parent")
        return _Lineage(
            name=str(meta.get("branch", default)),
            uid=str(meta.get("branch.uid", _ROOT_UID)),
            parent=None if parent is None else str(parent),
            parent_uid=None if meta.get("branch.parent_uid") is None else str(meta["branch.parent_uid"]),
            created_at=float(meta.get("branch.created_at", meta.get("created_at", 0.0))),  # type: ignore[arg-type]
        )

    def _recover(self) -> None:
        """Finish or undo what a crash or a rolled-back merge left behind."""
        if not self._dir.exists():
            return
        for directory in (self._dir, self._dir / "base", self._dir / "pending"):
            backup.sweep_temporary(directory)
        here = self.current()
        stale = self._side(here)
        if stale.exists():  # a crash during checkout: the live file is this branch
            backup.remove(stale)
        conn = self._db.connection
        if conn.in_transaction:
            return  # pending bases may belong to this transaction: settle them later
        rows = conn.execute("SELECT key, value FROM _dotdo_meta WHERE key GLOB 'branch.pending.*'").fetchall()
        for key, token in rows:
            pending = self._dir / "pending" / f"{token}{_SUFFIX}"
            if pending.exists():
                base = self._base(str(key)[len(_PENDING) :])
                base.parent.mkdir(exist_ok=True)
                os.replace(pending, base)
        if rows:
            backup.fsync_dir(self._dir / "base")
            with conn:
                conn.execute("DELETE FROM _dotdo_meta WHERE key GLOB 'branch.pending.*'")
        with contextlib.suppress(FileNotFoundError):
            for path in (self._dir / "pending").iterdir():  # of merges rolled back
                backup.remove(path)
        sides = {name for name, _ in self._side_files()}
        with contextlib.suppress(FileNotFoundError):
            for path in (self._dir / "base").iterdir():
                name = path.name[: -len(_SUFFIX)]
                if path.name.endswith(_SUFFIX) and name != here and name not in sides:
                    backup.remove(path)  # the base of no branch: create or delete cut short
