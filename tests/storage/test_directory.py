"""The actor directory (dotdo.storage.directory): every actor of a data directory by
slot bits, recorded before its file may exist, and read once from the files of a data
directory served before it existed; and the data directory's identity."""

from __future__ import annotations

from pathlib import Path

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.directory import ActorDirectory, Entry, data_identity, files_of, slot_bits
from dotdo.storage.options import StorageOptions

HEXES = [f"{i:08x}{i * 7919:08x}" + "0" * 48 for i in range(12)]


def test_actors_are_listed_by_slot_and_forgotten(tmp_path: Path) -> None:
    directory = ActorDirectory.open(tmp_path)
    for hex_id in HEXES:
        directory.note("Acct", hex_id, f"name-{hex_id[:4]}")
        directory.note("Acct", hex_id, None)  # again: nothing changes
    assert directory.count() == len(HEXES)
    for slot in range(4):
        listed = directory.of_slot(4, slot)
        assert [e.hex for e in listed] == sorted(h for h in HEXES if slot_bits(h) % 4 == slot)
    directory.forget([Entry("Acct", HEXES[0], None)])
    assert directory.count() == len(HEXES) - 1
    directory.close()


def test_a_data_directory_served_before_the_directory_is_read_once_from_its_files(tmp_path: Path) -> None:
    for hex_id in HEXES[:2]:
        ActorDatabase.open(tmp_path, Address("Acct", hex_id), StorageOptions(), name=f"n{hex_id[:2]}").close()
    directory = ActorDirectory.open(tmp_path)
    assert not directory.complete and directory.count() == 0
    assert directory.scan() == 2
    assert directory.complete and {(e.hex, e.name) for e in directory.of_slot(1, 0)} == {(h, f"n{h[:2]}") for h in HEXES[:2]}
    assert Address("Acct", HEXES[0]).path(tmp_path) in files_of(tmp_path, "Acct", HEXES[0])
    directory.close()
    assert ActorDirectory.open(tmp_path).complete  # kept


def test_a_data_directory_keeps_one_identity(tmp_path: Path) -> None:
    first = data_identity(tmp_path)
    assert len(first) == 32 and data_identity(tmp_path) == first
    assert data_identity(tmp_path / "other") != first
