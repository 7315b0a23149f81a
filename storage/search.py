"""Full-text and vector search over the things of one store (``ThingStore.search`` and
``ThingStore.nearest``).

**Full text.** ``_dotdo_things_fts`` is an FTS5 table without content of its own
(``content=''``, ``contentless_delete=1``): its rowid is the thing's ``rid``, its
columns are the thing's ``name`` and ``body``, the string values found anywhere in
``data`` (keys and numbers are not indexed), joined by newlines. It stores only the
index, not a second copy of the text. The store writes it with explicit statements in
the same savepoint as the thing itself, so a thing and its index entry change together or
not at all (statements rather than triggers: Python holds the decoded data already).
Tokens: ``unicode61`` with diacritics removed (``café`` matches ``cafe``), case-insensitive.

Queries: by default (``syntax="plain"``) every whitespace-separated word is quoted, so no
text is ever a syntax error: ``foo-bar`` is the phrase "foo bar", ``AND`` is a word, and a
thing must match every word; a word ending in ``*`` matches as a prefix. With
``syntax="fts5"`` the text is FTS5's own query language (``OR``, ``NOT``, ``NEAR``,
``name:``...) and an error in it is ``InvalidQuery``. Ranking is bm25 with ``name``
weighted twice ``body``; the score returned is ``-bm25``: higher is more relevant.

**Vectors.** Embeddings are supplied by the caller: a list of numbers or float32 bytes
(native byte order, i.e. little-endian on every machine dotdo runs on), of the store's
dimension (``DEFAULT_DIMENSION`` unless ``set_dimension`` chose another while the store
held no vector; recorded in ``_dotdo_meta`` with the first vector). They live in a plain
table (``_dotdo_vectors``, one float32 blob per thing) and ``nearest`` is an exact,
brute-force scan with sqlite-vec's ``vec_distance_l2`` or ``vec_distance_cosine``.

Why not a ``vec0`` virtual table (measured with sqlite-vec 0.1.9, 128 dimensions, one
core, top 10): ``vec0`` scans 2.4 to 3 times faster (10,000 vectors on disk: 1.2 ms
against 3.0 ms; 100,000 in memory: 9.5 ms against 29 ms), but it allocates storage in
chunks of 1,024 vectors, so a database holding a single embedding takes 584 KiB (8 KiB
here; 100 embeddings: 584 KiB against 68 KiB), and thousands of small actors are
dotdo's common case. Its table must also be created at run time with the extension
loaded, where the plain table is built with the rest of the feature, and writes (create,
update, delete) never need the extension: only ``nearest`` loads it. Both are exact
scans; an actor holding hundreds of thousands of vectors wants an approximate index,
which sqlite-vec does not offer yet.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import apsw

from dotdo.storage.errors import InvalidInput, InvalidQuery, translate
from dotdo.storage.things_model import THING_COLUMNS, Thing, check_key, check_page, row_to_thing, text_values

if TYPE_CHECKING:
    from dotdo.storage.database import ActorDatabase

DEFAULT_DIMENSION = 128
MAX_DIMENSION = 4096
MAX_QUERY_LENGTH = 1000
DIMENSION_KEY = "things.vector_dimension"

_WORD_RE = re.compile(r"\w")
_METRICS = {"l2": "vec_distance_l2", "cosine": "vec_distance_cosine"}

SEARCH_SQL = (
    f"SELECT {THING_COLUMNS}, bm25(_dotdo_things_fts, 2.0, 1.0) AS rank "
    "FROM _dotdo_things_fts JOIN _dotdo_things AS t ON t.rid = _dotdo_things_fts.rowid "
    "WHERE _dotdo_things_fts MATCH ? {type} ORDER BY rank, t.rid LIMIT ?"
)
NEAREST_SQL = (
    f"SELECT {THING_COLUMNS}, v.d FROM (SELECT rid, {{fn}}(embedding, ?) AS d FROM _dotdo_vectors "
    "{where} ORDER BY d NULLS LAST, rid LIMIT ?) AS v JOIN _dotdo_things AS t ON t.rid = v.rid "
    "ORDER BY v.d NULLS LAST, v.rid"
)


def plain_query(text: str) -> str:
    """Quote ``text`` word by word as an FTS5 query that matches every word."""
    terms = []
    for word in text.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if _WORD_RE.search(word):
            term = '"' + word.replace('"', '""') + '"'
            terms.append(term + " *" if prefix else term)
    if not terms:
        raise InvalidQuery("the search text holds no words")
    return " ".join(terms)


def document(name: str | None, data: dict[str, Any]) -> tuple[str, str]:
    """The two indexed columns of a thing: its name and the text values of its data."""
    return name or "", "\n".join(text_values(data, []))


def pack(embedding: object, dimension: int) -> bytes:
    """Check an embedding and return it as float32 bytes.

    Raises:
        InvalidInput: Not a list of numbers or float32 bytes, the wrong dimension, or a
            value that is NaN, infinite or outside float32's range.
    """
    values = array("f")
    if isinstance(embedding, bytes | bytearray | memoryview):
        raw = bytes(embedding)
        if len(raw) % 4:
            raise InvalidInput(f"embedding: {len(raw)} bytes is not a whole number of float32 values")
        values.frombytes(raw)
    elif isinstance(embedding, list | tuple):
        for i, x in enumerate(embedding):
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise InvalidInput(f"embedding[{i}]: a {type(x).__name__} is not a number")
        try:
            values.extend(embedding)
        except OverflowError:
            raise InvalidInput("embedding: a value is outside float32's range") from None
    else:
        raise InvalidInput(
            f"embedding: a list of numbers or float32 bytes, got {type(embedding).__name__} "
            "(for numpy: .astype('float32').tobytes())"
        )
    if len(values) != dimension:
        raise InvalidInput(f"embedding: {len(values)} dimensions; this store's vectors have {dimension}")
    if not all(map(math.isfinite, values)):
        raise InvalidInput("embedding: holds NaN or infinity (or a value outside float32's range)")
    return values.tobytes()


def check_dimension(dimension: object) -> int:
    """Return ``dimension`` if it is a valid vector dimension, else raise ``InvalidInput``."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidInput(f"a vector dimension is an int from 1 to {MAX_DIMENSION}, got {dimension!r}")
    return dimension


class SearchIndex:
    """The FTS and vector rows of one store. Writes assume the things feature is in
    place and a transaction is open (``ThingStore`` sees to both)."""

    __slots__ = ("_db", "_readable")

    def __init__(self, db: ActorDatabase, readable: Callable[[], bool]) -> None:
        self._db = db
        self._readable = readable  # whether the tables exist (reads find nothing if not)

    def _execute(self, sql: str, bindings: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self._db.connection.execute(sql, bindings).fetchall()
            return rows
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None

    # -- writes ----------------------------------------------------------------------

    def index_text(self, rid: int, name: str | None, data: dict[str, Any], *, new: bool) -> None:
        """Index the text of thing ``rid``: a ``new`` one, or again after a change."""
        verb = "INSERT" if new else "REPLACE"  # REPLACE looks for an entry to delete first
        self._execute(f"{verb} INTO _dotdo_things_fts(rowid, name, body) VALUES (?, ?, ?)", (rid, *document(name, data)))

    def put_vector(self, rid: int, type_: str, embedding: object) -> None:
        """Set the embedding of thing ``rid``; the first one records the dimension."""
        stored = self._stored_dimension()
        blob = pack(embedding, stored or self.dimension())
        if stored is None:
            self._execute("INSERT INTO _dotdo_meta(key, value) VALUES (?, ?)", (DIMENSION_KEY, len(blob) // 4))
        self._execute("REPLACE INTO _dotdo_vectors(rid, type, embedding) VALUES (?, ?, ?)", (rid, type_, blob))

    def delete_vector(self, rid: int) -> None:
        """Remove the embedding of thing ``rid``, if it has one."""
        self._execute("DELETE FROM _dotdo_vectors WHERE rid = ?", (rid,))

    def forget(self, rid: int) -> None:
        """Remove thing ``rid`` from the text index and the vectors."""
        self._execute("DELETE FROM _dotdo_things_fts WHERE rowid = ?", (rid,))
        self.delete_vector(rid)

    def clear(self) -> None:
        """Empty the text index and the vectors, and forget the dimension."""
        self._execute("INSERT INTO _dotdo_things_fts(_dotdo_things_fts) VALUES ('delete-all')", ())
        self._execute("DELETE FROM _dotdo_vectors", ())
        self._execute("DELETE FROM _dotdo_meta WHERE key = ?", (DIMENSION_KEY,))

    # -- dimension -------------------------------------------------------------------

    def _stored_dimension(self) -> int | None:
        rows = self._execute("SELECT value FROM _dotdo_meta WHERE key = ?", (DIMENSION_KEY,))
        return int(rows[0][0]) if rows else None

    def dimension(self) -> int:
        """The dimension embeddings must have (the stored one, else the default)."""
        return self._stored_dimension() or DEFAULT_DIMENSION

    def set_dimension(self, dimension: object) -> None:
        """Choose the dimension of the store's embeddings.

        Raises:
            InvalidInput: Not an int in 1..MAX_DIMENSION, or the store already holds
                vectors of another dimension (delete their embeddings first).
        """
        check_dimension(dimension)
        current = self._stored_dimension()
        if current == dimension:
            return
        if current is not None and self._execute("SELECT 1 FROM _dotdo_vectors LIMIT 1", ()):
            raise InvalidInput(
                f"this store holds vectors of dimension {current}; remove their embeddings "
                f"before changing it to {dimension}"
            )
        self._execute("REPLACE INTO _dotdo_meta(key, value) VALUES (?, ?)", (DIMENSION_KEY, dimension))

    # -- queries ---------------------------------------------------------------------

    def search(
        self, text: str, type_: str | None, limit: int, syntax: Literal["plain", "fts5"]
    ) -> list[tuple[Thing, float]]:
        """Full-text search over names and the text of ``data`` (see the module docstring).

        Args:
            text: The words to find (``syntax="plain"``) or an FTS5 query (``"fts5"``).
            type_: Only things of this type.
            limit: At most this many results (1..MAX_LIMIT).
            syntax: ``plain`` or ``fts5``.

        Returns:
            ``(thing, score)`` pairs, best first; the score is ``-bm25``: higher is more
            relevant.

        Raises:
            InvalidQuery: No words in ``text``, or (``fts5``) a query FTS5 rejects.
        """
        check_key(type=type_)
        check_page(limit)
        if not isinstance(text, str):
            raise InvalidQuery(f"the search text is a string, got {type(text).__name__}")
        if len(text) > MAX_QUERY_LENGTH:
            raise InvalidQuery(f"the search text is {len(text)} characters, over the {MAX_QUERY_LENGTH} limit")
        if syntax == "plain":
            match = plain_query(text)
        elif syntax == "fts5":
            match = text
        else:
            raise InvalidQuery(f"syntax is 'plain' or 'fts5', got {syntax!r}")
        if not self._readable():
            return []
        args: tuple[Any, ...] = (match, type_, limit) if type_ else (match, limit)
        sql = SEARCH_SQL.format(type="AND t.type = ?" if type_ else "")
        try:
            rows: list[tuple[Any, ...]] = self._db.connection.execute(sql, args).fetchall()
        except apsw.SQLError as exc:
            raise InvalidQuery(f"invalid full-text query {text[:80]!r}: {exc}") from None
        except apsw.Error as exc:
            raise translate(exc, self._db.address) from None
        return [(row_to_thing(row[:-1]), -row[-1]) for row in rows]

    def nearest(self, vector: object, k: int, type_: str | None, metric: str) -> list[tuple[Thing, float]]:
        """The ``k`` things whose embeddings are nearest ``vector``, an exact scan.

        Args:
            vector: A list of numbers or float32 bytes, of the store's dimension.
            k: How many (1..MAX_LIMIT).
            type_: Only things of this type.
            metric: ``l2`` (Euclidean) or ``cosine`` (1 - cosine similarity; things
                whose vector is all zeros are left out).

        Returns:
            ``(thing, distance)`` pairs, nearest first.

        Raises:
            InvalidInput: A bad vector (see ``pack``) or metric.
        """
        check_key(type=type_)
        check_page(k)
        fn = _METRICS.get(metric) if isinstance(metric, str) else None
        if fn is None:
            raise InvalidInput(f"metric is one of {', '.join(_METRICS)}, got {metric!r}")
        blob = pack(vector, self.dimension())
        if metric == "cosine" and not any(array("f", blob)):
            raise InvalidInput("embedding: a zero vector has no direction; cosine distance is undefined")
        if not self._readable():
            return []
        self._db.load_vectors()
        args: tuple[Any, ...] = (blob, type_, k) if type_ else (blob, k)
        sql = NEAREST_SQL.format(fn=fn, where="WHERE type = ?" if type_ else "")
        # A stored zero vector has no cosine distance (NULL): it sorts last and is left out.
        return [(row_to_thing(row[:-1]), row[-1]) for row in self._execute(sql, args) if row[-1] is not None]
