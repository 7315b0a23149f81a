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

from actors.base import DO
from actors.methods import rpc
from dotdo.ambient import S
from dotdo.errors import (
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
from dotdo.server import ServeOptions, serve
from actors.subscribe import on
from runtime.alarm_info import AlarmInfo, ScheduleInfo, ScheduleRun
from runtime.events import Event, Sent
from runtime.subscriptions import Subscribed
from runtime.workflow import Retry
from runtime.ids import ActorId, id_from_name, id_from_string, new_unique_id
from runtime.supervisor import Supervisor
from storage.options import Durability
from storage.things_model import Relationship, Thing

__version__ = "0.1.0"

__all__ = [
    "DO",
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
    "id_from_name",
    "id_from_string",
    "new_unique_id",
    "connect",
    "on",
    "rpc",
    "serve",
]
