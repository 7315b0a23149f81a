"""The ``where`` and ``order_by`` compiler of ``ThingStore``: a caller's filter, as plain
data, to parameterised SQL over the things table (aliased ``t``).

**Fields.** A field names a top-level column (``COLUMNS``: ``$id``, ``$type``,
``$version``, ``name``, ``visibility``, ``created_at``, ``updated_at``) or, otherwise, a
path into ``data``: ``"city"``, ``"address.city"``, ``"tags[0]"``. Prefix ``data.`` to
reach a data key that has a column's name (``"data.name"``). Path steps are identifiers
(a letter or ``_``, then letters, digits, ``_``) or array positions; keys with other
characters cannot be queried.

**Where.** A dict; its entries all hold (AND)::

    {"city": "Paris"}                          equality (None: the field is null or absent)
    {"age": {"$gte": 18, "$lt": 65}}           operators, all of which hold
    {"$or": [{"city": "Paris"}, {"vip": True}]} "$and" / "$or": a non-empty list of wheres

Operators: ``$eq``, ``$ne`` (also true where the field is absent), ``$gt``, ``$gte``,
``$lt``, ``$lte`` (a number or a string; numbers only match numbers and strings only
strings, compared by their UTF-8 bytes, case-sensitive), ``$in`` (a list of at most
``MAX_IN_VALUES`` values; None in it matches null or absent), ``$contains`` (on an array:
one element equals the value; on a string: the value, a string, is a substring of it,
case-sensitive). JSON ``true``/``false`` compare as 1 and 0. Values are None, bool, int,
float or str; equality against a list or dict is refused.

**Order.** A field or a list of fields, ``-field`` for descending; ties in creation order
(reversed when the last field is descending). None: creation order.

**Indexes.** ``create_index(type, field)`` builds a partial index over that type's things
(see the end of this module); queries of that type filtering or ordering by the field
use it. Queries without a type use none.

**Safety.** No value from a caller is ever part of the SQL text: values and JSON paths
are bound parameters (``json_extract(t.data, ?)``). The one exception is a field that has
an expression index (``ThingStore.create_index``): SQLite uses such an index only when the
query spells the same expression, so that path is written as a literal
(``json_extract(t.data, '$.city')``). It is built only from a field that matched
``_FIELD_RE`` (letters, digits, ``_``, ``.``, ``[``, ``]``: no quote can occur), and is
quoted again by ``sql_string`` all the same. The same holds for the index's DDL, which
also names the type as a literal (a validated identifier): DDL takes no parameters.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import apsw

from dotdo.storage.errors import InvalidQuery, StorageLimitExceeded
from dotdo.storage.things_model import ThingIndex

COLUMNS = {
    "$id": "t.id",
    "$type": "t.type",
    "$version": "t.version",
    "name": "t.name",
    "visibility": "t.visibility",
    "created_at": "t.created_at",
    "updated_at": "t.updated_at",
}
DATA_PREFIX = "data."
MAX_FIELD_LENGTH = 200
MAX_IN_VALUES = 1000
MAX_TERMS = 100
MAX_DEPTH = 8
MAX_ORDER_FIELDS = 8
MAX_INDEXES = 64

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[0-9]{1,9}\])*\Z")
_LITERAL_RE = re.compile(r"[$A-Za-z0-9_.\[\]]+")
_INT64 = range(-(2**63), 2**63)
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$contains")


@dataclass(frozen=True, slots=True)
class Field:
    """A parsed field: a column, or a JSON path into ``data``.

    Attributes:
        canonical: How the field is written back (in ``indexes()``): a column's name, or
            the data path, with ``data.`` in front only where it is needed.
        column: The column expression, for a top-level column.
        path: The JSON path (``$.address.city``), for a data field.
    """

    canonical: str
    column: str | None
    path: str | None

    @property
    def target(self) -> str:
        """What an index on this field covers: the column or the JSON path."""
        return self.column or self.path or ""


def parse_field(field: object) -> Field:
    """Parse a field name (see the module docstring).

    Raises:
        InvalidQuery: Not text, too long, or not a column or a simple path.
    """
    if not isinstance(field, str):
        raise InvalidQuery(f"a field name is text, got {type(field).__name__}")
    return _parse_field(field)


@functools.lru_cache(maxsize=512)
def _parse_field(field: str) -> Field:
    # Memoised: a pure function of the name (errors are not cached), called for every
    # field of every query.
    column = COLUMNS.get(field)
    if column is not None:
        return Field(field, column, None)
    rest = field.removeprefix(DATA_PREFIX)
    if len(field) > MAX_FIELD_LENGTH or not _FIELD_RE.match(rest):
        shown = repr(field)[:80]
        raise InvalidQuery(
            f"invalid field name {shown}: use a column ({', '.join(COLUMNS)}) or a path into data "
            "made of identifiers and array positions, like 'address.city' or 'tags[0]'"
        )
    needs_prefix = rest in COLUMNS or rest.startswith(DATA_PREFIX)
    return Field(DATA_PREFIX + rest if needs_prefix else rest, None, "$." + rest)


def sql_string(text: str) -> str:
    """Quote ``text`` as an SQL string literal. Only for text already validated as an
    identifier or a JSON path from ``parse_field``; anything else is refused."""
    if not _LITERAL_RE.fullmatch(text):
        raise InvalidQuery(f"cannot write {text[:80]!r} into SQL")
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled filter and order: SQL fragments and their parameters, in text order
    (every ``?`` of ``where`` comes before those of ``order``)."""

    where: str
    order: str
    params: tuple[Any, ...]


def compile_query(
    where: Mapping[str, Any] | None, order_by: str | list[str] | tuple[str, ...] | None, indexed: Collection[str]
) -> Compiled:
    """Compile ``where`` and ``order_by`` against the things table ``t``.

    Args:
        where: The filter (see the module docstring), or None for every thing.
        order_by: A field, a list of fields (``-field``: descending), or None.
        indexed: ``Field.target`` of the fields that have an index for the queried
            type: their paths are written as literals so the index can be used.

    Raises:
        InvalidQuery: An unknown operator, a bad field name or a value of the wrong type.
    """
    builder = _Builder(indexed)
    where_sql = builder.where(where, 0) if where is not None else "1"
    order_sql = builder.order(order_by)
    return Compiled(where_sql, order_sql, tuple(builder.params))


class _Builder:
    __slots__ = ("params", "_indexed", "_terms", "_seeks")

    def __init__(self, indexed: Collection[str]) -> None:
        self.params: list[Any] = []
        self._indexed = indexed
        self._terms = 0
        self._seeks = False  # a top-level equality, range or $in on an indexed field

    def expr(self, field: Field) -> str:
        if field.column is not None:
            return field.column
        assert field.path is not None
        if field.path in self._indexed:
            return f"json_extract(t.data, {sql_string(field.path)})"
        self.params.append(field.path)
        return "json_extract(t.data, ?)"

    def where(self, where: object, depth: int) -> str:
        if not _is_mapping(where):
            raise InvalidQuery(f"a where is a dict of field to condition, got {type(where).__name__}")
        if depth > MAX_DEPTH:
            raise InvalidQuery(f"$and/$or nested deeper than {MAX_DEPTH} levels")
        parts = []
        for key, condition in where.items():
            if key in ("$and", "$or"):
                parts.append(self.logical(key, condition, depth))
            elif isinstance(key, str) and key.startswith("$") and key not in COLUMNS:
                raise InvalidQuery(f"unknown field or operator {key[:80]!r} (logical operators: $and, $or)")
            else:
                field = parse_field(key)
                parts.append(self.condition(field, condition))
                if depth == 0 and field.target in self._indexed and _seekable(condition):
                    self._seeks = True
        return "(" + " AND ".join(parts) + ")" if parts else "1"

    def logical(self, op: str, items: object, depth: int) -> str:
        if not isinstance(items, list | tuple) or not items:
            raise InvalidQuery(f"{op} takes a non-empty list of wheres")
        joiner = " AND " if op == "$and" else " OR "
        return "(" + joiner.join(self.where(item, depth + 1) for item in items) + ")"

    def condition(self, field: Field, condition: object) -> str:
        if not _is_mapping(condition):
            return self.operator(field, "$eq", condition)
        if not condition:
            raise InvalidQuery(f"{field.canonical}: an empty condition; give a value or operators")
        # Which sides are bounded already, per kind of value (see comparison()).
        bounded = frozenset((op[1], isinstance(v, str)) for op, v in condition.items() if op in _COMPARISONS)
        return " AND ".join(self.operator(field, op, value, bounded) for op, value in condition.items())

    def operator(self, field: Field, op: object, value: object, bounded: frozenset[tuple[str, bool]] = frozenset()) -> str:
        self._terms += 1
        if self._terms > MAX_TERMS:
            raise InvalidQuery(f"a where may hold at most {MAX_TERMS} conditions")
        name = field.canonical
        if op == "$eq" or op == "$ne":
            value = _scalar(value, name, op)
            expr = self.expr(field)
            if value is None:
                return f"{expr} IS NULL" if op == "$eq" else f"{expr} IS NOT NULL"
            self.params.append(value)
            return f"{expr} = ?" if op == "$eq" else f"{expr} IS NOT ?"
        if op in _COMPARISONS:
            return self.comparison(field, _COMPARISONS[op], value, bounded)
        if op == "$in":
            return self.in_list(field, value)
        if op == "$contains":
            return self.contains(field, value)
        if isinstance(op, str) and not op.startswith("$"):
            raise InvalidQuery(
                f"{name}: a condition dict holds operators; to compare a nested field use a dotted path "
                f"like '{name}.{op[:40]}'"
            )
        raise InvalidQuery(f"{name}: unknown operator {str(op)[:40]!r} (known: {', '.join(_OPERATORS)})")

    def comparison(self, field: Field, sign: str, value: object, bounded: frozenset[tuple[str, bool]]) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidQuery(f"{field.canonical}: compare with a number or a string, got {type(value).__name__}")
        value = _scalar(value, field.canonical, sign)
        first = self.expr(field)
        self.params.append(value)
        # SQLite orders NULL < numbers < text. A lower bound on a number, or an upper
        # bound on a string, is open towards the other kind: a second bound closes it
        # (an index range can use both), unless the condition bounds that side itself
        # (then a second bound would only give SQLite a worse range to choose).
        text = isinstance(value, str)
        if text and sign[0] == "<" and ("g", True) not in bounded:
            return f"({first} {sign} ? AND {self.expr(field)} >= '')"
        if not text and sign[0] == ">" and ("l", False) not in bounded:
            return f"({first} {sign} ? AND {self.expr(field)} < '')"
        return f"{first} {sign} ?"

    def in_list(self, field: Field, values: object) -> str:
        name = field.canonical
        if not isinstance(values, list | tuple):
            raise InvalidQuery(f"{name}: $in takes a list, got {type(values).__name__}")
        if len(values) > MAX_IN_VALUES:
            raise InvalidQuery(f"{name}: $in takes at most {MAX_IN_VALUES} values, got {len(values)}")
        scalars = [_scalar(v, name, "$in") for v in values]
        present = [v for v in scalars if v is not None]
        expr = self.expr(field)
        self.params.extend(present)
        sql = f"{expr} IN ({', '.join('?' * len(present))})"
        if len(present) < len(scalars):
            sql = f"({sql} OR {self.expr(field)} IS NULL)"
        return sql

    def contains(self, field: Field, value: object) -> str:
        name = field.canonical
        value = _scalar(value, name, "$contains")
        if value is None:
            raise InvalidQuery(f"{name}: $contains takes a value, not None")
        if field.column is not None:
            if not isinstance(value, str):
                raise InvalidQuery(f"{name}: $contains on a column takes a string")
            self.params.append(value)
            return f"instr({field.column}, ?) > 0"
        path = field.path
        if not isinstance(value, str):
            self.params.extend((path, path, value))
            return "(json_type(t.data, ?) = 'array' AND EXISTS (SELECT 1 FROM json_each(t.data, ?) WHERE value = ?))"
        self.params.extend((path, path, value, path, value))
        return (
            "(CASE json_type(t.data, ?) WHEN 'array' THEN EXISTS (SELECT 1 FROM json_each(t.data, ?) "
            "WHERE value = ?) WHEN 'text' THEN instr(json_extract(t.data, ?), ?) > 0 ELSE 0 END)"
        )

    def order(self, order_by: object) -> str:
        if order_by is None:
            # Without statistics SQLite prefers the type index, which yields creation
            # order with no sort, over a field index that would find the few matching
            # rows: "+t.rid" is the same order but cannot come from an index.
            return "+t.rid" if self._seeks else "t.rid"
        fields = [order_by] if isinstance(order_by, str) else order_by
        if not isinstance(fields, list | tuple) or not fields:
            raise InvalidQuery("order_by takes a field or a non-empty list of fields ('-field': descending)")
        if len(fields) > MAX_ORDER_FIELDS:
            raise InvalidQuery(f"order_by takes at most {MAX_ORDER_FIELDS} fields")
        parts = []
        direction = "ASC"
        for spec in fields:
            if not isinstance(spec, str):
                raise InvalidQuery(f"order_by fields are text, got {type(spec).__name__}")
            direction = "DESC" if spec.startswith("-") else "ASC"
            parts.append(f"{self.expr(parse_field(spec.removeprefix('-')))} {direction}")
        # Ties in creation order, scanned the same way as the last field (so an index
        # on that field serves the whole order).
        parts.append(f"t.rid {direction}")
        return ", ".join(parts)


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    return type(value) is dict or isinstance(value, Mapping)  # the ABC check is slow


def _seekable(condition: object) -> bool:
    """Whether an index on the field can seek to the rows ``condition`` selects."""
    if not _is_mapping(condition):
        return True
    return all(op in _COMPARISONS or op in ("$eq", "$in") for op in condition)


def _scalar(value: object, field: str, op: object) -> Any:
    """Check a value a condition compares with; bools become 1 and 0, as in JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value not in _INT64:
            raise InvalidQuery(f"{field}: {op} value {value} is out of the 64-bit integer range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidQuery(f"{field}: {op} value must be a finite number")
        return value
    if isinstance(value, list | tuple | dict):
        raise InvalidQuery(
            f"{field}: {op} compares with None, bool, int, float or str, not a {type(value).__name__} "
            "(use $in for a list of values, $contains for array membership, a dotted path for nested fields)"
        )
    raise InvalidQuery(f"{field}: {op} cannot compare with a {type(value).__name__}")


# -- field indexes -------------------------------------------------------------------
#
# An index on (type, field) is a partial index ``(type, <field expression>) WHERE type =
# '<type>'``: it holds only that type's things and serves equality, ranges and order
# (the type may stay a bound parameter in queries: SQLite re-plans a statement for the
# value bound to a partial index's term). Each is recorded in ``_dotdo_thing_indexes``.

_INDEX_COLUMNS = "type, field, name, created_at"


def index_name(type_: str, field: str) -> str:
    """The SQLite name of the index on ``field`` of ``type_`` (a hash: never caller text)."""
    return "_dotdo_ix_" + hashlib.sha256(f"{type_}\0{field}".encode()).hexdigest()[:20]


def create_index(conn: apsw.Connection, type_: str, field: Field) -> ThingIndex:
    """Create (if missing) and record the index on ``field`` of ``type_``; the caller
    validated ``type_`` and holds a transaction."""
    if field.canonical in ("$id", "$type"):
        raise InvalidQuery(f"{field.canonical} is indexed already")
    name = index_name(type_, field.canonical)
    found = list_indexes(conn, type_, field.canonical)
    if found:
        return found[0]
    count: int = conn.execute("SELECT count(*) FROM _dotdo_thing_indexes").fetchall()[0][0]  # type: ignore[assignment]
    if count >= MAX_INDEXES:
        raise StorageLimitExceeded(
            f"this store has {count} indexes, the limit is {MAX_INDEXES}", limit=MAX_INDEXES, actual=count + 1
        )
    # Literals, not parameters (DDL takes none): the type matched the type-name pattern
    # and the path the field pattern, and sql_string checks both again.
    expr = field.column.removeprefix("t.") if field.column else f"json_extract(data, {sql_string(field.target)})"
    conn.execute(f"CREATE INDEX {name} ON _dotdo_things(type, {expr}) WHERE type = {sql_string(type_)}")
    created = time.time()
    conn.execute(
        f"INSERT INTO _dotdo_thing_indexes({_INDEX_COLUMNS}) VALUES (?, ?, ?, ?)", (type_, field.canonical, name, created)
    )
    return ThingIndex(type_, field.canonical, name, created)


def drop_index(conn: apsw.Connection, type_: str, field: Field) -> None:
    """Drop the index on ``field`` of ``type_`` (which exists) and its record."""
    name = index_name(type_, field.canonical)
    conn.execute(f"DROP INDEX {name}")
    conn.execute("DELETE FROM _dotdo_thing_indexes WHERE name = ?", (name,))


def drop_indexes(conn: apsw.Connection) -> int:
    """Drop every recorded index and its record; how many there were (the caller holds
    a transaction)."""
    names = [row[0] for row in conn.execute("SELECT name FROM _dotdo_thing_indexes").fetchall()]
    for name in names:
        conn.execute(f"DROP INDEX IF EXISTS {name}")  # a hash of ours (index_name), never caller text
    conn.execute("DELETE FROM _dotdo_thing_indexes")
    return len(names)


def list_indexes(conn: apsw.Connection, type_: str | None, field: str | None = None) -> list[ThingIndex]:
    """The recorded indexes, of ``type_`` and ``field`` when given, by type then field."""
    sql = f"SELECT {_INDEX_COLUMNS} FROM _dotdo_thing_indexes WHERE (?1 IS NULL OR type = ?1) AND (?2 IS NULL OR field = ?2)"
    rows: list[tuple[Any, ...]] = conn.execute(sql + " ORDER BY type, field", (type_, field)).fetchall()
    return [ThingIndex(*row) for row in rows]
