"""Actor kinds for the disk tests (``test_disk.py``): blobs that fill a disk."""

from __future__ import annotations

import os

from dotdo import DO


class Blob(DO):
    """Keeps incompressible blobs in a table; each put also counts in the KV store, in
    the same turn."""

    async def put(self, key: str, size: int) -> int:
        self.sql.exec("CREATE TABLE IF NOT EXISTS blob(key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        self.sql.exec("INSERT OR REPLACE INTO blob VALUES (?, randomblob(?))", key, size)
        count = (self.storage.get("puts") or 0) + 1
        self.storage.put("puts", count)
        return count

    async def keys(self) -> dict[str, object]:
        rows = self.sql.exec("SELECT key, length(data) FROM blob ORDER BY key").raw() if self._has_blobs() else []
        return {"keys": {key: size for key, size in rows}, "puts": self.storage.get("puts") or 0}

    async def free(self) -> bool:
        """Delete the file that fills the disk (the test names it in ``env``)."""
        try:
            os.remove(self.env["filler"])
        except FileNotFoundError:
            return False
        return True

    def _has_blobs(self) -> bool:
        return bool(self.sql.exec("SELECT 1 FROM sqlite_schema WHERE name = 'blob'").fetchall())
