"""The baseline of ``http_bench.py``: the Counter example over HTTP with no actor layer.

A bare starlette + hypercorn (trio worker) + apsw app: one SQLite file per counter
(WAL, ``synchronous=NORMAL``, ``locking_mode=EXCLUSIVE``, the same small page cache as
dotdo's default), opened on first use and kept open, one committed transaction per
increment, the value msgpack-encoded in a key-value table shaped like dotdo's. No
turns, no gate, no deadlines, no copying, no id hashing beyond the file name.

    python benchmarks/bare_app.py --data DIR [--host 127.0.0.1] [--port 0]

Routes (the same as ``dotdo serve`` for the Counter kind)::

    POST /Counter/{id}/increment          -> {"value": n}
    GET  /Counter/{id}                    -> {"value": n}
    POST /_rpc/Counter/{id}/{method}      body {"args": [...], "kwargs": {...}} -> {"result": n}

Prints ``  http: <url>`` once listening (like ``dotdo serve``); stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import apsw
import msgpack
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_GET = "SELECT v FROM kv WHERE k = ?"
_PUT = "INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)"
_KEY = b"value"


class Counters:
    """Open connections by counter id; each file is created on first use."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.conns: dict[str, apsw.Connection] = {}

    def conn(self, counter: str) -> apsw.Connection:
        conn = self.conns.get(counter)
        if conn is None:
            digest = hashlib.sha256(counter.encode("utf-8")).hexdigest()
            conn = apsw.Connection(str(self.data_dir / f"{digest}.sqlite"), statementcachesize=24)
            for _ in conn.execute(
                "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                "PRAGMA cache_size=-256;"
                "CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
            ):
                pass
            self.conns[counter] = conn
        return conn

    def read(self, counter: str) -> int:
        row = self.conn(counter).execute(_GET, (_KEY,)).fetchone()
        return 0 if row is None else int(msgpack.unpackb(row[0]))

    def increment(self, counter: str, by: int = 1) -> int:
        conn = self.conn(counter)
        conn.execute("BEGIN")
        try:
            row = conn.execute(_GET, (_KEY,)).fetchone()
            value = (0 if row is None else msgpack.unpackb(row[0])) + by
            conn.execute(_PUT, (_KEY, msgpack.packb(value)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return value

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def create_app(counters: Counters) -> Starlette:
    async def increment(request: Request) -> Response:
        by = int(request.query_params.get("by", "1"))
        return JSONResponse({"value": counters.increment(request.path_params["id"], by)})

    async def get(request: Request) -> Response:
        return JSONResponse({"value": counters.read(request.path_params["id"])})

    async def rpc(request: Request) -> Response:
        body: dict[str, Any] = json.loads(await request.body() or b"{}")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        counter, method = request.path_params["id"], request.path_params["method"]
        if method == "increment":
            return JSONResponse({"result": counters.increment(counter, *args, **kwargs)})
        if method == "get":
            return JSONResponse({"result": counters.read(counter)})
        return JSONResponse({"error": "MethodNotAllowed"}, status_code=405)

    return Starlette(
        routes=[
            Route("/_rpc/Counter/{id}/{method}", rpc, methods=["POST"]),
            Route("/Counter/{id}/increment", increment, methods=["POST"]),
            Route("/Counter/{id}", get, methods=["GET"]),
        ]
    )


async def _signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def main(host: str, port: int, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    counters = Counters(data_dir)
    config = Config()
    config.bind = [f"{host}:{port}"]
    # The same hypercorn settings as dotdo.server.serve.
    config.accesslog = None
    config.keep_alive_timeout = 5
    config.read_timeout = 30
    config.include_server_header = False
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, create_app(counters), config, shutdown_trigger=_signal))
            for url in binds:
                print(f"  http: {url}", flush=True)
    finally:
        counters.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    trio.run(main, ns.host, ns.port, ns.data)
    sys.exit(0)
