"""dotdo: Durable Objects for Python.

Every entity gets its own actor: one address, one single-threaded instance at a time,
one private SQLite database that survives restarts::

    from dotdo import DO, S

    class Customer(DO):
        async def notify(self, message: str) -> int:
            self.sql.exec("INSERT INTO inbox(message) VALUES (?)", message)
            return self.sql.exec("SELECT count(*) AS n FROM inbox").one()["n"]

    await S.Customer("alice").notify("hi")

From another process, ``S = await connect("tcp://127.0.0.1:8788")`` gives the same
stubs over the transport.
"""

import importlib
from typing import TYPE_CHECKING, Any


def _in_a_checkout() -> None:
    """In a checkout the layers are folders beside this one (an installation puts them
    inside it): a process started at the checkout's root (``python -m dotdo serve``,
    ``python -m pytest``) imports this folder as ``dotdo`` before any installation, so
    it looks for ``dotdo.runtime`` and the others beside it too."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    beside = all(os.path.isfile(os.path.join(root, layer, "__init__.py")) for layer in ("actors", "runtime", "storage"))
    if beside and not os.path.isdir(os.path.join(here, "runtime")):
        __path__.append(root)


_in_a_checkout()

# Each public name and the module that defines it. They are imported when first used,
# so that ``import dotdo.storage`` (or a client command) does not pull in the server.
_MODULES: dict[str, tuple[str, ...]] = {
    "dotdo.actors.base": ("DO",),
    "dotdo.actors.methods": ("rpc",),
    "dotdo.ambient": ("S",),
    "dotdo.errors": ("Aborted", "CpuLimitExceeded", "ActorExists", "BookmarkError", "BranchExists", "BranchNotFound", "ActorError", "ActorNotFound", "BodyTooLarge", "CallTimeout", "ConnectionLost", "DatabaseLocked", "DeadlockError", "DotdoError", "Forbidden", "InvalidArguments", "InvalidId", "InvalidInput", "InvalidKey", "InvalidNamespace", "InvalidQuery", "InvalidSchedule", "InvalidValue", "MergeConflict", "MethodNotAllowed", "NotSent", "OutOfDescriptors", "Overloaded", "ProtocolError", "RequestTimeout", "RowCountError", "SqlError", "StorageError", "StorageFull", "StorageLimitExceeded", "StorageReadOnly", "SupervisorClosed", "ThingExists", "ThingNotFound", "TransactionError", "Unauthorized", "Unavailable", "VersionConflict"),
    "dotdo.client": ("connect",),
    "dotdo.options": ("ServeOptions",),
    "dotdo.server": ("serve",),
    "dotdo.actors.subscribe": ("on",),
    "dotdo.runtime.services.alarm_info": ("AlarmInfo", "ScheduleInfo", "ScheduleRun"),
    "dotdo.runtime.services.events": ("Event", "Sent"),
    "dotdo.runtime.services.subscriptions": ("Subscribed",),
    "dotdo.runtime.services.workflow": ("Retry",),
    "dotdo.runtime.services.websockets": ("WebSocket",),
    "dotdo.runtime.core.ids": ("ActorId", "id_from_name", "id_from_string", "new_unique_id"),
    "dotdo.runtime.supervisor": ("Supervisor",),
    "dotdo.storage.options": ("Durability",),
    "dotdo.storage.things_model": ("Relationship", "Thing"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:
    from dotdo.actors.base import DO
    from dotdo.actors.methods import rpc
    from dotdo.ambient import S
    from dotdo.errors import (
        Aborted,
        CpuLimitExceeded,
        ActorExists,
        BookmarkError,
        BranchExists,
        BranchNotFound,
        ActorError,
        ActorNotFound,
        BodyTooLarge,
        CallTimeout,
        ConnectionLost,
        DatabaseLocked,
        DeadlockError,
        DotdoError,
        Forbidden,
        InvalidArguments,
        InvalidId,
        InvalidInput,
        InvalidKey,
        InvalidNamespace,
        InvalidQuery,
        InvalidSchedule,
        InvalidValue,
        MergeConflict,
        MethodNotAllowed,
        NotSent,
        OutOfDescriptors,
        Overloaded,
        ProtocolError,
        RequestTimeout,
        RowCountError,
        SqlError,
        StorageError,
        StorageFull,
        StorageLimitExceeded,
        StorageReadOnly,
        SupervisorClosed,
        ThingExists,
        ThingNotFound,
        TransactionError,
        Unauthorized,
        Unavailable,
        VersionConflict,
    )
    from dotdo.client import connect
    from dotdo.options import ServeOptions
    from dotdo.server import serve
    from dotdo.actors.subscribe import on
    from dotdo.runtime.services.alarm_info import AlarmInfo, ScheduleInfo, ScheduleRun
    from dotdo.runtime.services.events import Event, Sent
    from dotdo.runtime.services.subscriptions import Subscribed
    from dotdo.runtime.services.websockets import WebSocket
    from dotdo.runtime.services.workflow import Retry
    from dotdo.runtime.core.ids import ActorId, id_from_name, id_from_string, new_unique_id
    from dotdo.runtime.supervisor import Supervisor
    from dotdo.storage.options import Durability
    from dotdo.storage.things_model import Relationship, Thing


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dotdo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
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
