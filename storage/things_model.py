"""What the semantic stores hold and accept: their tables, ``Thing``, ``Relationship``,
``ThingIndex``, the input models that validate a caller's shapes, the JSON checks, and
the errors.

Validation happens here, before any SQL runs: a wrong shape raises ``InvalidInput``
naming the field (``$type``, ``data.address.zip``...) and nothing is written.

Shapes:

- ``$type``: a letter or ``_`` followed by letters, digits or ``_``, at most 100 characters.
- ``$id``: 1 to 1024 characters of text without control characters (a plain id or a URL).
  When not given, a new random id (32 hex digits) is made.
- ``name``: text of at most 1024 characters, or None.
- ``data`` and ``meta``: JSON objects (dicts with string keys whose values are None, bool,
  int, float, str, lists or dicts of those), nested at most 64 deep, at most 1 MiB each
  as compact UTF-8 JSON. Floats must be finite.
- ``visibility``: one of ``VISIBILITIES``; ``private`` by default. The store records it;
  it filters nothing by itself (it says what the actor may show to others).
- a relationship's verb: like a type (``worksFor``, ``owns``).
- ``limit`` of a listing, a search or ``nearest``'s ``k``: 1 to ``MAX_LIMIT`` (10,000).

Times are epoch seconds (floats, UTC), as everywhere in ``storage``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dotdo.storage.errors import InvalidInput, InvalidQuery, StorageLimitExceeded

MAX_TYPE_LENGTH = 100
MAX_ID_LENGTH = 1024
MAX_NAME_LENGTH = 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_LIMIT = 10_000
MAX_OFFSET = 2**62
Visibility = Literal["public", "unlisted", "private"]
VISIBILITIES: tuple[Visibility, ...] = get_args(Visibility)
DEFAULT_VISIBILITY: Visibility = "private"

_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# -- errors --------------------------------------------------------------------------


# -- the tables (the ``things`` feature, declared in ``dotdo.storage.things``) --------------
#
# rid is the rowid the text index and the vectors share; relationships join on it.
# data and meta are JSONB. The FTS5 table stores no text of its own (see dotdo.storage.search).
# Never edit a released migration: append one.

TABLES_V1 = """
CREATE TABLE _dotdo_things(
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    name TEXT,
    data BLOB NOT NULL,
    meta BLOB NOT NULL,
    visibility TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX _dotdo_things_type ON _dotdo_things(type);
CREATE TABLE _dotdo_relationships(
    src INTEGER NOT NULL,
    verb TEXT NOT NULL,
    dst INTEGER NOT NULL,
    data BLOB,
    created_at REAL NOT NULL,
    PRIMARY KEY (src, verb, dst)
) WITHOUT ROWID;
CREATE INDEX _dotdo_relationships_dst ON _dotdo_relationships(dst, verb);
CREATE TABLE _dotdo_thing_indexes(
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    field TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (type, field)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE _dotdo_things_fts USING fts5(
    name, body, content='', contentless_delete=1,
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TABLE _dotdo_vectors(
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX _dotdo_vectors_type ON _dotdo_vectors(type);
"""

# -- what the store returns ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thing:
    """One entity of the store. ``data`` and ``meta`` are fresh dicts the caller owns.

    Attributes:
        id: ``$id``, unique in the store.
        type: ``$type``, e.g. ``Customer``.
        name: Its display name, or None.
        data: Its JSON fields.
        meta: Free JSON metadata (not searched, not queryable).
        visibility: One of ``VISIBILITIES``.
        version: ``$version``: 1 at creation, one more at every update.
        created_at: Epoch seconds.
        updated_at: Epoch seconds.
    """

    id: str
    type: str
    name: str | None
    data: dict[str, Any]
    meta: dict[str, Any]
    visibility: str
    version: int
    created_at: float
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        """The ``$id``/``$type``/``$version`` form: plain, msgpack-able data (the form
        ``ThingStore.create`` also accepts)."""
        return {
            "$id": self.id,
            "$type": self.type,
            "$version": self.version,
            "name": self.name,
            "data": self.data,
            "meta": self.meta,
            "visibility": self.visibility,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Relationship:
    """A typed edge ``from_id --verb--> to_id`` between two things of the store."""

    from_id: str
    verb: str
    to_id: str
    data: dict[str, Any] | None
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        """Plain, msgpack-able data."""
        return {
            "from": self.from_id,
            "verb": self.verb,
            "to": self.to_id,
            "data": self.data,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class ThingIndex:
    """An expression index over one field of one type (see ``ThingStore.create_index``)."""

    type: str
    field: str
    name: str
    created_at: float


# -- validation ----------------------------------------------------------------------


def _identifier(kind: str) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > MAX_TYPE_LENGTH or not _TYPE_RE.match(value):
            raise ValueError(
                f"a {kind} is a letter or _ followed by letters, digits or _, at most {MAX_TYPE_LENGTH} characters"
            )
        return value

    return AfterValidator(check)


def _thing_id(value: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or _CONTROL_RE.search(value):
        raise ValueError(f"an id is 1 to {MAX_ID_LENGTH} characters without control characters")
    return value


def _name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"a name is at most {MAX_NAME_LENGTH} characters")
    return value


TypeName = Annotated[str, _identifier("type")]
Verb = Annotated[str, _identifier("verb")]
ThingId = Annotated[str, AfterValidator(_thing_id)]
Name = Annotated[str, AfterValidator(_name)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class NewThing(BaseModel):
    """A thing as ``create`` accepts it (keywords, or the ``as_dict`` form)."""

    model_config = _STRICT

    id: ThingId | None = Field(default=None, alias="$id")
    type: TypeName = Field(alias="$type")
    name: Name | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    visibility: Visibility = DEFAULT_VISIBILITY


class ThingPatch(BaseModel):
    """What ``update`` may change; only the fields given are set."""

    model_config = _STRICT

    data: dict[str, Any] | None = None
    name: Name | None = None
    meta: dict[str, Any] | None = None
    visibility: Visibility = DEFAULT_VISIBILITY  # (never None; unset unless given)

    def apply(self, thing: Thing, now: float) -> Thing:
        """``thing`` with this patch applied, one version later: ``data`` and ``meta``
        are merged (``merge_patch``; a None ``meta`` clears it), the rest replaced."""
        given = self.model_fields_set
        meta = thing.meta
        if "meta" in given:
            meta = merge_patch(meta, self.meta) if self.meta is not None else {}
        return dataclasses.replace(
            thing,
            name=self.name if "name" in given else thing.name,
            data=merge_patch(thing.data, self.data) if self.data is not None else thing.data,
            meta=meta,
            visibility=self.visibility if "visibility" in given else thing.visibility,
            version=thing.version + 1,
            updated_at=now,
        )


class _Keys(BaseModel):
    """Arguments that address things: ids, a type filter, a verb."""

    model_config = _STRICT

    id: ThingId | None = Field(default=None, alias="$id")
    type: TypeName | None = Field(default=None, alias="$type")
    verb: Verb | None = None


# Keys of the as_dict form that the store manages itself: accepted and ignored by create.
MANAGED_KEYS = frozenset({"$version", "created_at", "updated_at"})


def validated(model: type[BaseModel], values: Mapping[str, Any], what: str) -> Any:
    """Validate ``values`` with ``model``; a failure is ``InvalidInput`` naming the field."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            field = ".".join(str(part) for part in err["loc"]) or what
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message}")
        raise InvalidInput(f"invalid {what}: " + "; ".join(problems)) from None


def check_key(thing_id: object = None, *, type: object = None, verb: object = None) -> None:
    """Check an id, a type and a verb given as arguments (None: not given)."""
    validated(_Keys, {"$id": thing_id, "$type": type, "verb": verb}, "argument")


def check_page(limit: object, offset: object = 0) -> None:
    """Check a ``limit`` (1..MAX_LIMIT) and an ``offset`` (0 or more); ``InvalidQuery`` if not."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit is an int from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise InvalidQuery(f"offset is a non-negative int, got {offset!r}")


def new_id() -> str:
    """A new random ``$id``: 32 hex digits."""
    return uuid.uuid4().hex


def encode_json(value: dict[str, Any], field: str) -> str:
    """Check ``value`` is a JSON object within the limits and return its compact text.

    Raises:
        InvalidInput: A member is not JSON; the message names its path.
        StorageLimitExceeded: Over ``MAX_JSON_BYTES`` or ``MAX_JSON_DEPTH``.
    """
    try:
        _check_json(value, 0)
    except _NotJson as exc:
        path = field + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in reversed(exc.path))
        if exc.too_deep:
            raise StorageLimitExceeded(
                f"{path}: nested deeper than {MAX_JSON_DEPTH} levels", limit=MAX_JSON_DEPTH, actual=MAX_JSON_DEPTH + 1
            ) from None
        raise InvalidInput(f"{path}: {exc.problem}") from None
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > MAX_JSON_BYTES:
        raise StorageLimitExceeded(
            f"{field} is {size} bytes as JSON, over the {MAX_JSON_BYTES}-byte limit",
            limit=MAX_JSON_BYTES,
            actual=size,
        )
    return text


class _NotJson(Exception):
    """A member that is not JSON; ``path`` is filled in, innermost step first, on the
    way out (so a valid value costs no path strings)."""

    def __init__(self, problem: str, *, too_deep: bool = False) -> None:
        self.problem = problem
        self.too_deep = too_deep
        self.path: list[str | int] = []


_SCALARS = frozenset({str, int, bool, type(None)})


def _check_json(value: Any, depth: int) -> None:
    if type(value) in _SCALARS:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJson(f"{value} is not a finite number; JSON has no NaN or infinity")
        return
    if depth >= MAX_JSON_DEPTH and isinstance(value, dict | list):
        raise _NotJson("too deep", too_deep=True)
    if isinstance(value, dict):
        for key, member in value.items():
            if not isinstance(key, str):
                raise _NotJson(f"key {key!r} is not a string; JSON object keys are strings")
            try:
                _check_json(member, depth + 1)
            except _NotJson as exc:
                exc.path.append(key)
                raise
    elif isinstance(value, list):
        for i, member in enumerate(value):
            try:
                _check_json(member, depth + 1)
            except _NotJson as exc:
                exc.path.append(i)
                raise
    elif not isinstance(value, str | int):  # subclasses of the scalars (enums...)
        raise _NotJson(f"a {type(value).__name__} is not JSON (use None, bool, int, float, str, list or dict)")


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a JSON merge patch (RFC 7396) to ``target`` and return the result (new dict).

    Objects merge recursively; a None value removes the key; anything else (lists
    included) replaces the old value whole.
    """
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            old = result.get(key)
            result[key] = merge_patch(old if isinstance(old, dict) else {}, value)
        else:
            result[key] = value
    return result


def text_values(value: Any, out: list[str]) -> list[str]:
    """Collect every string value (not key) inside ``value``, depth first, into ``out``."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for member in value.values():
            text_values(member, out)
    elif isinstance(value, list):
        for member in value:
            text_values(member, out)
    return out


def row_to_thing(row: tuple[Any, ...]) -> Thing:
    """Build a ``Thing`` from the columns of ``THING_COLUMNS``."""
    tid, type_, name, data, meta, visibility, version, created, updated = row
    return Thing(tid, type_, name, json.loads(data), json.loads(meta), visibility, version, created, updated)


THING_COLUMNS = "t.id, t.type, t.name, json(t.data), json(t.meta), t.visibility, t.version, t.created_at, t.updated_at"
"""The select list ``row_to_thing`` reads (the things table is aliased ``t``)."""
