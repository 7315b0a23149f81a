import math
from array import array

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput, InvalidQuery
from dotdo.storage.search import DEFAULT_DIMENSION, MAX_QUERY_LENGTH, plain_query
from dotdo.storage.things import ThingStore

CORPUS = [
    ("guide", "Doc", "Solar panels", {"body": "How to fit panels on a roof."}),
    ("faq", "Doc", "Roof FAQ", {"body": "Solar power, solar costs and solar savings."}),
    ("shop", "Doc", "Garden shop", {"body": "Tools, seeds, pots, gloves, hoses and one solar lamp.", "tags": ["outdoor"]}),
    ("note", "Note", "Pricing", {"text": "foo-bar pricing for solar"}),
    ("recipe", "Doc", "Café au lait", {"steps": ["heat milk", "brew coffee"], "n": 12345}),
    ("filler0", "Doc", "Chess openings", {"body": "Nothing about energy here."}),
    ("filler1", "Doc", "Knitting basics", {"body": "Nothing about energy here."}),
    ("filler2", "Doc", "River fishing", {"body": "Nothing about energy here."}),
    ("filler3", "Doc", "Jazz records", {"body": "Nothing about energy here."}),
]


@pytest.fixture
def docs(db: ActorDatabase) -> ThingStore:
    store = db.things
    for thing_id, type_, name, data in CORPUS:
        store.create(type_, data, id=thing_id, name=name)
    return store


def found(results: list) -> list[str]:
    return [thing.id for thing, _ in results]


def test_search_ranks_by_bm25(docs: ThingStore) -> None:
    results = docs.search("solar")
    # three times in a body; once in a name (weighted double); once in a short body;
    # once in a long body
    assert found(results) == ["faq", "guide", "note", "shop"]
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert found(docs.search("roof")) == ["faq", "guide"]  # the name outweighs the body
    assert found(docs.search("solar roof")) == ["faq", "guide"]  # every word must match
    assert found(docs.search("solar lamp")) == ["shop"]
    assert found(docs.search("solar", type="Doc", limit=2)) == ["faq", "guide"]
    assert found(docs.search("solar", type="Note")) == ["note"]


def test_plain_text_is_never_a_syntax_error(docs: ThingStore) -> None:
    assert found(docs.search("foo-bar")) == ["note"]
    assert found(docs.search("panel*")) == ["guide"]  # a prefix
    assert found(docs.search("cafe")) == ["recipe"] and found(docs.search("CAFÉ")) == ["recipe"]
    assert found(docs.search("coffee")) == ["recipe"]  # strings inside lists are indexed
    assert docs.search("steps") == [] and docs.search("12345") == []  # keys and numbers are not
    for text in ['he said "hi', "solar AND", "NOT solar", "(solar", "solar OR roof", "body:solar", "^solar"]:
        docs.search(text)  # no error
    assert found(docs.search('"solar"')) == found(docs.search("solar"))
    assert plain_query('say "hi" foo-bar pre*') == '"say" """hi""" "foo-bar" "pre" *'
    for bad in ["", "   ", " -- ! ", "*", "x" * (MAX_QUERY_LENGTH + 1), 5]:
        with pytest.raises(InvalidQuery):
            docs.search(bad)


def test_fts5_syntax_and_its_errors(docs: ThingStore) -> None:
    assert found(docs.search("solar NOT roof", syntax="fts5")) == ["note", "shop"]
    assert found(docs.search("name:roof", syntax="fts5")) == ["faq"]
    assert set(found(docs.search("lamp OR coffee", syntax="fts5"))) == {"shop", "recipe"}
    for bad in ["solar AND", '"unclosed', "nosuchcolumn:solar", "(solar"]:
        with pytest.raises(InvalidQuery, match="invalid full-text query"):
            docs.search(bad, syntax="fts5")
    with pytest.raises(InvalidQuery, match="syntax"):
        docs.search("solar", syntax="sql")  # type: ignore[arg-type]


def test_updates_keep_the_text_index_in_step(docs: ThingStore) -> None:
    docs.update("guide", {"body": "Mount them on the garage."})
    assert found(docs.search("roof")) == ["faq"] and found(docs.search("garage")) == ["guide"]
    assert found(docs.search("panels")) == ["guide"]  # still in the name
    docs.update("guide", name="Wind turbines")
    assert docs.search("panels") == [] and found(docs.search("turbines")) == ["guide"]
    docs.update("guide", visibility="public")  # no text change: still found
    assert found(docs.search("turbines")) == ["guide"]


def test_a_failed_create_leaves_no_text_entry(docs: ThingStore) -> None:
    with pytest.raises(InvalidInput):
        docs.create("Doc", {"body": "zeppelin"}, embedding=[1.0])
    assert docs.search("zeppelin") == [] and docs.count() == len(CORPUS)


# -- vectors -------------------------------------------------------------------------


@pytest.fixture
def vectors(db: ActorDatabase) -> ThingStore:
    store = db.things
    store.set_vector_dimension(3)
    for thing_id, type_, vector in [
        ("x", "Point", [1.0, 0.0, 0.0]),
        ("near-x", "Point", [0.9, 0.1, 0.0]),
        ("y", "Point", [0.0, 1.0, 0.0]),
        ("z", "Point", [0.0, 0.0, 1.0]),
        ("far", "Point", [-3.0, 0.0, 0.0]),
        ("other", "Shape", [1.0, 0.05, 0.0]),
    ]:
        store.create(type_, id=thing_id, embedding=vector)
    store.create("Point", id="no-vector")
    return store


def test_nearest_ranks_by_distance(vectors: ThingStore) -> None:
    results = vectors.nearest([1.0, 0.0, 0.0], k=10)
    assert found(results) == ["x", "other", "near-x", "y", "z", "far"]  # y and z tie: creation order
    distances = [d for _, d in results]
    assert distances[0] == 0.0 and math.isclose(distances[2], math.sqrt(0.02), rel_tol=1e-6)
    assert math.isclose(distances[3], math.sqrt(2), rel_tol=1e-6) and math.isclose(distances[5], 4.0)
    assert found(vectors.nearest([1.0, 0.0, 0.0], k=2, type="Point")) == ["x", "near-x"]
    assert found(vectors.nearest([0.0, 0.2, 0.9], k=1)) == ["z"]


def test_cosine_ignores_length(vectors: ThingStore) -> None:
    results = vectors.nearest([10.0, 0.0, 0.0], k=3, metric="cosine")
    assert found(results) == ["x", "other", "near-x"]
    assert abs(results[0][1]) < 1e-6
    assert found(vectors.nearest([-1.0, 0.0, 0.0], k=1, metric="cosine")) == ["far"]
    vectors.create("Point", id="zero", embedding=[0.0, 0.0, 0.0])  # no direction: never a cosine result
    assert "zero" not in found(vectors.nearest([1.0, 1.0, 1.0], k=100, metric="cosine"))
    with pytest.raises(InvalidInput, match="zero vector"):
        vectors.nearest([0.0, 0.0, 0.0], metric="cosine")
    with pytest.raises(InvalidInput, match="metric"):
        vectors.nearest([1.0, 0.0, 0.0], metric="dot")


def test_embeddings_as_bytes_and_updates(vectors: ThingStore) -> None:
    raw = array("f", [0.0, 0.0, -1.0]).tobytes()
    vectors.create("Point", id="down", embedding=raw)
    assert found(vectors.nearest(raw, k=1)) == ["down"]
    vectors.update("y", embedding=[0.0, 0.0, -0.9])
    assert found(vectors.nearest([0.0, 0.0, -1.0], k=2)) == ["down", "y"]
    vectors.update("down", embedding=None)
    assert found(vectors.nearest([0.0, 0.0, -1.0], k=1)) == ["y"]
    vectors.update("no-vector", {"a": 1})  # no embedding given: none added
    assert "no-vector" not in found(vectors.nearest([0.0, 0.0, 1.0], k=100))


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        ([1.0, 2.0], "2 dimensions; this store's vectors have 3"),
        ([1.0, float("nan"), 0.0], "NaN"),
        ([1.0, float("inf"), 0.0], "NaN or infinity"),
        ([1.0, 1e39, 0.0], "float32"),
        ([1.0, True, 0.0], r"embedding\[1\]: a bool"),
        ([1.0, "2", 0.0], r"embedding\[1\]: a str"),
        (b"\x00" * 13, "whole number"),
        (array("f", [float("nan")] * 3).tobytes(), "NaN"),
        ({"x": 1}, "a list of numbers or float32 bytes"),
    ],
)
def test_bad_embeddings_write_nothing(vectors: ThingStore, embedding: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        vectors.create("Point", id="bad", embedding=embedding)
    with pytest.raises(InvalidInput, match=message):
        vectors.update("x", {"changed": True}, embedding=embedding)
    with pytest.raises(InvalidInput, match=message):
        vectors.nearest(embedding)
    assert vectors.get("bad") is None and vectors.get("x").version == 1


def test_the_dimension(db: ActorDatabase) -> None:
    store = db.things
    assert store.vector_dimension == DEFAULT_DIMENSION == 128
    with pytest.raises(InvalidInput, match="have 128"):
        store.create("Point", embedding=[1.0, 2.0])
    store.create("Point", id="p", embedding=[0.5] * 128)
    store.set_vector_dimension(128)  # the same: fine
    with pytest.raises(InvalidInput, match="holds vectors of dimension 128"):
        store.set_vector_dimension(4)
    store.update("p", embedding=None)
    store.set_vector_dimension(4)
    assert store.vector_dimension == 4
    store.update("p", embedding=[1, 2, 3, 4])
    assert found(store.nearest([1, 2, 3, 4], k=1)) == ["p"]
    for bad in (0, 4097, 2.0, True, "8"):
        with pytest.raises(InvalidInput, match="dimension"):
            store.set_vector_dimension(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery, match="limit"):
        store.nearest([1, 2, 3, 4], k=0)
