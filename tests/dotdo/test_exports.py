"""The public surface: ``dotdo.__all__`` is pinned, and every name in it is importable."""

from __future__ import annotations

import importlib.metadata
import importlib.resources

import pytest

import dotdo
import dotdo.errors

EXPECTED = [
    "DO",
    "Aborted",
    "CpuLimitExceeded",
    "ActorError",
    "ActorExists",
    "ActorId",
    "ActorNotFound",
    "AlarmInfo",
    "BookmarkError",
    "BodyTooLarge",
    "BranchExists",
    "BranchNotFound",
    "CallTimeout",
    "ConnectionLost",
    "DatabaseLocked",
    "DeadlockError",
    "DotdoError",
    "Forbidden",
    "Durability",
    "Event",
    "InvalidArguments",
    "InvalidId",
    "InvalidInput",
    "InvalidKey",
    "InvalidNamespace",
    "InvalidQuery",
    "InvalidSchedule",
    "InvalidValue",
    "MergeConflict",
    "MethodNotAllowed",
    "NotSent",
    "OutOfDescriptors",
    "Overloaded",
    "ProtocolError",
    "Relationship",
    "Retry",
    "RequestTimeout",
    "RowCountError",
    "S",
    "ScheduleInfo",
    "ScheduleRun",
    "Sent",
    "ServeOptions",
    "SqlError",
    "StorageError",
    "StorageFull",
    "StorageLimitExceeded",
    "StorageReadOnly",
    "Subscribed",
    "Supervisor",
    "SupervisorClosed",
    "Thing",
    "ThingExists",
    "ThingNotFound",
    "TransactionError",
    "Unauthorized",
    "Unavailable",
    "VersionConflict",
    "WebSocket",
    "id_from_name",
    "id_from_string",
    "new_unique_id",
    "connect",
    "on",
    "rpc",
    "serve",
]


def test_all_is_pinned() -> None:
    assert dotdo.__all__ == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from dotdo import {name}", namespace)
    assert namespace[name] is getattr(dotdo, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from dotdo import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(EXPECTED)


def test_the_public_names_are_the_real_objects() -> None:
    from dotdo.actors.base import DO
    from dotdo.actors.methods import rpc
    from dotdo.ambient import S
    from dotdo.runtime.supervisor import Supervisor

    assert (dotdo.DO, dotdo.rpc, dotdo.S, dotdo.Supervisor) == (DO, rpc, S, Supervisor)


def test_every_error_is_public() -> None:
    for name in dotdo.errors.__all__:
        if name != "http_status":
            assert getattr(dotdo, name) is getattr(dotdo.errors, name), name
            assert issubclass(getattr(dotdo, name), dotdo.DotdoError)


def test_version_matches_the_distribution() -> None:
    assert dotdo.__version__ == importlib.metadata.version("dotdo")


def test_packages_are_typed() -> None:
    for package in ("dotdo", "dotdo.actors", "dotdo.runtime", "dotdo.storage"):
        files = importlib.resources.files(package)
        assert files.joinpath("py.typed").is_file(), package
