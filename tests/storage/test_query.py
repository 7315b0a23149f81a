import time
from typing import Any

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput, InvalidQuery
from dotdo.storage.query import MAX_DEPTH, MAX_IN_VALUES, compile_query, parse_field, sql_string
from dotdo.storage.things import ThingStore

INJECTION = "x'); DROP TABLE _dotdo_things; --"


@pytest.fixture
def store(db: ActorDatabase) -> ThingStore:
    s = db.things
    s.create("Customer", {"age": 30, "city": "Paris", "address": {"city": "Paris", "zip": "75001"},
                          "tags": ["vip", "new"], "active": True, "score": 1.5}, id="a", name="Alice")
    s.create("Customer", {"age": 25, "city": "Lyon", "address": {"city": "Lyon"}, "tags": ["new"],
                          "active": False, "score": 2.5}, id="b", name="Bob")
    s.create("Customer", {"age": 35, "city": "Paris", "address": {"city": "Paris"}, "tags": [],
                          "nickname": "caro"}, id="c", name="Carol")
    s.create("Customer", {"age": "unknown", "city": "Nice", "tags": ["vip", 7], "name": "David"},
             id="d", name="Dave", visibility="public")
    s.create("Order", {"total": 99, "city": "Paris", "note": INJECTION}, id="e", name="Order 1")
    return s


def ids(things: list) -> list[str]:
    return [t.id for t in things]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({}, ["a", "b", "c", "d"]),
        ({"city": "Paris"}, ["a", "c"]),
        ({"address.city": "Paris"}, ["a", "c"]),
        ({"address.zip": "75001"}, ["a"]),
        ({"age": {"$eq": 25}}, ["b"]),
        ({"age": {"$gt": 25}}, ["a", "c"]),  # "unknown" is text: numbers only match numbers
        ({"age": {"$gte": 25}}, ["a", "b", "c"]),
        ({"age": {"$lt": 30}}, ["b"]),
        ({"age": {"$lte": 30}}, ["a", "b"]),
        ({"age": {"$gte": 26, "$lt": 35}}, ["a"]),
        ({"age": {"$gt": "a"}}, ["d"]),  # strings only match strings
        ({"city": {"$lt": "Nice"}}, ["b"]),
        ({"city": {"$lte": "Nice"}}, ["b", "d"]),
        ({"score": {"$gt": 2}}, ["b"]),
        ({"score": {"$lte": 1.5}}, ["a"]),
        ({"age": {"$ne": 30}}, ["b", "c", "d"]),
        ({"nickname": {"$ne": "caro"}}, ["a", "b", "d"]),  # absent counts as "not equal"
        ({"nickname": None}, ["a", "b", "d"]),
        ({"nickname": {"$ne": None}}, ["c"]),
        ({"age": {"$in": [25, 35]}}, ["b", "c"]),
        ({"nickname": {"$in": ["caro", None]}}, ["a", "b", "c", "d"]),
        ({"age": {"$in": []}}, []),
        ({"tags": {"$contains": "vip"}}, ["a", "d"]),
        ({"tags": {"$contains": 7}}, ["d"]),
        ({"tags": {"$contains": "vi"}}, []),  # array membership is whole elements
        ({"nickname": {"$contains": "ar"}}, ["c"]),  # substring of a string
        ({"city": {"$contains": "par"}}, []),  # case-sensitive
        ({"name": {"$contains": "a"}}, ["c", "d"]),  # the name column: "Alice" has no lower-case a
        ({"tags[0]": "new"}, ["b"]),
        ({"name": "Dave"}, ["d"]),
        ({"data.name": "David"}, ["d"]),
        ({"active": True}, ["a"]),
        ({"active": False}, ["b"]),
        ({"$or": [{"city": "Lyon"}, {"age": 35}]}, ["b", "c"]),
        ({"$and": [{"city": "Paris"}, {"tags": {"$contains": "new"}}]}, ["a"]),
        ({"$or": [{"$and": [{"city": "Paris"}, {"age": {"$gt": 31}}]}, {"name": "Bob"}]}, ["b", "c"]),
        ({"$id": {"$in": ["a", "e", "zz"]}}, ["a"]),
        ({"visibility": "public"}, ["d"]),
        ({"$version": 1}, ["a", "b", "c", "d"]),
        ({"$type": "Customer", "city": INJECTION}, []),
    ],
)
def test_where_operators(store: ThingStore, where: dict[str, Any], expected: list[str]) -> None:
    assert ids(store.list("Customer", where=where)) == expected
    assert store.count("Customer", where) == len(expected)


def test_where_without_a_type_and_on_top_level_columns(store: ThingStore) -> None:
    assert ids(store.list(where={"city": "Paris"})) == ["a", "c", "e"]
    assert ids(store.list(where={"$type": "Order"})) == ["e"]
    assert ids(store.list(where={"$id": {"$in": ["a", "e"]}})) == ["a", "e"]
    assert ids(store.list(where={"note": INJECTION})) == ["e"]  # the value is only ever bound
    time.sleep(0.002)
    mark = time.time()
    store.update("c", {"age": 36})
    assert ids(store.list(where={"$version": {"$gte": 2}})) == ["c"]
    assert ids(store.list(where={"updated_at": {"$gt": mark}})) == ["c"]
    assert ids(store.list(where={"created_at": {"$lt": mark}})) == ["a", "b", "c", "d", "e"]
    assert store.count() == 5 and store.count("Order") == 1


@pytest.mark.parametrize(
    ("order_by", "expected"),
    [
        (None, ["a", "b", "c", "d"]),
        ("age", ["b", "a", "c", "d"]),  # numbers before text
        ("-age", ["d", "c", "a", "b"]),
        (["city", "-age"], ["b", "d", "c", "a"]),
        ("name", ["a", "b", "c", "d"]),
        ("nickname", ["a", "b", "d", "c"]),  # absent first, ties in creation order
        ("-nickname", ["c", "d", "b", "a"]),  # ties follow the last field's direction
        ("-$id", ["d", "c", "b", "a"]),
        (["address.city", "name"], ["d", "b", "a", "c"]),
    ],
)
def test_order_by(store: ThingStore, order_by: Any, expected: list[str]) -> None:
    assert ids(store.list("Customer", order_by=order_by)) == expected


def test_limit_offset_and_find_one(store: ThingStore) -> None:
    assert ids(store.list("Customer", order_by="-name", limit=2, offset=1)) == ["c", "b"]
    assert ids(store.list("Customer", limit=10, offset=3)) == ["d"]
    assert store.list("Customer", offset=10) == []
    assert store.find_one("Customer", {"city": "Paris"}).id == "a"
    assert store.find_one("Customer", {"city": "Paris"}, order_by="-age").id == "c"
    assert store.find_one(None, {"total": 99}).id == "e"
    assert store.find_one("Customer", {"city": "Rome"}) is None


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"age": {"$between": [1, 2]}}, "unknown operator '$between'"),
        ({"$nor": [{"a": 1}]}, "unknown field or operator '$nor'"),
        ({"age": {"$in": 25}}, "$in takes a list"),
        ({"age": {"$in": list(range(MAX_IN_VALUES + 1))}}, f"at most {MAX_IN_VALUES}"),
        ({"age": {"$gt": [1]}}, "compare with a number or a string"),
        ({"age": {"$gt": None}}, "compare with a number or a string"),
        ({"age": {"$gt": True}}, "compare with a number or a string"),
        ({"age": {"$gt": float("nan")}}, "finite"),
        ({"age": 2**64}, "64-bit"),
        ({"address": {"city": "Paris"}}, "dotted path like 'address.city'"),
        ({"tags": ["vip"]}, "use $in"),
        ({"age": {}}, "empty condition"),
        ({"tags": {"$contains": None}}, "not None"),
        ({"tags": {"$contains": ["vip"]}}, "not a list"),
        ({"name": {"$contains": 5}}, "on a column takes a string"),
        ({"$or": []}, "non-empty list"),
        ({"$and": {"a": 1}}, "non-empty list"),
        ({"$or": ["city"]}, "a where is a dict"),
        ({"age": {"$eq": object()}}, "cannot compare"),
    ],
)
def test_bad_wheres_are_invalid_queries(store: ThingStore, where: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        store.list("Customer", where=where)
    assert message in str(caught.value)


def test_nesting_and_term_limits(store: ThingStore) -> None:
    where: dict[str, Any] = {"age": 30}
    for _ in range(MAX_DEPTH + 1):
        where = {"$and": [where]}
    with pytest.raises(InvalidQuery, match="nested deeper"):
        store.list(where=where)
    with pytest.raises(InvalidQuery, match="at most 100 conditions"):
        store.list(where={"$or": [{"age": i} for i in range(101)]})


@pytest.mark.parametrize(
    "field",
    [INJECTION, "city') = 1 OR ('1", "a b", "", "$.city", "city.", "a..b", "1abc", "tags[x]", "a-b",
     "city;", "data.", "x" * 201, 5, None],
)
def test_bad_field_names_are_refused_and_nothing_is_dropped(store: ThingStore, field: Any) -> None:
    with pytest.raises(InvalidQuery):
        store.list("Customer", where={field: 1})
    with pytest.raises(InvalidQuery):
        store.list("Customer", order_by=[field] if field is None else field)
    with pytest.raises(InvalidQuery):
        store.create_index("Customer", field)
    assert store.count() == 5


def test_injection_looking_values_are_plain_data(store: ThingStore) -> None:
    store.create("Customer", {"city": INJECTION}, id=INJECTION, name=INJECTION)
    assert ids(store.list(where={"city": INJECTION})) == [INJECTION]
    assert ids(store.list(where={"name": {"$contains": "DROP TABLE"}})) == [INJECTION]
    assert store.get(INJECTION).name == INJECTION
    assert [t.id for t, _ in store.search(INJECTION)] == [INJECTION, "e"]
    with pytest.raises(InvalidInput):
        store.list("Customer' OR '1'='1")
    with pytest.raises(InvalidInput):
        store.create_index("Customer'; DROP TABLE _dotdo_things; --", "city")
    assert store.count() == 6 and store.relate(INJECTION, "knows", "a").verb == "knows"


def test_fields_parse_to_columns_or_bound_paths() -> None:
    assert parse_field("$id").column == "t.id" and parse_field("name").column == "t.name"
    assert parse_field("address.city").path == "$.address.city"
    assert parse_field("data.name").path == "$.name" and parse_field("data.name").canonical == "data.name"
    assert parse_field("data.city").canonical == "city"
    assert parse_field("data.data.x").canonical == "data.data.x" and parse_field("data.data.x").path == "$.data.x"
    compiled = compile_query({"address.city": "Paris", "age": {"$gt": 3}}, "-name", frozenset())
    assert "Paris" not in compiled.where and "address" not in compiled.where
    assert compiled.params == ("$.address.city", "Paris", "$.age", 3, "$.age")
    indexed = compile_query({"address.city": "Paris"}, None, frozenset({"$.address.city"}))
    assert indexed.where == "(json_extract(t.data, '$.address.city') = ?)" and indexed.params == ("Paris",)
    with pytest.raises(InvalidQuery):
        sql_string("x' OR 1")


# -- indexes -------------------------------------------------------------------------


def plan(db: ActorDatabase, call: Any) -> str:
    """EXPLAIN QUERY PLAN of the things query that ``call`` runs."""
    seen: list[tuple[str, Any]] = []

    def trace(cursor: Any, sql: str, bindings: Any) -> bool:
        seen.append((sql, bindings))
        return True

    db.connection.exec_trace = trace
    try:
        call()
    finally:
        db.connection.exec_trace = None
    sql, bindings = next((s, b) for s, b in seen if "FROM _dotdo_things AS t WHERE" in s)
    return " / ".join(row[3] for row in db.connection.execute("EXPLAIN QUERY PLAN " + sql, bindings))


def test_an_index_serves_equality_ranges_and_order(db: ActorDatabase, store: ThingStore) -> None:
    queries = [
        lambda: store.list("Customer", where={"address.city": "Paris"}),
        lambda: store.list("Customer", where={"address.city": {"$gte": "M"}}),
        lambda: store.list("Customer", where={"address.city": {"$in": ["Lyon", "Nice"]}}),
        lambda: store.list("Customer", order_by="-address.city", limit=2),
        lambda: store.count("Customer", {"address.city": "Lyon"}),
    ]
    before = [plan(db, q) for q in queries]
    results = [q() for q in queries]
    assert not any("_dotdo_ix_" in p for p in before)
    made = store.create_index("Customer", "address.city")
    assert store.create_index("Customer", "data.address.city") == made  # idempotent, same field
    assert [(i.type, i.field, i.name) for i in store.indexes()] == [("Customer", "address.city", made.name)]
    after = [plan(db, q) for q in queries]
    assert all(made.name in p for p in after), after
    assert "TEMP B-TREE" not in after[3]
    assert [q() for q in queries] == results  # the same answers either way
    assert made.name not in plan(db, lambda: store.list("Order", where={"address.city": "Paris"}))
    assert store.drop_index("Customer", "address.city") is True and store.drop_index("Customer", "address.city") is False
    assert store.indexes() == [] and made.name not in plan(db, queries[0])


def test_indexes_on_columns_and_their_limits(db: ActorDatabase, store: ThingStore) -> None:
    made = store.create_index("Customer", "name")
    assert made.name in plan(db, lambda: store.list("Customer", where={"name": {"$gt": "B"}}))
    assert ids(store.list("Customer", where={"name": {"$gt": "B"}})) == ["b", "c", "d"]
    store.create_index("Order", "total")
    assert [(i.type, i.field) for i in store.indexes()] == [("Customer", "name"), ("Order", "total")]
    assert [i.field for i in store.indexes("Order")] == ["total"]
    with pytest.raises(InvalidQuery, match="indexed already"):
        store.create_index("Customer", "$id")
    with pytest.raises(InvalidInput, match=r"\$type"):
        store.create_index("Not a type", "city")


def test_a_rolled_back_index_is_not_used_and_the_answers_stay_right(db: ActorDatabase, store: ThingStore) -> None:
    query = lambda: store.list("Customer", where={"city": {"$in": ["Lyon", "Nice"]}})  # noqa: E731
    expected = ids(query())
    with pytest.raises(RuntimeError), db.turn():
        made = store.create_index("Customer", "city")
        assert made.name in plan(db, query) and ids(query()) == expected
        raise RuntimeError
    assert store.indexes() == [] and made.name not in plan(db, query) and ids(query()) == expected
    store.create_index("Customer", "city")
    assert made.name in plan(db, query) and ids(query()) == expected
