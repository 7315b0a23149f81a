"""Branches of one actor's data: create, checkout, delete, merge, diff (dotdo.storage.branches
and dotdo.storage.merge). Each test reopens the database after the operations it checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dotdo.storage import backup
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import BranchExists, BranchNotFound, InvalidInput, MergeConflict, TransactionError
from dotdo.storage.branches import BranchInfo, MergeReport

ADDRESS = Address("A", "x")


class Actor:
    """One actor's database that a test can close and open again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.db = ActorDatabase.open(data_dir, ADDRESS)

    def reopen(self) -> ActorDatabase:
        self.db.close()
        self.db = ActorDatabase.open(self.data_dir, ADDRESS)
        return self.db

    @property
    def side_dir(self) -> Path:
        return Path(f"{self.db.path}.branches")


@pytest.fixture
def actor(tmp_path: Path) -> Iterator[Actor]:
    a = Actor(tmp_path)
    yield a
    a.db.close()


def rows(db: ActorDatabase, table: str) -> list[tuple[Any, ...]]:
    return sorted(db.connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)


def dump(db: ActorDatabase) -> list[Any]:
    """Everything in the file: the schema and every row of every table (engine and
    full-text shadow tables included)."""
    conn = db.connection
    schema = sorted(conn.execute("SELECT type, name, sql FROM sqlite_schema").fetchall(), key=repr)
    tables = [name for kind, name, _ in schema if kind == "table" and not name.startswith("_dotdo_things_fts")]
    tables += [name for kind, name, _ in schema if name.startswith("_dotdo_things_fts_")]
    return [schema, {t: rows(db, t) for t in tables}]


def found(db: ActorDatabase, text: str) -> list[str]:
    return sorted(thing.id for thing, _ in db.things.search(text))


def seed(db: ActorDatabase) -> None:
    """The state both branches fork from."""
    with db.turn():
        db.kv.put({"shared": 0, "edit": "base", "gone": 1})
        db.sql.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        db.sql.exec("CREATE TABLE log(msg TEXT)")
        db.sql.exec("INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)")
        db.sql.exec("INSERT INTO log VALUES ('base')")
        db.things.create("Doc", {"body": "granite quarry"}, id="rock", name="Rock")
        db.things.create("Doc", {"body": "oak forest"}, id="tree", name="Tree")


# -- names, errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "a b", "x" * 65, "é", "a.tmp-1", 7, None])
def test_invalid_names_are_refused_everywhere(actor: Actor, name: Any) -> None:
    b = actor.db.branches
    for call in (b.create, b.checkout, b.delete, b.merge, lambda n: b.diff(n, "main"), lambda n: b.diff("main", n)):
        with pytest.raises(InvalidInput) as info:
            call(name)
        assert not isinstance(info.value, BranchNotFound)
    assert [i.name for i in b.list()] == ["main"]
    assert not actor.side_dir.exists() or not list(actor.side_dir.glob("*.sqlite"))


def test_names_at_the_limits_are_accepted(actor: Actor) -> None:
    for name in ("x" * 64, "a", "0.9-rc_1", "_x"):
        actor.db.branches.create(name)
    assert [i.name for i in actor.reopen().branches.list()] == ["main", "0.9-rc_1", "_x", "a", "x" * 64]


def test_unknown_taken_and_current_branches(actor: Actor) -> None:
    b = actor.db.branches
    b.create("dev")
    with pytest.raises(BranchExists):
        b.create("dev")
    with pytest.raises(BranchExists):
        b.create("main")
    for call in (b.checkout, b.delete, b.merge, lambda n: b.diff(n, "main"), lambda n: b.diff("main", n)):
        with pytest.raises(BranchNotFound) as info:
            call("nope")
        assert info.value.branch == "nope"
    with pytest.raises(InvalidInput, match="current branch"):
        b.delete("main")
    with pytest.raises(InvalidInput, match="current branch"):
        b.merge("main")
    with pytest.raises(InvalidInput, match="policy"):
        b.merge("dev", policy="ours")
    b = actor.reopen().branches
    assert [i.name for i in b.list()] == ["main", "dev"]


def test_operations_that_copy_refuse_uncommitted_writes(actor: Actor) -> None:
    db = actor.db
    db.branches.create("dev")
    db.begin_turn()
    db.kv.put("pending", 1)
    for call in (lambda: db.branches.create("x"), lambda: db.branches.checkout("dev"), lambda: db.branches.diff("main", "dev")):
        with pytest.raises(TransactionError):
            call()
    db.rollback()
    db.end_turn()
    assert db.branches.current() == "main"
    assert [i.name for i in actor.reopen().branches.list()] == ["main", "dev"]


# -- create, list, checkout, delete ----------------------------------------------------


def test_create_list_checkout_round_trip(actor: Actor) -> None:
    db = actor.db
    seed(db)
    assert db.branches.current() == "main"
    info = db.branches.create("dev")
    assert isinstance(info, BranchInfo)
    assert (info.name, info.current, info.parent) == ("dev", False, "main")
    assert info.bytes > 0
    db = actor.reopen()
    listed = db.branches.list()
    assert [(i.name, i.current, i.parent) for i in listed] == [("main", True, None), ("dev", False, "main")]
    assert listed[1].created_at == pytest.approx(info.created_at)

    db.branches.checkout("dev")
    assert db.branches.current() == "dev"
    with db.turn():
        db.kv.put("edit", "dev")
        db.sql.exec("INSERT INTO t VALUES (4, 'four', 4)")
        db.things.create("Doc", {"body": "river delta"}, id="river")
    db = actor.reopen()
    assert db.branches.current() == "dev"
    assert [(i.name, i.current) for i in db.branches.list()] == [("dev", True), ("main", False)]
    assert db.kv.get("edit") == "dev"
    assert found(db, "river") == ["river"]

    db.branches.checkout("main")
    db = actor.reopen()
    assert db.branches.current() == "main"
    assert db.kv.get("edit") == "base"
    assert len(rows(db, "t")) == 3
    assert db.things.get("river") is None
    assert found(db, "river") == []
    assert found(db, "granite") == ["rock"]
    # the checkout kept dev whole
    db.branches.checkout("dev")
    db = actor.reopen()
    assert db.kv.get("edit") == "dev"
    assert len(rows(db, "t")) == 4
    assert found(db, "river") == ["river"]


def test_checkout_keeps_both_branches_and_forgets_features(actor: Actor) -> None:
    db = actor.db
    db.kv.put("k", "main")
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.things.create("Doc", {"body": "only on dev"}, id="d")  # builds the things tables on dev
    db.things.create_index("Doc", "body")
    db.branches.checkout("main")
    assert not db.has("things")  # main never had them: the cached knowledge was dropped
    assert db.things.get("d") is None
    db.things.create("Doc", {"body": "only on main"}, id="m")
    db.branches.checkout("dev")
    db = actor.reopen()
    assert [t.id for t in db.things.list("Doc", where={"body": "only on dev"})] == ["d"]
    assert db.things.get("m") is None
    db.branches.checkout("main")
    db = actor.reopen()
    assert [t.id for t in db.things.list()] == ["m"]
    assert db.kv.get("k") == "main"
    db.branches.checkout("main")  # already there: nothing happens
    assert db.branches.current() == "main"


def test_branch_of_a_branch_and_delete(actor: Actor) -> None:
    db = actor.db
    db.kv.put("k", 0)
    db.branches.create("a")
    db.branches.checkout("a")
    db.kv.put("k", 1)
    info = db.branches.create("b")
    assert info.parent == "a"
    db.branches.checkout("b")
    assert db.kv.get("k") == 1
    with pytest.raises(InvalidInput, match="current branch"):
        db.branches.delete("b")
    db.branches.delete("a")
    db = actor.reopen()
    assert [(i.name, i.parent) for i in db.branches.list()] == [("b", "a"), ("main", None)]
    assert not (actor.side_dir / "a.sqlite").exists()
    assert not (actor.side_dir / "base" / "a.sqlite").exists()
    with pytest.raises(InvalidInput, match="forked"):
        db.branches.merge("main")  # b was forked from a, not main
    db.branches.delete("main")
    db.branches.create("main")  # a new main, forked from b
    db = actor.reopen()
    assert [(i.name, i.parent) for i in db.branches.list()] == [("b", "a"), ("main", "b")]


# -- crashes ---------------------------------------------------------------------------


def test_crash_after_saving_the_current_branch(actor: Actor) -> None:
    """Checkout step 1 done (main saved to its side file), step 2 never ran."""
    db = actor.db
    db.kv.put("k", "main-1")
    db.branches.create("dev")
    backup.save(db.connection, actor.side_dir / "main.sqlite")
    db = actor.reopen()
    assert db.branches.current() == "main"
    db.kv.put("k", "main-2")  # written after the stale copy was made
    assert [(i.name, i.current) for i in db.branches.list()] == [("main", True), ("dev", False)]
    assert not (actor.side_dir / "main.sqlite").exists()
    db.branches.checkout("dev")
    db.branches.checkout("main")
    assert actor.reopen().kv.get("k") == "main-2"


def test_crash_after_loading_the_new_branch(actor: Actor) -> None:
    """Checkout steps 1 and 2 done (the live file is dev), dev's side file not deleted."""
    db = actor.db
    db.kv.put("k", "main")
    db.branches.create("dev")
    backup.save(db.connection, actor.side_dir / "main.sqlite")
    backup.load(db, actor.side_dir / "dev.sqlite")
    db = actor.reopen()
    assert db.branches.current() == "dev"
    assert db.kv.get("k") == "main"  # dev was forked from main's state
    db.kv.put("k", "dev")
    db.kv.put("new", 1)
    assert [(i.name, i.current) for i in db.branches.list()] == [("dev", True), ("main", False)]
    db.branches.checkout("main")
    db.kv.put("m", 1)
    db.branches.checkout("dev")  # the stale copy must not come back
    db = actor.reopen()
    assert db.kv.list() == {"k": "dev", "new": 1}
    db.branches.checkout("main")
    assert actor.reopen().kv.list() == {"k": "main", "m": 1}


def test_leftovers_of_a_cut_create_are_removed(actor: Actor) -> None:
    db = actor.db
    db.branches.create("dev")
    backup.save(db.connection, actor.side_dir / "base" / "ghost.sqlite")  # base written, branch never
    (actor.side_dir / "half.sqlite.tmp-0badc0de").write_bytes(b"half a copy")
    db = actor.reopen()
    assert [i.name for i in db.branches.list()] == ["main", "dev"]
    assert sorted(p.name for p in actor.side_dir.rglob("*") if p.is_file()) == ["dev.sqlite", "dev.sqlite"]
    db.branches.create("ghost")  # the name is free
    assert [i.name for i in actor.reopen().branches.list()] == ["main", "dev", "ghost"]


# -- merge -----------------------------------------------------------------------------


def fork(actor: Actor) -> ActorDatabase:
    """seed, then a branch dev; returns the database, on main."""
    seed(actor.db)
    actor.db.branches.create("dev")
    return actor.db


def test_merge_brings_changes_from_both_sides_together(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    with db.turn():
        db.kv.put("from-dev", 1)
        db.kv.delete("gone")
        db.sql.exec("UPDATE t SET v = 'TWO' WHERE id = 2")
        db.sql.exec("INSERT INTO t VALUES (10, 'ten', 10)")
        db.sql.exec("INSERT INTO log VALUES ('dev')")
        db.things.create("Doc", {"body": "volcanic basalt"}, id="basalt", name="Basalt")
        db.things.update("tree", {"body": "birch forest"})
        db.things.relate("basalt", "near", "rock")
    db = actor.reopen()
    db.branches.checkout("main")
    with db.turn():
        db.kv.put("from-main", 1)
        db.sql.exec("UPDATE t SET n = 30 WHERE id = 3")
        db.sql.exec("INSERT INTO log VALUES ('main')")
        db.things.create("Doc", {"body": "sandstone cliff"}, id="sand")
        db.things.relate("rock", "near", "sand")
    with db.turn():
        report = db.branches.merge("dev")
    assert isinstance(report, MergeReport)
    assert (report.source, report.target, report.policy, report.conflicts) == ("dev", "main", "fail", [])
    assert report.tables == {
        "_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 1},
        "_dotdo_relationships": {"inserted": 1, "updated": 0, "deleted": 0},
        "_dotdo_things": {"inserted": 1, "updated": 1, "deleted": 0},
        "log": {"inserted": 1, "updated": 0, "deleted": 0},
        "t": {"inserted": 1, "updated": 1, "deleted": 0},
    }
    db = actor.reopen()
    assert db.kv.list() == {"edit": "base", "from-dev": 1, "from-main": 1, "shared": 0}
    assert rows(db, "t") == [(1, "one", 1), (10, "ten", 10), (2, "TWO", 2), (3, "three", 30)]
    assert rows(db, "log") == [("base",), ("dev",), ("main",)]
    assert found(db, "basalt") == ["basalt"]
    assert found(db, "birch") == ["tree"]
    assert found(db, "oak") == []
    assert found(db, "sandstone") == ["sand"]
    assert [t.id for t in db.things.related("rock", "near", direction="both")] == ["sand", "basalt"]
    assert [t.id for t in db.things.related("basalt", "near")] == ["rock"]
    # dev is unchanged by the merge
    db.branches.checkout("dev")
    assert db.kv.get("from-main") is None


def test_merge_twice_brings_only_the_new_changes(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.kv.put("a", 1)
    db.sql.exec("INSERT INTO log VALUES ('first')")
    db.branches.checkout("main")
    first = db.branches.merge("dev")
    assert first.tables == {"_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 0}, "log": {"inserted": 1, "updated": 0, "deleted": 0}}
    db = actor.reopen()
    db.kv.put("a", "changed on main")  # would conflict if the first merge's change came again
    assert db.branches.merge("dev").tables == {}
    db.branches.checkout("dev")
    db.kv.put("b", 2)
    db.branches.checkout("main")
    db = actor.reopen()
    second = db.branches.merge("dev")
    assert second.tables == {"_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 0}}
    assert db.kv.list() == {"a": "changed on main", "b": 2, "edit": "base", "gone": 1, "shared": 0}
    assert rows(db, "log") == [("base",), ("first",)]
    # and the other way: main's changes since the last merge go to dev
    db.branches.checkout("dev")
    report = db.branches.merge("main")
    assert report.tables == {"_dotdo_kv": {"inserted": 0, "updated": 1, "deleted": 0}}
    assert actor.reopen().kv.get("a") == "changed on main"


def test_a_merge_rolled_back_with_its_turn_leaves_the_base(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.kv.put("a", 1)
    db.branches.checkout("main")
    with pytest.raises(RuntimeError):
        with db.turn():
            assert db.branches.merge("dev").tables
            assert db.kv.get("a") == 1
            raise RuntimeError("the turn fails")
    db = actor.reopen()
    assert db.kv.get("a") is None
    assert db.branches.merge("dev").tables == {"_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 0}}
    assert actor.reopen().kv.get("a") == 1


def conflicting(actor: Actor) -> ActorDatabase:
    """Both sides change the same rows since the fork; also one clean change each."""
    db = fork(actor)
    db.branches.checkout("dev")
    with db.turn():
        db.kv.put("edit", "dev")
        db.kv.put("clean-dev", 1)
        db.sql.exec("UPDATE t SET v = 'dev' WHERE id = 1")
        db.sql.exec("DELETE FROM t WHERE id = 2")  # main updates it
        db.sql.exec("UPDATE t SET v = 'dev' WHERE id = 3")  # main deletes it
        db.things.update("rock", {"body": "dev rock"})
        db.things.create("Doc", {"body": "dev twin"}, id="twin")
    db.branches.checkout("main")
    with db.turn():
        db.kv.put("edit", "main")
        db.kv.put("clean-main", 1)
        db.sql.exec("UPDATE t SET v = 'main' WHERE id = 1")
        db.sql.exec("UPDATE t SET v = 'main' WHERE id = 2")
        db.sql.exec("DELETE FROM t WHERE id = 3")
        db.things.update("rock", {"body": "main rock"})
        db.things.create("Doc", {"body": "main twin"}, id="twin")
    return actor.reopen()


EXPECTED_CONFLICTS = [
    ("_dotdo_kv", ["edit"], "data", "update"),
    ("_dotdo_things", ["rock"], "data", "update"),
    ("_dotdo_things", ["twin"], "conflict", "insert"),
    ("t", [1], "data", "update"),
    ("t", [2], "data", "delete"),
    ("t", [3], "notfound", "update"),
]


def test_conflicts_fail_the_merge_and_change_nothing(actor: Actor) -> None:
    db = conflicting(actor)
    before = dump(db)
    with pytest.raises(MergeConflict) as info:
        with db.turn():
            db.branches.merge("dev")
    got = sorted((c["table"], c["key"], c["kind"], c["op"]) for c in info.value.conflicts)
    assert got == EXPECTED_CONFLICTS
    assert dump(db) == before
    db = actor.reopen()
    assert dump(db) == before
    with pytest.raises(MergeConflict):
        db.branches.merge("dev")  # outside a turn too
    assert dump(actor.reopen()) == before


def test_policy_source_takes_the_source_rows(actor: Actor) -> None:
    db = conflicting(actor)
    report = db.branches.merge("dev", policy="source")
    assert sorted((c["table"], c["key"], c["kind"], c["op"]) for c in report.conflicts) == EXPECTED_CONFLICTS
    db = actor.reopen()
    assert db.kv.list() == {"clean-dev": 1, "clean-main": 1, "edit": "dev", "gone": 1, "shared": 0}
    assert rows(db, "t") == [(1, "dev", 1), (3, "dev", 3)]  # 2 deleted, 3 back with dev's row
    assert db.things.get("rock").data == {"body": "dev rock"}
    assert db.things.get("twin").data == {"body": "dev twin"}
    assert found(db, "rock") == ["rock"]
    assert found(db, "twin") == ["twin"]
    assert found(db, "main") == []
    assert db.connection.execute("SELECT count(*) FROM _dotdo_things_fts").fetchall() == [(3,)]


def test_policy_current_keeps_the_current_rows(actor: Actor) -> None:
    db = conflicting(actor)
    report = db.branches.merge("dev", policy="current")
    assert len(report.conflicts) == len(EXPECTED_CONFLICTS)
    assert report.tables == {"_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 0}}
    db = actor.reopen()
    assert db.kv.list() == {"clean-dev": 1, "clean-main": 1, "edit": "main", "gone": 1, "shared": 0}
    assert rows(db, "t") == [(1, "main", 1), (2, "main", 2)]
    assert db.things.get("rock").data == {"body": "main rock"}
    assert db.things.get("twin").data == {"body": "main twin"}
    assert found(db, "dev") == []


def test_same_change_on_both_sides_is_no_conflict(actor: Actor) -> None:
    db = fork(actor)
    for branch in ("dev", "main"):
        db.branches.checkout(branch)
        db.kv.put("edit", "same")
        db.kv.delete("gone")
        db.sql.exec("UPDATE t SET v = 'same' WHERE id = 1")
    assert db.branches.merge("dev").tables == {}
    assert actor.reopen().kv.get("edit") == "same"


def test_different_columns_of_one_row_merge(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.sql.exec("UPDATE t SET v = 'dev' WHERE id = 1")
    db.branches.checkout("main")
    db.sql.exec("UPDATE t SET n = 100 WHERE id = 1")
    db.branches.merge("dev")
    assert rows(actor.reopen(), "t")[0] == (1, "dev", 100)


def test_things_made_on_both_sides_with_the_same_rid_merge(actor: Actor) -> None:
    db = fork(actor)
    db.things.set_vector_dimension(2)
    db.branches.checkout("dev")
    db.things.set_vector_dimension(2)
    db.things.create("Doc", {"body": "copper ore"}, id="copper", embedding=[1.0, 0.0])
    db.things.create("Doc", {"body": "zinc ore"}, id="zinc", embedding=[0.9, 0.1])
    db.things.relate("copper", "alloys", "zinc")
    db.things.relate("copper", "near", "rock")
    dev_rids = dict(db.connection.execute("SELECT id, rid FROM _dotdo_things").fetchall())
    db.branches.checkout("main")
    db.things.create("Doc", {"body": "iron ore"}, id="iron", embedding=[0.0, 1.0])
    db.things.relate("iron", "near", "tree")
    main_rids = dict(db.connection.execute("SELECT id, rid FROM _dotdo_things").fetchall())
    assert dev_rids["copper"] == main_rids["iron"]  # the collision this test is about
    report = db.branches.merge("dev")
    assert report.conflicts == []
    assert report.tables["_dotdo_things"] == {"inserted": 2, "updated": 0, "deleted": 0}
    assert report.tables["_dotdo_vectors"] == {"inserted": 2, "updated": 0, "deleted": 0}
    db = actor.reopen()
    assert db.things.get("iron").data == {"body": "iron ore"}
    assert db.things.get("copper").data == {"body": "copper ore"}
    assert [t.id for t in db.things.related("copper")] == ["rock", "zinc"]
    assert [t.id for t in db.things.related("iron")] == ["tree"]
    assert [t.id for t in db.things.related("rock", direction="in")] == ["copper"]
    assert found(db, "ore") == ["copper", "iron", "zinc"]
    assert [t.id for t, _ in db.things.nearest([1.0, 0.0], k=3)] == ["copper", "zinc", "iron"]
    # and back the other way: dev gets iron, its own things stay put
    db.branches.checkout("dev")
    db.branches.merge("main")
    db = actor.reopen()
    assert found(db, "ore") == ["copper", "iron", "zinc"]
    assert [t.id for t in db.things.related("copper")] == ["rock", "zinc"]
    assert [t.id for t in db.things.related("iron")] == ["tree"]
    assert db.branches.diff("main", "dev") == {}


def test_deleting_a_thing_takes_its_edges_and_index(actor: Actor) -> None:
    db = fork(actor)
    db.things.relate("rock", "near", "tree")
    db.branches.delete("dev")
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.things.delete("tree")
    db.branches.checkout("main")
    db.things.create("Doc", {"body": "moss"}, id="moss")
    db.things.relate("moss", "on", "tree")  # an edge to a thing dev deleted
    report = db.branches.merge("dev")
    assert report.tables["_dotdo_things"]["deleted"] == 1
    db = actor.reopen()
    assert db.things.get("tree") is None
    assert found(db, "oak") == []
    assert db.things.related("moss") == []
    assert db.things.related("rock") == []
    assert rows(db, "_dotdo_relationships") == []  # not even dangling ones


def test_a_table_new_on_the_source_is_created(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.sql.exec("CREATE TABLE orders(id TEXT PRIMARY KEY, total REAL)")
    db.sql.exec("CREATE INDEX orders_total ON orders(total)")
    db.sql.exec("INSERT INTO orders VALUES ('o1', 9.5), ('o2', 3.0)")
    db.branches.checkout("main")
    assert db.branches.diff("main", "dev") == {"orders": {"inserted": 2, "updated": 0, "deleted": 0}}
    assert db.branches.diff("dev", "main") == {"orders": {"inserted": 0, "updated": 0, "deleted": 2}}
    report = db.branches.merge("dev")
    assert report.tables == {"orders": {"inserted": 2, "updated": 0, "deleted": 0}}
    db = actor.reopen()
    assert rows(db, "orders") == [("o1", 9.5), ("o2", 3.0)]
    names = [r[0] for r in db.connection.execute("SELECT name FROM sqlite_schema WHERE tbl_name = 'orders'")]
    assert sorted(names) == ["orders", "orders_total", "sqlite_autoindex_orders_1"]


def test_things_new_on_the_source_build_the_store(actor: Actor) -> None:
    db = actor.db
    db.kv.put("k", 1)
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.things.create("Doc", {"body": "first thing"}, id="first")
    db.branches.checkout("main")
    assert not db.has("things")
    db.branches.merge("dev")
    db = actor.reopen()
    assert found(db, "first") == ["first"]


def test_differing_columns_are_refused(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.sql.exec("ALTER TABLE t ADD COLUMN extra TEXT")
    db.kv.put("clean", 1)
    db.branches.checkout("main")
    before = dump(db)
    with pytest.raises(InvalidInput, match="'t'") as info:
        db.branches.merge("dev")
    assert not isinstance(info.value, MergeConflict)
    with pytest.raises(InvalidInput, match="'t'"):
        db.branches.diff("main", "dev")
    assert dump(actor.reopen()) == before


def test_merge_needs_one_branch_forked_from_the_other(actor: Actor) -> None:
    db = fork(actor)
    db.branches.create("other")
    db.branches.checkout("dev")
    with pytest.raises(InvalidInput, match="forked"):
        db.branches.merge("other")
    db.kv.put("x", 1)
    db.branches.checkout("other")
    db.branches.merge("main")  # other was forked from main: fine (nothing to bring)
    db.branches.checkout("main")
    assert db.branches.merge("dev").tables == {"_dotdo_kv": {"inserted": 1, "updated": 0, "deleted": 0}}


def test_tables_without_a_primary_key_merge_by_content(actor: Actor) -> None:
    db = fork(actor)
    db.sql.exec("INSERT INTO log VALUES ('twice'), ('twice')")
    db.branches.delete("dev")
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.sql.exec("INSERT INTO log VALUES ('dev')")
    db.sql.exec("DELETE FROM log WHERE rowid = (SELECT max(rowid) FROM log WHERE msg = 'twice')")
    db.branches.checkout("main")
    db.sql.exec("INSERT INTO log VALUES ('main')")
    assert db.branches.diff("main", "dev") == {"log": {"inserted": 1, "updated": 0, "deleted": 2}}
    report = db.branches.merge("dev")
    assert report.tables == {"log": {"inserted": 1, "updated": 0, "deleted": 1}}
    assert rows(actor.reopen(), "log") == [("base",), ("dev",), ("main",), ("twice",)]


def test_diff_counts(actor: Actor) -> None:
    db = fork(actor)
    assert db.branches.diff("main", "dev") == {}
    db.branches.checkout("dev")
    db.kv.put({"new1": 1, "new2": 2, "edit": "x"})
    db.sql.exec("DELETE FROM t WHERE id IN (1, 2)")
    db.things.create("Doc", {}, id="n1")
    db.things.update("rock", {"x": 1})
    db.things.delete("tree")
    db = actor.reopen()
    expected = {
        "_dotdo_kv": {"inserted": 2, "updated": 1, "deleted": 0},
        "_dotdo_things": {"inserted": 1, "updated": 1, "deleted": 1},
        "t": {"inserted": 0, "updated": 0, "deleted": 2},
    }
    assert db.branches.diff("main", "dev") == expected
    db.branches.checkout("main")
    assert db.branches.diff("main", "dev") == expected
    assert db.branches.diff("dev", "main")["t"] == {"inserted": 2, "updated": 0, "deleted": 0}
    assert db.branches.diff("dev", "dev") == {}
    # engine bookkeeping is not data: an alarm differs, the diff does not
    db.alarms.set(4_000_000_000.0)
    assert db.branches.diff("dev", "main")["_dotdo_kv"] == {"inserted": 0, "updated": 1, "deleted": 2}
    assert set(db.branches.diff("dev", "main")) == {"_dotdo_kv", "_dotdo_things", "t"}


def test_user_triggers_do_not_fire_while_merging(actor: Actor) -> None:
    db = actor.db
    db.sql.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    db.sql.exec("CREATE TABLE audit(what TEXT)")
    db.sql.exec("CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES ('insert ' || new.id); END")
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.sql.exec("INSERT INTO t VALUES (1, 'dev')")
    db.branches.checkout("main")
    report = db.branches.merge("dev")
    assert report.tables == {"audit": {"inserted": 1, "updated": 0, "deleted": 0}, "t": {"inserted": 1, "updated": 0, "deleted": 0}}
    db = actor.reopen()
    assert rows(db, "audit") == [("insert 1",)]  # dev's row, not a second one from the trigger
    db.sql.exec("INSERT INTO t VALUES (2, 'main')")  # and the trigger still works afterwards
    assert rows(db, "audit") == [("insert 1",), ("insert 2",)]


def test_two_merges_in_one_turn(actor: Actor) -> None:
    db = fork(actor)
    db.branches.checkout("dev")
    db.kv.put("a", 1)
    db.branches.checkout("main")
    with db.turn():
        assert db.branches.merge("dev").tables
        db.kv.put("a", "main")  # would conflict if the second merge brought "a" again
        assert db.branches.merge("dev").tables == {}
    db = actor.reopen()
    assert db.kv.get("a") == "main"
    assert db.branches.merge("dev").tables == {}
    assert not list((actor.side_dir / "pending").iterdir())


def test_a_constraint_conflict_is_not_resolved_for_the_source(actor: Actor) -> None:
    db = actor.db
    db.sql.exec("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
    db.branches.create("dev")
    db.branches.checkout("dev")
    db.sql.exec("INSERT INTO users VALUES (2, 'a@example.com')")
    db.branches.checkout("main")
    db.sql.exec("INSERT INTO users VALUES (3, 'a@example.com')")
    for policy in ("fail", "source"):
        with pytest.raises(MergeConflict, match="merging 'dev' into 'main'") as info:
            db.branches.merge("dev", policy=policy)
        assert [(c["table"], c["key"], c["kind"]) for c in info.value.conflicts] == [("users", [2], "constraint")]
    report = db.branches.merge("dev", policy="current")
    assert [(c["table"], c["kind"]) for c in report.conflicts] == [("users", "constraint")]
    assert rows(actor.reopen(), "users") == [(3, "a@example.com")]
