"""The SQL API over one actor database: ``exec`` returning a ``Cursor``.

User SQL runs in the actor's turn and sees the actor's own tables. It may not:

- open, end or name transactions (``BEGIN``, ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``,
  ``RELEASE``): use ``storage.transaction()``, and let the turn commit;
- touch the engine's tables (names starting ``_dotdo_``), attach other databases,
  load extensions, or set pragmas (``defer_foreign_keys`` aside: foreign keys are
  enforced, see ``dotdo.storage.foreign_keys``); read-only introspection pragmas work.

Statements are executed eagerly: when ``exec`` returns, every statement in the string
has run and the rows are in the cursor. Rows iterate as dicts (column name to value);
``raw()`` gives tuples.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import apsw

from dotdo.storage.errors import InvalidQuery, InvalidValue, RowCountError, SqlError, translate
from dotdo.storage.schema import RESERVED_PREFIX

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

SqlValue = None | int | float | str | bytes

# Pragmas that only describe the schema; every other pragma is refused in user SQL.
PROGRESS_STEPS = 10_000
"""SQLite virtual-machine steps between two checks of a user statement's time limit
(a check costs well under a microsecond; 10,000 steps take about a millisecond)."""

# Pragmas that take a table, an index or a count as their argument: read-only either way.
_ARGUMENT_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "optimize",  # runs ANALYZE where it helps; its argument is a mask
    }
)
# Pragmas that are read only: ``PRAGMA x`` is allowed, ``PRAGMA x = v`` or ``x(v)`` is
# refused (SQLite would take some of them and ignore them in silence).
_VALUE_PRAGMAS = frozenset(
    {"collation_list", "function_list", "page_count", "page_size", "freelist_count", "data_version", "foreign_keys"}
)
_FOREIGN_KEYS_ON = (
    "SQL may not set PRAGMA foreign_keys: foreign keys are always enforced; "
    "PRAGMA defer_foreign_keys = ON checks them when the turn commits instead"
)
_READ_ONLY_PRAGMAS = _ARGUMENT_PRAGMAS | _VALUE_PRAGMAS
_TEMP_ACTIONS = frozenset(
    {
        apsw.SQLITE_CREATE_TEMP_TABLE,
        apsw.SQLITE_CREATE_TEMP_VIEW,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_CREATE_TEMP_INDEX,
    }
)
_CREATE_ACTIONS = frozenset(
    {apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_VIEW, apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_INDEX}
)  # in the ``temp`` schema (``CREATE TABLE temp.t``): TEMP all the same
_TEMP_REFUSED = (
    "SQL may not create TEMP tables, views, triggers or indexes: they live in the connection and "
    "would vanish when the actor is passivated, losing what they held; create ordinary ones"
)
# Single-quoted string literals ('' is a quote inside one): the reserved prefix is a rule
# about names, and text inside a literal names nothing.
_LITERAL = re.compile(r"'(?:[^']|'')*'")

_SCHEMA_ACTIONS = frozenset(
    {apsw.SQLITE_ALTER_TABLE, apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE}
    | set(range(apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_VIEW + 1))
)
"""Authorizer actions of statements that create, alter or drop something."""

MAX_DESCRIBED = 512
"""Empty results' columns remembered per database (then forgotten all at once)."""

_TABLE_ACTIONS = {
    apsw.SQLITE_READ: 0,
    apsw.SQLITE_INSERT: 0,
    apsw.SQLITE_UPDATE: 0,
    apsw.SQLITE_DELETE: 0,
    apsw.SQLITE_ALTER_TABLE: 1,
    apsw.SQLITE_CREATE_INDEX: 1,
    apsw.SQLITE_CREATE_TABLE: 0,
    apsw.SQLITE_CREATE_TEMP_INDEX: 1,
    apsw.SQLITE_CREATE_TEMP_TABLE: 0,
    apsw.SQLITE_CREATE_TEMP_TRIGGER: 1,
    apsw.SQLITE_CREATE_TEMP_VIEW: 0,
    apsw.SQLITE_CREATE_TRIGGER: 1,
    apsw.SQLITE_CREATE_VIEW: 0,
    apsw.SQLITE_CREATE_VTABLE: 0,
    apsw.SQLITE_DROP_INDEX: 1,
    apsw.SQLITE_DROP_TABLE: 0,
    apsw.SQLITE_DROP_TEMP_INDEX: 1,
    apsw.SQLITE_DROP_TEMP_TABLE: 0,
    apsw.SQLITE_DROP_TEMP_TRIGGER: 1,
    apsw.SQLITE_DROP_TEMP_VIEW: 0,
    apsw.SQLITE_DROP_TRIGGER: 1,
    apsw.SQLITE_DROP_VIEW: 0,
    apsw.SQLITE_DROP_VTABLE: 0,
}

_ATTACH_REFUSED = "SQL may not attach or detach other databases"
_VACUUM_REFUSED = (
    "SQL may not VACUUM (it attaches a database internally): the engine compacts an actor's "
    "database with the compact operation (dotdo compact)"
)
_VACUUM = re.compile(r"\bvacuum\b", re.IGNORECASE)

_TRANSACTION_HINT = (
    "SQL may not open or end transactions (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE): "
    "each turn is already a transaction; use `with storage.transaction():` for a block "
    "that must roll back on its own"
)


class _Guard:
    """The connection's authorizer: permissive for the engine, strict for user SQL.

    It is installed once (changing an authorizer expires every prepared statement) and
    switched by ``active``. User SQL cannot reuse an engine statement from the statement
    cache because every engine statement names a ``_dotdo_`` table or savepoint, and user
    text containing that prefix is refused before it is prepared.
    """

    __slots__ = ("active", "denied", "schema")

    def __init__(self) -> None:
        self.active = False
        self.denied = ""
        self.schema = 0  # counts statements that may change the schema, as they are prepared

    def __call__(self, op: int, p1: str | None, p2: str | None, db: str | None, src: str | None) -> int:
        if op in _SCHEMA_ACTIONS:
            self.schema += 1
        if not self.active:
            return apsw.SQLITE_OK
        reason = _TEMP_REFUSED if db == "temp" and op in _CREATE_ACTIONS else self._check(op, p1, p2)
        if reason:
            self.denied = reason
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    @staticmethod
    def _check(op: int, p1: str | None, p2: str | None) -> str:
        if op in (apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
            return _TRANSACTION_HINT
        if op in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH):
            return _ATTACH_REFUSED
        if op == apsw.SQLITE_PRAGMA:
            pragma = (p1 or "").lower()
            if pragma in _ARGUMENT_PRAGMAS:
                return f"{p2!r} is reserved for the engine" if p2 and _reserved(p2) else ""
            if pragma in _VALUE_PRAGMAS:
                if p2 is None:
                    return ""
                if pragma == "foreign_keys":
                    return _FOREIGN_KEYS_ON
                return f"SQL may not set PRAGMA {p1}: it can only be read (PRAGMA {p1})"
            if pragma == "defer_foreign_keys":
                return ""  # read or set: checks move to the commit of the turn's transaction
            return f"SQL may not use PRAGMA {p1} (only read-only schema pragmas are allowed)"
        if op in _TEMP_ACTIONS:
            return _TEMP_REFUSED
        if op == apsw.SQLITE_FUNCTION and (p2 or "").lower() == "load_extension":
            return "SQL may not load extensions"
        which = _TABLE_ACTIONS.get(op)
        if which is not None:
            name = p2 if which else p1
            if name and _reserved(name):
                return f"{name!r} is reserved for the engine; user tables may not start with {RESERVED_PREFIX!r}"
        return ""


def _reserved(name: str) -> bool:
    return name.lower().startswith(RESERVED_PREFIX)


class _Run:
    """What one ``exec`` saw: the last statement's columns and rows, and counters."""

    __slots__ = ("statements", "scanned", "columns", "rows", "described", "last")

    def __init__(self) -> None:
        self.statements = 0
        self.scanned = 0
        self.columns: tuple[str, ...] = ()
        self.rows: list[tuple[Any, ...]] = []
        self.described = False
        self.last: tuple[str, Any] | None = None  # the last read-only statement and its bindings

    def on_statement(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        # Called before each statement runs (and once for text holding no statement):
        # the result is the last statement's rows. Its columns are read at its first row,
        # not here: a cached statement whose tables changed since it was prepared (ALTER
        # TABLE) is prepared again at its first step, and a description asked for before
        # that would be the old one, kept for the whole statement.
        self.columns = ()
        self.rows = []
        self.described = False
        self.last = (sql, bindings) if cursor.is_readonly else None
        return True

    def describe(self, cursor: apsw.Cursor) -> None:
        """The columns of the row just produced (the statement as it ran)."""
        self.columns = tuple(d[0] for d in cursor.get_description())
        self.described = True

    def describe_empty(self, conn: apsw.Connection, known: dict[str, tuple[int, tuple[str, ...]]], schema: int) -> None:
        """The columns of a last statement that produced no row: prepared afresh (not
        from the cache) and not run, unless ``known`` holds them from a preparation at
        the same ``schema`` count."""
        if self.described or self.last is None:
            return
        sql, bindings = self.last
        seen = known.get(sql)
        if seen is not None and seen[0] == schema:
            self.columns = seen[1]
            return
        cursor = conn.cursor()

        def stop(cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
            self.columns = tuple(d[0] for d in cursor.get_description())
            return False

        cursor.exec_trace = stop
        try:
            cursor.execute(sql, bindings, can_cache=False)
        except apsw.ExecTraceAbort:
            pass
        if len(known) >= MAX_DESCRIBED:
            known.clear()
        known[sql] = (schema, self.columns)

    def on_profile(self, event: dict[str, Any]) -> None:
        # Called after each statement that ran. A full scan of n rows is n - 1 steps.
        if not event.get("trigger"):
            self.statements += 1
            steps = event["stmt_status"]["SQLITE_STMTSTATUS_FULLSCAN_STEP"]
            self.scanned += steps + 1 if steps else 0


class Cursor:
    """The result of one ``exec``: rows, column names and counters.

    Attributes:
        column_names: Names of the result columns of the last statement.
        rows_read: Rows SQLite stepped through (full-scan steps, or rows returned
            when larger): an estimate of work done, as Durable Objects bills it.
        rows_written: Rows inserted, updated or deleted, triggers included.
    """

    __slots__ = ("column_names", "rows_read", "rows_written", "_rows")

    def __init__(
        self, column_names: tuple[str, ...], rows: list[tuple[Any, ...]], rows_read: int, rows_written: int
    ) -> None:
        self.column_names = column_names
        self._rows = rows
        self.rows_read = rows_read
        self.rows_written = rows_written

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = self.column_names
        for row in self._rows:
            yield dict(zip(names, row, strict=True))

    def __len__(self) -> int:
        return len(self._rows)

    def raw(self) -> Iterator[tuple[Any, ...]]:
        """Iterate the rows as tuples, in column order."""
        return iter(self._rows)

    def fetchall(self) -> list[dict[str, Any]]:
        """Every row as a dict."""
        return list(self)

    def one(self) -> dict[str, Any]:
        """The only row.

        Raises:
            RowCountError: The statement returned no row, or more than one.
        """
        count = len(self._rows)
        if count != 1:
            raise RowCountError(f"expected exactly one row, got {count}", count=count)
        return dict(zip(self.column_names, self._rows[0], strict=True))

    def __repr__(self) -> str:
        return f"<Cursor rows={len(self._rows)} columns={list(self.column_names)}>"


def _user_error(exc: apsw.Error, db: ActorDatabase) -> Exception:
    """The dotdo error for an apsw error raised by a user statement."""
    if isinstance(exc, apsw.BindingsError):
        return InvalidQuery(f"wrong bindings: {exc}")
    if isinstance(exc, apsw.AuthError):
        return InvalidQuery("statement not allowed")
    if isinstance(
        exc,
        apsw.SQLError | apsw.ConstraintError | apsw.MismatchError | apsw.TooBigError | apsw.RangeError,
    ):
        return SqlError(str(exc), sqlite_error=type(exc).__name__)
    return translate(exc, db.address)


class SqlStore:
    """SQL access to one actor's database (``self.sql`` in an actor)."""

    __slots__ = ("_db", "_conn", "_guard", "_deadline", "_described")

    def __init__(self, db: ActorDatabase) -> None:
        self._db = db
        self._conn = db.connection
        self._guard = _Guard()
        self._conn.authorizer = self._guard
        self._described: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._deadline = math.inf
        self._conn.set_progress_handler(self._overdue, PROGRESS_STEPS)

    def schema_may_have_changed(self) -> None:
        """The schema may have changed without a statement of this connection creating,
        altering or dropping anything (a rollback undid one, the data was replaced):
        empty results are described afresh."""
        self._guard.schema += 1

    def _overdue(self) -> bool:
        """SQLite's progress callback: whether the user statement running is past its
        time (True stops it)."""
        return time.monotonic() > self._deadline

    def exec(self, query: str, *bindings: SqlValue) -> Cursor:
        """Run ``query`` (one or more statements) with ``bindings`` and return its rows.

        Bindings are positional (``?``) and apply to the statements in order. Inside a
        turn the writes join the turn's transaction.

        Raises:
            InvalidQuery: Empty, forbidden or reserved-table SQL; nothing ran.
            InvalidValue: A binding is not None, int, float, str or bytes.
            SqlError: SQLite rejected a statement; the turn rolls back if not caught.
        """
        if not isinstance(query, str):
            raise InvalidQuery(f"query must be a string, got {type(query).__name__}")
        if RESERVED_PREFIX in query.lower() and RESERVED_PREFIX in _LITERAL.sub("", query).lower():
            # Named outside a string literal, in any case or quoting. (Refused before it
            # is prepared: user text must never match an engine statement in the cache.)
            raise InvalidQuery(
                f"SQL may not name the engine's tables (prefix {RESERVED_PREFIX!r})"
            )
        for value in bindings:
            if value is not None and not isinstance(value, int | float | str | bytes):
                raise InvalidValue(
                    f"cannot bind a {type(value).__name__}: use None, int, float, str or bytes "
                    "(encode JSON yourself)"
                )
        db = self._db
        conn = self._conn
        guard = self._guard
        run = _Run()
        db.ensure_transaction()
        before = conn.total_changes()
        guard.active = True
        guard.denied = ""
        limit = db.options.sql_time_limit
        self._deadline = time.monotonic() + limit
        conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, run.on_profile, id=self)
        try:
            cursor = conn.cursor()
            cursor.exec_trace = run.on_statement
            for row in cursor.execute(query, bindings):
                if not run.described:
                    run.describe(cursor)
                run.rows.append(row)
            run.describe_empty(conn, self._described, guard.schema)
        except apsw.InterruptError:
            raise SqlError(
                f"the SQL ran for more than {limit:g} s and was stopped (StorageOptions.sql_time_limit)",
                sqlite_error="InterruptError",
            ) from None
        except apsw.Error as exc:
            if guard.denied == _ATTACH_REFUSED and _VACUUM.search(query):
                raise InvalidQuery(_VACUUM_REFUSED) from None
            if guard.denied:
                raise InvalidQuery(guard.denied) from None
            raise _user_error(exc, db) from None
        finally:
            self._deadline = math.inf
            guard.active = False
            conn.trace_v2(0, None, id=self)
        if run.statements == 0:
            raise InvalidQuery("empty SQL: the query holds no statement")
        rows = run.rows
        return Cursor(run.columns, rows, max(run.scanned, len(rows)), conn.total_changes() - before)

    @property
    def database_size(self) -> int:
        """Bytes used by the database (pages times page size)."""
        conn = self._conn
        return int(conn.pragma("page_count")) * int(conn.pragma("page_size"))

