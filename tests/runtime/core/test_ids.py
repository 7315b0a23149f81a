import pytest

from dotdo.runtime.core.ids import ActorId, id_from_name, id_from_string, is_id_of, new_unique_id, resolve
from dotdo.storage.errors import InvalidId, InvalidNamespace


def test_names_give_stable_distinct_ids() -> None:
    a = id_from_name("Customer", "alice")
    assert a == id_from_name("Customer", "alice")
    assert a.name == "alice" and len(a.hex) == 64
    assert a != id_from_name("Customer", "bob")
    assert a.hex != id_from_name("Order", "alice").hex
    assert str(a) == "Customer/alice"


def test_equality_ignores_the_name() -> None:
    a = id_from_name("Customer", "alice")
    assert ActorId("Customer", a.hex) == a
    assert hash(ActorId("Customer", a.hex)) == hash(a)


def test_unique_ids_never_repeat_and_parse_back() -> None:
    ids = {new_unique_id("Room").hex for _ in range(1000)}
    assert len(ids) == 1000
    some = new_unique_id("Room")
    assert id_from_string("Room", some.hex) == some


def test_id_from_string_rejects_other_namespaces_and_garbage() -> None:
    room = new_unique_id("Room")
    with pytest.raises(InvalidId, match="not an id of namespace 'Chat'"):
        id_from_string("Chat", room.hex)
    flipped = ("0" if room.hex[0] != "0" else "1") + room.hex[1:]
    with pytest.raises(InvalidId):
        id_from_string("Room", flipped)
    for bad in ["", "xyz", room.hex.upper(), room.hex + "0", "../" * 30]:
        with pytest.raises(InvalidId, match="64 lowercase hex"):
            id_from_string("Room", bad)


def test_resolve_takes_an_id_of_the_namespace_else_a_name() -> None:
    room = new_unique_id("Room")
    assert resolve("Room", room.hex) == room
    assert resolve("Chat", room.hex).name == room.hex  # an id of another kind is just a name there
    assert resolve("Room", "lobby") == id_from_name("Room", "lobby")
    assert is_id_of("Room", room.hex) and not is_id_of("Chat", room.hex)


@pytest.mark.parametrize("name", ["", "x" * 513, "\ud800", None, 3])
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidId):
        id_from_name("Customer", name)  # type: ignore[arg-type]


def test_bad_namespace() -> None:
    with pytest.raises(InvalidNamespace):
        id_from_name("no-dashes", "a")
