"""One actor's private SQLite database, through apsw. Synchronous: no trio, no sockets.

This package is internal to dotdo; the public names are re-exported by ``dotdo``.
"""

from dotdo.storage.address import Address, validate_id, validate_namespace
from dotdo.storage.database import ActorDatabase
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
    RowCountError,
    SqlError,
    StorageError,
    StorageLimitExceeded,
    ThingExists,
    ThingNotFound,
    TransactionError,
    VersionConflict,
)
from dotdo.storage.kv import KVStore
from dotdo.storage.options import DatabaseStats, Durability, StorageOptions
from dotdo.storage.sql import Cursor, SqlStore

__all__ = [
    "ActorExists",
    "BookmarkError",
    "BranchExists",
    "BranchNotFound",
    "MergeConflict",
    "ActorDatabase",
    "Address",
    "Cursor",
    "DatabaseLocked",
    "DatabaseStats",
    "DotdoError",
    "Durability",
    "InvalidId",
    "InvalidInput",
    "InvalidKey",
    "InvalidNamespace",
    "InvalidQuery",
    "InvalidValue",
    "KVStore",
    "RowCountError",
    "SqlError",
    "SqlStore",
    "StorageError",
    "StorageLimitExceeded",
    "StorageOptions",
    "ThingExists",
    "ThingNotFound",
    "TransactionError",
    "VersionConflict",
    "validate_id",
    "validate_namespace",
]
