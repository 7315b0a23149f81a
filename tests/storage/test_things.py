import re
from pathlib import Path

import msgpack
import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import (
    InvalidInput,
    InvalidQuery,
    StorageLimitExceeded,
    ThingExists,
    ThingNotFound,
    VersionConflict,
)
from dotdo.storage.things_model import MAX_JSON_BYTES


class Boom(Exception):
    pass


def table_names(db: ActorDatabase) -> set[str]:
    return {row[0] for row in db.connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


def test_reads_on_a_fresh_database_find_nothing_and_build_nothing(db: ActorDatabase) -> None:
    store = db.things
    assert store.get("x") is None
    assert store.list() == [] and store.list("Customer", where={"city": "Paris"}, order_by="-age") == []
    assert store.count() == 0 and store.find_one("Customer", {"age": 3}) is None
    assert store.search("anything") == [] and store.nearest([0.5] * 128) == []
    assert store.related("x") == [] and store.relationships("x", direction="both") == []
    assert store.indexes() == [] and store.vector_dimension == 128
    assert store.delete("x") is False and store.unrelate("x", "knows", "y") is False
    assert store.drop_index("Customer", "city") is False
    assert not any(name.startswith("_dotdo_thing") for name in table_names(db))
    assert "schema.things" not in db.meta()
    with pytest.raises(ThingNotFound):
        store.update("x", {"a": 1})
    with pytest.raises(InvalidQuery):  # a bad query fails even with no table to run it on
        store.list("Customer", where={"age": {"$between": 1}})
    with pytest.raises(InvalidQuery):
        store.search("  ")
    with pytest.raises(InvalidInput, match="dimensions"):
        store.nearest([1.0])
    assert "_dotdo_things" not in table_names(db)


def test_create_and_get(db: ActorDatabase) -> None:
    store = db.things
    alice = store.create("Customer", {"address": {"city": "Paris"}, "tags": ["vip"]}, name="Alice")
    assert re.fullmatch(r"[0-9a-f]{32}", alice.id)
    assert (alice.type, alice.name, alice.visibility, alice.version, alice.meta) == ("Customer", "Alice", "private", 1, {})
    assert alice.created_at == alice.updated_at and alice.created_at > 1.7e9
    assert store.get(alice.id) == alice
    other = store.create("Customer")
    assert other.id != alice.id and other.data == {} and other.name is None
    assert "schema.things" in db.meta()


def test_as_dict_is_plain_data_and_create_accepts_it(db: ActorDatabase, tmp_path: Path) -> None:
    store = db.things
    thing = store.create(
        "Page", {"n": 1.5, "ok": True, "nested": {"l": [1, None, "x"]}}, id="https://example.com/p/1",
        name="Home", meta={"source": "import"}, visibility="public",
    )
    as_dict = thing.as_dict()
    assert as_dict["$id"] == "https://example.com/p/1" and as_dict["$type"] == "Page" and as_dict["$version"] == 1
    assert msgpack.unpackb(msgpack.packb(as_dict)) == as_dict
    with ActorDatabase.open(tmp_path / "other", Address("Test", "copy")) as copy:
        copied = copy.things.create({**as_dict, "$version": 7})
        assert copied.as_dict() | {"created_at": 0, "updated_at": 0} == as_dict | {"created_at": 0, "updated_at": 0}
    with pytest.raises(InvalidInput, match="no other fields"):
        store.create({"$type": "Page"}, {"a": 1})


def test_create_with_a_taken_id_changes_nothing(db: ActorDatabase) -> None:
    store = db.things
    store.create("Customer", {"n": 1}, id="alice")
    with pytest.raises(ThingExists) as caught:
        store.create("Customer", {"n": 2}, id="alice", embedding=[1.0] * 128)
    assert caught.value.thing_id == "alice"
    assert store.get("alice").data == {"n": 1} and store.count() == 1 and store.nearest([1.0] * 128) == []


def test_update_merges_data_as_a_json_merge_patch(db: ActorDatabase) -> None:
    store = db.things
    thing = store.create("Customer", {"address": {"city": "Paris", "zip": "75001"}, "tags": ["a", "b"], "n": 1})
    updated = store.update(
        thing.id, {"address": {"zip": None, "street": "Rue X"}, "tags": ["c"], "n": None, "extra": {"x": None, "y": 2}}
    )
    assert updated.data == {"address": {"city": "Paris", "street": "Rue X"}, "tags": ["c"], "extra": {"y": 2}}
    assert updated.version == 2 and updated.updated_at >= updated.created_at == thing.created_at
    assert store.get(thing.id) == updated
    assert store.update(thing.id).version == 3  # every update counts, even an empty one
    assert store.get(thing.id).data == updated.data


def test_update_name_meta_and_visibility(db: ActorDatabase) -> None:
    store = db.things
    thing = store.create("Customer", {"a": 1}, name="Alice", meta={"m": {"x": 1}})
    changed = store.update(thing.id, meta={"m": {"y": 2}}, visibility="public")
    assert (changed.name, changed.meta, changed.visibility, changed.data) == ("Alice", {"m": {"x": 1, "y": 2}}, "public", {"a": 1})
    cleared = store.update(thing.id, name=None, meta=None)
    assert (cleared.name, cleared.meta, cleared.visibility) == (None, {}, "public")
    assert store.get(thing.id) == cleared
    with pytest.raises(InvalidInput, match="visibility"):
        store.update(thing.id, visibility=None)


def test_optimistic_concurrency(db: ActorDatabase) -> None:
    store = db.things
    thing = store.create("Customer", {"n": 0})
    assert store.update(thing.id, {"n": 1}, expected_version=1).version == 2
    with pytest.raises(VersionConflict) as caught:
        store.update(thing.id, {"n": 99}, expected_version=1)
    assert (caught.value.expected, caught.value.actual, caught.value.thing_id) == (1, 2, thing.id)
    assert "read it again" in str(caught.value)
    assert store.get(thing.id).data == {"n": 1} and store.get(thing.id).version == 2
    with pytest.raises(InvalidInput, match="expected_version"):
        store.update(thing.id, {"n": 2}, expected_version="2")
    with pytest.raises(ThingNotFound):
        store.update("nobody", {"n": 1})


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("not a type",), {}, "$type"),
        (("9Lives",), {}, "$type"),
        (("T" * 101,), {}, "$type"),
        ((5,), {}, "$type"),
        (("Customer",), {"id": "a\nb"}, "$id"),
        (("Customer",), {"id": ""}, "$id"),
        (("Customer",), {"visibility": "secret"}, "visibility"),
        (("Customer",), {"name": 5}, "name"),
        (("Customer", ["not", "a", "dict"]), {}, "data"),
        (("Customer", {"a": {"b": {1, 2}}}), {}, "data.a.b"),
        (("Customer", {"a": [1, float("nan")]}), {}, "data.a[1]"),
        (("Customer", {"a": {1: 2}}), {}, "data.a"),
        (("Customer",), {"meta": {"when": object()}}, "meta.when"),
        (({"$type": "Customer", "colour": "red"},), {}, "colour"),
        (({"name": "no type"},), {}, "$type"),
    ],
)
def test_bad_shapes_name_the_field_and_write_nothing(db: ActorDatabase, args: tuple, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        db.things.create(*args, **kwargs)
    assert f"{field}: " in str(caught.value)
    assert db.things.count() == 0


def test_limits(db: ActorDatabase) -> None:
    store = db.things
    with pytest.raises(StorageLimitExceeded) as caught:
        store.create("Blob", {"text": "x" * MAX_JSON_BYTES})
    assert caught.value.limit == MAX_JSON_BYTES
    deep: dict = {}
    node = deep
    for _ in range(70):
        node["d"] = node = {}
    with pytest.raises(StorageLimitExceeded, match="nested deeper"):
        store.create("Blob", deep)
    for bad in ({"limit": 0}, {"limit": 10_001}, {"limit": True}, {"offset": -1}):
        with pytest.raises(InvalidQuery):
            store.list(**bad)
    assert store.count() == 0


def test_relationships_both_ways_with_filters(db: ActorDatabase) -> None:
    store = db.things
    alice = store.create("Person", name="Alice", id="alice")
    bob = store.create("Person", name="Bob", id="bob")
    acme = store.create("Company", name="Acme", id="acme")
    store.relate("alice", "knows", "bob")
    store.relate("alice", "worksFor", "acme", {"since": 2020})
    store.relate("bob", "worksFor", "acme")
    store.relate("bob", "knows", "alice")

    def ids(things: list) -> list[str]:
        return [t.id for t in things]

    assert ids(store.related("alice")) == ["bob", "acme"]
    assert ids(store.related("alice", verb="knows")) == ["bob"]
    assert ids(store.related("alice", type="Company")) == ["acme"]
    assert ids(store.related("acme", direction="in")) == ["alice", "bob"]
    assert ids(store.related("alice", direction="in")) == ["bob"]
    assert ids(store.related("bob", direction="both")) == ["alice", "acme"]  # alice once, though linked both ways
    assert ids(store.related("acme", "worksFor", "Person", direction="both", limit=1)) == ["alice"]
    assert store.related("acme") == [] and store.related("nobody", direction="both") == []
    edges = store.relationships("alice", direction="both")
    assert [(r.from_id, r.verb, r.to_id) for r in edges] == [
        ("alice", "knows", "bob"), ("alice", "worksFor", "acme"), ("bob", "knows", "alice")
    ]
    assert edges[1].data == {"since": 2020} and edges[1].as_dict()["from"] == "alice"
    assert [r.to_id for r in store.relationships("alice", verb="worksFor")] == ["acme"]
    assert alice.id == "alice" and bob.name == "Bob" and acme.type == "Company"


def test_relate_is_idempotent_and_unrelate(db: ActorDatabase) -> None:
    store = db.things
    store.create("Person", id="a")
    store.create("Person", id="b")
    first = store.relate("a", "knows", "b", {"level": 1})
    again = store.relate("a", "knows", "b", {"level": 2})
    assert again.created_at == first.created_at and again.data == {"level": 2}
    assert [r.data for r in store.relationships("a")] == [{"level": 2}]
    assert store.relate("a", "knows", "a").to_id == "a"  # a thing may relate to itself
    assert store.unrelate("a", "knows", "b") is True and store.unrelate("a", "knows", "b") is False
    assert [t.id for t in store.related("a")] == ["a"]
    with pytest.raises(ThingNotFound, match="'ghost'"):
        store.relate("a", "knows", "ghost")
    with pytest.raises(InvalidInput, match="verb"):
        store.relate("a", "knows well", "b")
    with pytest.raises(InvalidInput, match="direction"):
        store.related("a", direction="sideways")
    with pytest.raises(InvalidInput, match="dict"):
        store.relate("a", "knows", "b", ["x"])


def test_delete_cascades_to_relationships_text_and_vector(db: ActorDatabase) -> None:
    store = db.things
    store.create("Person", {"bio": "zebra keeper"}, id="a", embedding=[1.0] * 128)
    store.create("Person", id="b")
    store.relate("a", "knows", "b")
    store.relate("b", "knows", "a")
    assert [t.id for t, _ in store.search("zebra")] == ["a"] and len(store.nearest([1.0] * 128)) == 1
    assert store.delete("a") is True
    assert store.get("a") is None and store.delete("a") is False
    assert store.relationships("b", direction="both") == [] and store.related("b", direction="both") == []
    assert store.search("zebra") == [] and store.nearest([1.0] * 128) == []
    conn = db.connection
    assert conn.execute("SELECT count(*) FROM _dotdo_relationships").fetchall() == [(0,)]
    assert conn.execute("SELECT count(*) FROM _dotdo_vectors").fetchall() == [(0,)]
    store.create("Person", {"bio": "new zebra"}, id="c")  # may reuse the rowid: nothing stale shows
    assert [t.id for t, _ in store.search("zebra")] == ["c"] and store.related("c", direction="both") == []


def test_a_rolled_back_turn_leaves_nothing_not_even_the_tables(db: ActorDatabase) -> None:
    store = db.things
    with pytest.raises(Boom), db.turn():
        store.create("Customer", {"bio": "walrus"}, id="a")
        assert [t.id for t, _ in store.search("walrus")] == ["a"]
        raise Boom
    assert store.get("a") is None and store.search("walrus") == []
    assert "_dotdo_things" not in table_names(db)
    store.create("Customer", id="a")  # the tables are built again
    assert store.count() == 1


def test_a_rolled_back_turn_undoes_every_write_including_the_text_index(db: ActorDatabase) -> None:
    store = db.things
    store.create("Customer", {"bio": "walrus"}, id="a")
    store.create("Customer", id="b")
    db.begin_turn()
    try:
        store.create("Customer", {"bio": "narwhal"}, id="c", embedding=[0.0] * 128)
        store.update("a", {"bio": "penguin"})
        store.relate("a", "knows", "b")
        store.delete("b")
        store.create_index("Customer", "bio")
        db.rollback()
    finally:
        db.end_turn()
    assert [t.id for t in store.list()] == ["a", "b"]
    assert store.get("a").version == 1 and store.get("a").data == {"bio": "walrus"}
    assert store.search("narwhal") == [] and store.search("penguin") == []
    assert [t.id for t, _ in store.search("walrus")] == ["a"]
    assert store.relationships("a") == [] and store.indexes() == [] and store.nearest([0.0] * 128) == []


def test_commit_inside_a_turn_keeps_what_came_before(db: ActorDatabase) -> None:
    store = db.things
    with pytest.raises(Boom), db.turn():
        store.create("Customer", id="kept")
        db.commit()
        store.create("Customer", id="lost")
        raise Boom
    assert [t.id for t in store.list()] == ["kept"]


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    address = Address("Test", "durable")
    with ActorDatabase.open(tmp_path, address) as db:
        store = db.things
        store.set_vector_dimension(2)
        store.create("City", {"country": "FR"}, id="paris", name="Paris", embedding=[1.0, 0.0])
        store.create("City", {"country": "FR"}, id="lyon", name="Lyon", embedding=[0.0, 1.0])
        store.relate("lyon", "near", "paris")
        store.create_index("City", "country")
        store.update("paris", {"population": 2_100_000})
    with ActorDatabase.open(tmp_path, address) as db:
        store = db.things
        assert store.get("paris").data == {"country": "FR", "population": 2_100_000} and store.get("paris").version == 2
        assert [t.id for t in store.related("paris", direction="in")] == ["lyon"]
        assert [i.field for i in store.indexes("City")] == ["country"]
        assert [t.id for t, _ in store.search("lyon")] == ["lyon"]
        assert [t.id for t, _ in store.nearest([0.1, 0.9], k=1)] == ["lyon"] and store.vector_dimension == 2
