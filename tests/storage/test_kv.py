import datetime as dt

import pytest

from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput, InvalidKey, InvalidValue, StorageLimitExceeded
from dotdo.storage.kv import MAX_BATCH, MAX_KEY_BYTES, MAX_VALUE_BYTES


def test_get_put_delete_one(db: ActorDatabase) -> None:
    kv = db.kv
    assert kv.get("missing") is None
    kv.put("a", {"n": 1})
    assert kv.get("a") == {"n": 1}
    kv.put("a", [1, 2])
    assert kv.get("a") == [1, 2]
    assert kv.delete("a") is True
    assert kv.delete("a") is False
    assert kv.get("a") is None


def test_multi_key_forms(db: ActorDatabase) -> None:
    kv = db.kv
    kv.put({"b": 2, "a": 1, "c": None})
    got = kv.get(["c", "zz", "a", "b", "a"])
    assert got == {"a": 1, "b": 2, "c": None}
    assert list(got) == ["a", "b", "c"]  # key order, missing keys absent
    assert kv.get([]) == {}
    assert kv.delete(["a", "zz", "c", "a"]) == 2
    assert kv.list() == {"b": 2}
    assert kv.delete([]) == 0


def test_values_of_every_supported_type(db: ActorDatabase) -> None:
    at = dt.datetime(2024, 2, 29, tzinfo=dt.UTC)
    values = {"none": None, "t": True, "i": -5, "f": 2.5, "s": "é", "b": b"\x00", "l": [1, "x"], "d": {"k": {"n": at}}}
    db.kv.put(values)
    assert db.kv.get(list(values)) == dict(sorted(values.items()))


def test_keys_are_ordered_by_utf8_bytes(db: ActorDatabase) -> None:
    keys = ["b", "a", "ab", "", "é", "z", "\x00", "A", "🙂", "a\x00"]
    db.kv.put({k: i for i, k in enumerate(keys)})
    assert list(db.kv.list()) == sorted(keys)
    assert list(db.kv.list(reverse=True)) == sorted(keys, reverse=True)


def test_list_bounds(db: ActorDatabase) -> None:
    kv = db.kv
    kv.put({k: k for k in ["a", "b", "c", "d", "e"]})
    assert list(kv.list(start="b")) == ["b", "c", "d", "e"]
    assert list(kv.list(start_after="b")) == ["c", "d", "e"]
    assert list(kv.list(end="c")) == ["a", "b"]
    assert list(kv.list(start="b", end="d")) == ["b", "c"]
    assert list(kv.list(limit=2)) == ["a", "b"]
    # reverse does not change what start and end mean
    assert list(kv.list(start="b", end="e", reverse=True)) == ["d", "c", "b"]
    assert list(kv.list(start="b", end="e", reverse=True, limit=1)) == ["d"]
    assert kv.list(start="d", end="b") == {}


def test_list_prefix(db: ActorDatabase) -> None:
    kv = db.kv
    kv.put({k: 1 for k in ["user:1", "user:2", "user;", "use", "userz", "order:1", "user:\U0010ffff"]})
    assert list(kv.list(prefix="user:")) == ["user:1", "user:2", "user:\U0010ffff"]
    assert list(kv.list(prefix="user:", reverse=True, limit=2)) == ["user:\U0010ffff", "user:2"]
    assert list(kv.list(prefix="user:", start_after="user:1")) == ["user:2", "user:\U0010ffff"]
    assert list(kv.list(prefix="")) == sorted(kv.list())
    assert kv.list(prefix="nothing") == {}


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": -1}, {"limit": 1.5}, {"limit": True}, {"start": "a", "start_after": "b"}],
)
def test_list_refuses_bad_arguments(db: ActorDatabase, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        db.kv.list(**kwargs)  # type: ignore[arg-type]


def test_delete_all(db: ActorDatabase) -> None:
    # Everything the actor stored goes (tests/storage/test_deletion.py); it returns the keys.
    db.kv.put({"a": 1, "b": 2})
    db.sql.exec("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    assert db.kv.delete_all() == 2
    assert db.kv.list() == {}
    assert db.sql.exec("SELECT count(*) AS n FROM sqlite_schema WHERE name = 't'").one() == {"n": 0}


def test_key_limit(db: ActorDatabase) -> None:
    db.kv.put("k" * MAX_KEY_BYTES, 1)
    with pytest.raises(StorageLimitExceeded, match="2048-byte limit") as info:
        db.kv.put("é" * (MAX_KEY_BYTES // 2 + 1), 1)
    assert info.value.limit == MAX_KEY_BYTES
    with pytest.raises(StorageLimitExceeded):
        db.kv.get("k" * (MAX_KEY_BYTES + 1))


def test_value_limit(db: ActorDatabase) -> None:
    db.kv.put("ok", b"x" * (MAX_VALUE_BYTES - 16))
    with pytest.raises(StorageLimitExceeded, match="value of"):
        db.kv.put("big", b"x" * MAX_VALUE_BYTES)
    assert db.kv.get("big") is None


def test_batch_limit_refuses_the_whole_batch(db: ActorDatabase) -> None:
    db.kv.put({f"k{i}": i for i in range(MAX_BATCH)})
    db.kv.delete_all()
    with pytest.raises(StorageLimitExceeded, match="128-key limit"):
        db.kv.put({f"k{i}": i for i in range(MAX_BATCH + 1)})
    with pytest.raises(StorageLimitExceeded):
        db.kv.get([f"k{i}" for i in range(MAX_BATCH + 1)])
    with pytest.raises(StorageLimitExceeded):
        db.kv.delete([f"k{i}" for i in range(MAX_BATCH + 1)])
    assert db.kv.list() == {}


def test_a_bad_entry_refuses_the_whole_batch(db: ActorDatabase) -> None:
    with pytest.raises(InvalidValue):
        db.kv.put({"a": 1, "b": {1, 2}, "c": 3})
    with pytest.raises(InvalidKey):
        db.kv.put({"a": 1, 2: 2})  # type: ignore[dict-item]
    assert db.kv.list() == {}


@pytest.mark.parametrize("key", [1, None, b"bytes", {"t"}, "\ud800"])
def test_bad_keys(db: ActorDatabase, key: object) -> None:
    with pytest.raises(InvalidKey):
        db.kv.put(key, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        db.kv.get(key)  # type: ignore[arg-type]


def test_put_without_value_is_an_error(db: ActorDatabase) -> None:
    with pytest.raises(InvalidInput, match="needs a value"):
        db.kv.put("a")
    with pytest.raises(InvalidInput, match="no separate value"):
        db.kv.put({"a": 1}, 2)


def test_batch_inside_a_turn_rolls_back_with_it(db: ActorDatabase) -> None:
    with pytest.raises(RuntimeError):
        with db.turn():
            db.kv.put({"a": 1, "b": 2})
            assert db.kv.delete(["a"]) == 1
            raise RuntimeError
    assert db.kv.list() == {}
