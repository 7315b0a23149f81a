"""The actor kind of ``cluster_bench.py``'s slot-move figure: an actor holding about
1 MB, in rows of 64 KiB."""

from __future__ import annotations

import os

from dotdo import DO

ROW = 64 * 1024


class Blob(DO):
    async def on_start(self) -> None:
        self.sql.exec("CREATE TABLE IF NOT EXISTS chunks(n INTEGER PRIMARY KEY, data BLOB)")

    async def fill(self, size: int) -> int:
        """Store ``size`` bytes of random data; the bytes held."""
        for _ in range(max(1, size // ROW)):
            self.sql.exec("INSERT INTO chunks(data) VALUES (?)", os.urandom(ROW))
        return int(self.sql.exec("SELECT sum(length(data)) AS n FROM chunks").one()["n"])

    async def size(self) -> int:
        return int(self.sql.exec("SELECT coalesce(sum(length(data)), 0) AS n FROM chunks").one()["n"])
