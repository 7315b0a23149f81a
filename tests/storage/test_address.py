from pathlib import Path

import pytest

from dotdo.storage.address import MAX_ID_BYTES, Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidId, InvalidNamespace


@pytest.mark.parametrize(
    "actor_id",
    ["../../etc/passwd", "a/b\\c", "nul\x00byte", "é🙂中文", "x" * MAX_ID_BYTES, ".", "..", " ", "\n"],
)
def test_any_id_content_stays_inside_the_data_dir(tmp_path: Path, actor_id: str) -> None:
    address = Address("Customer", actor_id)
    path = address.path(tmp_path)
    assert path.parent.parent.parent == tmp_path
    assert path.name == f"{address.digest}.sqlite"
    with ActorDatabase.open(tmp_path, address) as db:
        db.kv.put("k", "v")
        assert db.stored_address() == address
    files = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {path, Path(f"{path}-wal")}  # a small WAL stays after close


def test_paths_are_deterministic_and_distinct(tmp_path: Path) -> None:
    a = Address("Customer", "alice").path(tmp_path)
    assert a == Address("Customer", "alice").path(tmp_path)
    assert a != Address("Customer", "bob").path(tmp_path)
    assert a.name != Address("Order", "alice").path(tmp_path).name
    assert a.parts[-3:-1] == ("Customer", a.name[:2])


@pytest.mark.parametrize(
    "actor_id", ["", "x" * (MAX_ID_BYTES + 1), "é" * 10_000, 42, None, b"bytes", "\ud800"]
)
def test_invalid_ids_are_refused_clearly(actor_id: object) -> None:
    with pytest.raises(InvalidId, match="invalid id"):
        Address("Customer", actor_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "namespace", ["", "1abc", "_private", "a-b", "a/b", "..", "a b", "x" * 65, "Ünicode", None, 7]
)
def test_invalid_namespaces_are_refused_clearly(namespace: object) -> None:
    with pytest.raises(InvalidNamespace, match="invalid namespace"):
        Address(namespace, "alice")  # type: ignore[arg-type]


def test_valid_namespaces() -> None:
    for ns in ["A", "Customer", "order_line", "X" * 64, "a1_"]:
        assert Address(ns, "i").namespace == ns


def test_str_shortens_long_ids() -> None:
    assert str(Address("Customer", "alice")) == "Customer/alice"
    assert len(str(Address("C", "x" * 500))) < 100
