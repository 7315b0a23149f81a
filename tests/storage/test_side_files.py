"""An actor's side files (history archive, branches) replicated beside its copy
(dotdo.storage.side_files): what a replica lacks, sent as idempotent operations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dotdo.storage import side_files
from dotdo.storage.errors import StorageError


def tree(db: Path) -> dict[str, bytes]:
    """Every side file of ``db`` with its content."""
    found = {}
    for kind, root in side_files.roots(db).items():
        if root.is_dir():
            for path in root.rglob("*"):
                if path.is_file():
                    found[f"{kind}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return found


def write(path: Path, data: bytes) -> None:
    """Write a file beside its place and rename it in, as the archive and branches do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def test_a_replica_is_sent_what_it_lacks_appends_as_tails_replacements_whole(tmp_path: Path) -> None:
    db, copy = tmp_path / "primary" / "a.sqlite", tmp_path / "replica" / "a.sqlite"
    db.parent.mkdir()
    assert side_files.changes(side_files.roots(db), {}, 1 << 20) == ([], {}, True)  # no side files: nothing
    history, branches = side_files.roots(db)["history"], side_files.roots(db)["branches"]
    write(history / "gen-1.log", b"header" + b"r" * 100)
    write(history / "gen-1.base", b"snapshot")
    write(branches / "draft.sqlite", b"draft-1")
    write(branches / "base" / "draft.sqlite", b"base-1")
    ops, held, complete = side_files.changes(side_files.roots(db), {}, 1 << 20)
    assert complete and len(ops) == 4
    side_files.apply(copy, ops)
    assert tree(copy) == tree(db)

    with open(history / "gen-1.log", "ab") as log:  # the archive appends
        log.write(b"s" * 50)
    write(branches / "draft.sqlite", b"draft-2!")  # a branch rewritten: a new file
    (branches / "base" / "draft.sqlite").unlink()
    ops, held, complete = side_files.changes(side_files.roots(db), held, 1 << 20)
    by_path = {op[0]: op for op in ops}
    assert by_path["history/gen-1.log"][1:] == [106, b"s" * 50, True]  # only the tail
    assert by_path["branches/draft.sqlite"][1:] == [0, b"draft-2!", True]
    assert by_path["branches/base/draft.sqlite"][1] == -1  # deleted
    assert "history/gen-1.base" not in by_path  # unchanged: not sent
    side_files.apply(copy, ops)
    side_files.apply(copy, ops)  # a repeat changes nothing
    assert tree(copy) == tree(db)
    assert side_files.changes(side_files.roots(db), held, 1 << 20) == ([], held, True)

    os.truncate(history / "gen-1.log", 80)  # a torn record cut off at open: shorter, so whole
    ops, held, _ = side_files.changes(side_files.roots(db), held, 1 << 20)
    assert [op[:2] for op in ops] == [["history/gen-1.log", 0]]
    side_files.apply(copy, ops)
    assert tree(copy) == tree(db)


def test_large_side_files_go_over_several_rounds(tmp_path: Path) -> None:
    db, copy = tmp_path / "p" / "a.sqlite", tmp_path / "r" / "a.sqlite"
    write(side_files.roots(db)["branches"] / "big.sqlite", os.urandom(10_000))
    write(side_files.roots(db)["history"] / "gen-1.log", os.urandom(3_000))
    held: side_files.Manifest = {}
    rounds = 0
    while True:
        ops, held, complete = side_files.changes(side_files.roots(db), held, 4_096)
        assert sum(len(op[2]) for op in ops) <= 4_096
        side_files.apply(copy, ops)
        rounds += 1
        if complete:
            break
    assert rounds >= 3 and tree(copy) == tree(db)


@pytest.mark.parametrize(
    "op",
    [["../escape", 0, b"x", True], ["history/../../x", 0, b"x", True], ["/etc/passwd", 0, b"x", True], ["other/x", 0, b"x", True],
     ["history", 0, b"x", True], ["history/x", "0", b"x", True], ["history/x", 0, "text", True], ["history/x", 0]],
)
def test_operations_outside_the_side_folders_or_malformed_are_refused(tmp_path: Path, op: list) -> None:
    with pytest.raises(StorageError):
        side_files.apply(tmp_path / "a.sqlite", [op])
    assert not any(tmp_path.parent.glob("escape")) and list(tmp_path.iterdir()) == []


def test_moving_and_removing_a_copys_side_files(tmp_path: Path) -> None:
    source, target = tmp_path / "r" / "a.sqlite", tmp_path / "d" / "a.sqlite"
    write(side_files.roots(source)["history"] / "gen-1.log", b"log")
    write(side_files.roots(target)["branches"] / "stale.sqlite", b"old")  # from a time it was here
    side_files.move(source, target)
    assert tree(target) == {"history/gen-1.log": b"log"} and tree(source) == {}
    side_files.remove(target)
    assert tree(target) == {}
