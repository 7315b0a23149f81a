"""The baseline of ``rpc_bench.py --tcp``: a bare trio + msgpack echo server.

Frames shaped like dotdo's (a 4-byte big-endian length, then msgpack): each frame is
decoded, and ``[id, payload]`` is encoded and sent back at once. One task per
connection, no per-message task, no actor, no storage: what the transport's framing
costs on this machine, with nothing above it.

    python benchmarks/bare_echo.py [--host 127.0.0.1] [--port 0]

Prints ``  rpc:  tcp://HOST:PORT`` once listening; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import struct

import msgpack
import trio

HEADER = struct.Struct(">I")


async def echo(stream: trio.SocketStream) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            buffer += data
            out = []
            start = 0
            while len(buffer) - start >= HEADER.size:
                (length,) = HEADER.unpack_from(buffer, start)
                end = start + HEADER.size + length
                if end > len(buffer):
                    break
                message = msgpack.unpackb(bytes(buffer[start + HEADER.size : end]))
                body = msgpack.packb([message[0], message[1]])
                out.append(HEADER.pack(len(body)) + body)
                start = end
            del buffer[:start]
            if out:
                try:
                    await stream.send_all(b"".join(out))
                except trio.BrokenResourceError:
                    return


async def main(host: str, port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    print(f"  rpc:  tcp://{host}:{listeners[0].socket.getsockname()[1]}", flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, listeners)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
