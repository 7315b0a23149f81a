"""The error tree and its HTTP statuses (``dotdo.errors``)."""

from __future__ import annotations

import pytest

import dotdo.errors as errors
from dotdo.errors import (
    Aborted,
    ActorError,
    ActorNotFound,
    BodyTooLarge,
    CallTimeout,
    DatabaseLocked,
    Forbidden,
    RequestTimeout,
    StorageFull,
    StorageReadOnly,
    DeadlockError,
    DotdoError,
    InvalidArguments,
    InvalidId,
    InvalidInput,
    InvalidKey,
    InvalidNamespace,
    InvalidQuery,
    InvalidSchedule,
    InvalidValue,
    MethodNotAllowed,
    OutOfDescriptors,
    Overloaded,
    RowCountError,
    SqlError,
    StorageError,
    StorageLimitExceeded,
    ThingExists,
    ActorExists,
    BookmarkError,
    BranchExists,
    BranchNotFound,
    MergeConflict,
    ThingNotFound,
    VersionConflict,
    SupervisorClosed,
    ConnectionLost,
    CpuLimitExceeded,
    NotSent,
    ProtocolError,
    Unauthorized,
    TransactionError,
    Unavailable,
    http_status,
)

# (instance, HTTP status, direct parent in the tree drawn at the top of dotdo/errors.py)
CASES: list[tuple[DotdoError, int, type]] = [
    (DotdoError("x"), 500, Exception),
    (InvalidInput("x"), 400, DotdoError),
    (InvalidNamespace("x"), 400, InvalidInput),
    (InvalidId("x"), 400, InvalidInput),
    (InvalidKey("x"), 400, InvalidInput),
    (InvalidValue("x"), 400, InvalidInput),
    (InvalidQuery("x"), 400, InvalidInput),
    (InvalidArguments("x"), 400, InvalidInput),
    (InvalidSchedule("x"), 400, InvalidInput),
    (StorageLimitExceeded("x", limit=1, actual=2), 400, InvalidInput),
    (BodyTooLarge("x"), 413, InvalidInput),
    (ThingNotFound("t1"), 404, InvalidInput),
    (ThingExists("t1"), 409, InvalidInput),
    (VersionConflict("t1", expected=1, actual=2), 409, InvalidInput),
    (ActorExists("A/x"), 409, InvalidInput),
    (BranchExists("b"), 409, InvalidInput),
    (BranchNotFound("b"), 404, InvalidInput),
    (MergeConflict("m", [{"table": "t", "key": [1], "kind": "data"}]), 409, InvalidInput),
    (BookmarkError("bad"), 400, InvalidInput),
    (ActorNotFound("Nope", ["A"]), 404, DotdoError),
    (MethodNotAllowed("A", "m", ["n"]), 404, DotdoError),
    (ActorError("ValueError", "x"), 500, DotdoError),
    (Aborted("x"), 500, DotdoError),
    (CpuLimitExceeded("x"), 500, DotdoError),
    (StorageError("x"), 500, DotdoError),
    (SqlError("x"), 500, StorageError),
    (RowCountError("x", count=2), 500, SqlError),
    (TransactionError("x"), 500, StorageError),
    (DatabaseLocked("x"), 503, StorageError),
    (OutOfDescriptors("x"), 503, StorageError),
    (StorageFull("x"), 507, StorageError),
    (StorageReadOnly("x"), 503, StorageError),
    (CallTimeout("x"), 504, DotdoError),
    (DeadlockError("x", ["A/a", "B/b"]), 503, CallTimeout),
    (Overloaded("x"), 503, DotdoError),
    (Unavailable("x"), 503, DotdoError),
    (SupervisorClosed("x"), 503, Unavailable),
    (ConnectionLost("x"), 503, Unavailable),
    (NotSent("x"), 503, ConnectionLost),
    (ProtocolError("x"), 400, DotdoError),
    (Unauthorized("x"), 401, DotdoError),
    (Forbidden("x"), 403, DotdoError),
    (RequestTimeout("x"), 408, InvalidInput),
]


@pytest.mark.parametrize(("error", "status", "parent"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_every_error_has_its_status_and_place_in_the_tree(error: DotdoError, status: int, parent: type) -> None:
    assert http_status(error) == status
    assert type(error).__bases__ == (parent,)


def test_every_exported_error_class_is_covered() -> None:
    exported = {getattr(errors, name) for name in errors.__all__ if name != "http_status"}
    assert exported == {type(error) for error, _, _ in CASES}


def test_the_most_specific_class_wins() -> None:
    # BodyTooLarge is an InvalidInput (400) but is 413; DeadlockError is a CallTimeout
    # (504) but is 503; DatabaseLocked is a StorageError (500) but is 503.
    assert http_status(BodyTooLarge("x")) == 413
    assert http_status(DeadlockError("x", [])) == 503
    assert http_status(DatabaseLocked("x")) == 503


def test_subclasses_defined_elsewhere_take_their_parents_status() -> None:
    class Custom(InvalidInput):
        pass

    class Later(Unavailable):
        pass

    assert http_status(Custom("x")) == 400
    assert http_status(Later("x")) == 503


def test_errors_carry_a_public_message_and_their_fields() -> None:
    error = ActorError("KeyError", "'k'", address=("Customer", "ab" * 32))
    assert error.remote_type == "KeyError" and error.message == "'k'"
    assert error.public == str(error) == "KeyError in Customer/abababababababab: 'k'"
    assert error.address == ("Customer", "ab" * 32)
    not_found = ActorNotFound("Nope", ["B", "A"])
    assert not_found.known == ("A", "B")
    assert str(not_found) == "no actor kind 'Nope'; known kinds: A, B"
    refused = MethodNotAllowed("A", "m", ["z", "n"], "a reason")
    assert refused.allowed == ("n", "z")
    assert str(refused) == "A.m: a reason; callable methods: n, z"
    assert DeadlockError("x", ["A/a"]).chain == ("A/a",)
