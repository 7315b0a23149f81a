"""Every error dotdo raises on purpose, and how each maps to an HTTP status.

::

    DotdoError                           500
    ├── InvalidInput                     400  the caller sent something unusable
    │   ├── InvalidNamespace             400
    │   ├── InvalidId                    400
    │   ├── InvalidKey                   400
    │   ├── InvalidValue                 400
    │   ├── InvalidQuery                 400
    │   ├── ThingNotFound                404  no thing with that $id in the actor's store
    │   ├── ThingExists                  409  create() with an $id already taken
    │   ├── VersionConflict              409  update() expected another $version
    │   ├── ActorExists                  409  a clone/promote/shard target holds data
    │   ├── BranchNotFound               404  no branch of that name
    │   ├── BranchExists                 409  branch() with a name already taken
    │   ├── MergeConflict                409  rows changed on both branches (conflicts lists them)
    │   ├── BookmarkError                400  malformed, foreign or out-of-window bookmark
    │   ├── InvalidArguments             400
    │   ├── InvalidSchedule              400
    │   ├── StorageLimitExceeded         400
    │   ├── BodyTooLarge                 413
    │   └── RequestTimeout               408  the body did not arrive in time
    ├── ActorNotFound                    404  unknown namespace
    ├── MethodNotAllowed                 404  unknown, private or lifecycle method
    ├── ActorError                       500  the actor's code raised (remote_type says what)
    ├── Aborted                          500  the actor called self.abort(reason); fresh instance next
    ├── CpuLimitExceeded                 500  a turn used more CPU than --cpu-limit; rolled back
    ├── StorageError                     500  the database failed
    │   ├── StorageFull                  507  the disk is full; the write was rolled back
    │   ├── StorageReadOnly              503  the data directory cannot be written
    │   ├── SqlError                     500
    │   │   └── RowCountError            500
    │   ├── TransactionError             500
    │   ├── DatabaseLocked               503
    │   └── OutOfDescriptors             503  no file descriptor left to open a database
    ├── CallTimeout                      504  the deadline passed
    │   └── DeadlockError                503
    ├── Overloaded                       503  too many calls waiting, or no descriptor left
    ├── ProtocolError                    400  a transport peer broke the protocol
    ├── Unauthorized                     401  wrong or missing token
    ├── Forbidden                        403  a client token on an admin route
    └── Unavailable                      503  restarting or shutting down; retry
        ├── SupervisorClosed             503
        └── ConnectionLost               503  the transport connection closed mid-call
            └── NotSent                  503  ... before the call left: it did not run

Errors raised by an actor's own code that are not dotdo errors reach the caller as
``ActorError`` (in-process and remotely alike); the turn that raised was rolled back.
"""

from __future__ import annotations

from dotdo.runtime.core.errors import (
    Aborted,
    ActorError,
    ActorNotFound,
    BodyTooLarge,
    CallTimeout,
    ConnectionLost,
    CpuLimitExceeded,
    DeadlockError,
    InvalidArguments,
    InvalidSchedule,
    MethodNotAllowed,
    NotSent,
    Overloaded,
    ProtocolError,
    SupervisorClosed,
    Unauthorized,
    Unavailable,
)
from dotdo.storage.errors import (
    ActorExists,
    BookmarkError,
    BranchExists,
    BranchNotFound,
    DatabaseLocked,
    DotdoError,
    InvalidId,
    InvalidInput,
    InvalidKey,
    InvalidNamespace,
    InvalidQuery,
    InvalidValue,
    MergeConflict,
    OutOfDescriptors,
    RowCountError,
    SqlError,
    StorageError,
    StorageFull,
    StorageLimitExceeded,
    StorageReadOnly,
    ThingExists,
    ThingNotFound,
    TransactionError,
    VersionConflict,
)


class RequestTimeout(InvalidInput):
    """An HTTP request body did not arrive whole within the call timeout (a client that
    trickles or stalls); nothing ran."""


class Forbidden(DotdoError):
    """The token presented is valid but does not open this route: admin routes need
    the admin token, and are closed when only a client token is configured."""


# Most specific first: the first matching class gives the status.
_STATUS: tuple[tuple[type[DotdoError], int], ...] = (
    (BodyTooLarge, 413),
    (RequestTimeout, 408),
    (ThingNotFound, 404),
    (ThingExists, 409),
    (VersionConflict, 409),
    (ActorExists, 409),
    (BranchNotFound, 404),
    (BranchExists, 409),
    (MergeConflict, 409),
    (InvalidInput, 400),
    (ProtocolError, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (ActorNotFound, 404),
    (MethodNotAllowed, 404),
    (DeadlockError, 503),
    (CallTimeout, 504),
    (Overloaded, 503),
    (Unavailable, 503),
    (DatabaseLocked, 503),
    (OutOfDescriptors, 503),
    (StorageFull, 507),
    (StorageReadOnly, 503),
    (ActorError, 500),
    (StorageError, 500),
)


def http_status(error: DotdoError) -> int:
    """The HTTP status for ``error``."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


__all__ = [
    "Aborted",
    "CpuLimitExceeded",
    "ActorError",
    "ActorExists",
    "BookmarkError",
    "BranchExists",
    "BranchNotFound",
    "ActorNotFound",
    "BodyTooLarge",
    "CallTimeout",
    "ConnectionLost",
    "DatabaseLocked",
    "DeadlockError",
    "DotdoError",
    "Forbidden",
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
    "RequestTimeout",
    "RowCountError",
    "SqlError",
    "StorageError",
    "StorageFull",
    "StorageReadOnly",
    "StorageLimitExceeded",
    "SupervisorClosed",
    "ThingExists",
    "ThingNotFound",
    "TransactionError",
    "Unauthorized",
    "Unavailable",
    "VersionConflict",
    "http_status",
]
