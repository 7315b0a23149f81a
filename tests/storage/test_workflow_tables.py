"""The workflow tables (``dotdo.storage.workflow_tables``) and the feature mechanism that builds
them on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase
from tests.storage.test_outbox import A, send


def tables(db: ActorDatabase) -> set[str]:
    return {row[0] for row in db.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_database_that_never_uses_the_workflow_has_none_of_its_tables(db: ActorDatabase) -> None:
    assert "_dotdo_outbox" not in tables(db)
    # Reads find nothing and build nothing.
    assert db.workflow.take(0, 10) == ([], {})
    assert db.workflow.pending() == [] and db.workflow.subscriptions() == [] and not db.workflow.due_at(1e12)
    assert "_dotdo_outbox" not in tables(db)
    send(db, "X.y", [])
    assert {"_dotdo_events", "_dotdo_actions", "_dotdo_outbox", "_dotdo_inbox"} <= tables(db)


def test_tables_built_in_a_turn_that_rolls_back_are_built_again(db: ActorDatabase) -> None:
    db.begin_turn()
    send(db, "X.y", [A])
    db.rollback()
    db.end_turn()
    assert "_dotdo_outbox" not in tables(db)
    assert not db.has("workflow")
    with db.turn():
        send(db, "X.y", [A])
    assert db.workflow.queued() == 1


def test_tables_built_in_a_savepoint_that_rolls_back_are_built_again(db: ActorDatabase) -> None:
    with db.turn():
        with pytest.raises(ValueError):
            with db.transaction():
                send(db, "X.y", [A])
                raise ValueError
        send(db, "X.y", [A])
    assert db.workflow.queued() == 1


def test_the_feature_survives_reopening(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        send(db, "X.y", [A])
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        assert db.workflow.queued() == 1
        assert db.has("workflow")


def test_a_newer_feature_version_is_refused(tmp_path: Path) -> None:
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        send(db, "X.y", [])
        db.connection.execute("UPDATE _dotdo_meta SET value = 99 WHERE key = 'schema.workflow'")
    with ActorDatabase.open(tmp_path, Address("Test", "one")) as db:
        with pytest.raises(Exception, match="newer than this dotdo"):
            db.workflow.queued()
