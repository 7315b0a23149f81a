"""Coverage-guided fuzzing of the transport's frame and message decoders with atheris.

Not collected by pytest (the name does not start with ``test_``), and atheris is not a
dependency of dotdo: ``pip install atheris`` first. From the repository root::

    python tests/runtime/fuzz_wire_atheris.py -max_total_time=60

Any libFuzzer flag works (``-runs=``, ``-jobs=``, a corpus directory). Without a corpus
directory (or input to replay), a temporary one is seeded with one valid frame of each kind.

The property is that of ``test_transport_fuzz.py``: any bytes, cut into any chunks and
fed to ``FrameDecoder.feed``, with the frames decoded by ``decode``, raise nothing but
``ProtocolError``; every message decoded round-trips through ``encode``; an error frame
decoded becomes a ``DotdoError``. A failure prints the input and writes it to
``crash-<sha1>``; ``python tests/runtime/fuzz_wire_atheris.py crash-<sha1>`` replays it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from dotdo.runtime.transport import wire, wire_errors
    from dotdo.runtime.core.errors import ProtocolError
    from dotdo.runtime.core.ids import id_from_name
    from dotdo.storage.errors import DotdoError

LIMITS = [0, 1, 16, 4096, wire.DEFAULT_MAX_FRAME, 2**32 - 1]
"""Frame limits the first input byte chooses from."""


def seeds() -> list[bytes]:
    """One valid frame of each kind, after the two bytes ``one_input`` consumes first."""
    target = id_from_name("Shop", "a")
    request = wire.HttpRequest("GET", "/Shop/a", b"q=1", [(b"host", b"h")], b"")
    messages: list[wire.Message] = [
        wire.Hello(1, "token"),
        wire.Welcome(1, 1 << 20, 8),
        wire.Call(1, target, [("echo", b"\x92\x91\x01\x80"), ("me", b"\x92\x90\x80")], 5.0, "chain", ("Shop/a",)),
        wire.Reply(2, b"\x01"),
        wire.Error(3, "MethodNotAllowed", "no", {"method": "x", "allowed": ["a"], "address": ["Shop", target.hex]}),
        wire.Cancel(4),
        wire.Event(target, "echo", b"\x92\x90\x80"),
        wire.Ping(5),
        wire.Pong(6),
        wire.Fetch(7, target, request, 1.5),
    ]
    return [bytes([len(LIMITS) - 2, 0]) + wire.encode(m) for m in messages]


def check(message: wire.Message) -> None:
    """A decoded message round-trips; an error frame becomes a DotdoError."""
    again = wire.decode(wire.encode(message)[wire.HEADER.size :])
    assert wire.encode(again) == wire.encode(message), (message, again)
    if message == message:  # not when a NaN hides in an error's attributes
        assert again == message, (message, again)
    if isinstance(message, wire.Error):
        assert isinstance(wire_errors.error_from_frame(message), DotdoError)


def one_input(data: bytes) -> None:
    """Byte 0 picks the frame limit, byte 1 how to cut the rest into chunks."""
    provider = atheris.FuzzedDataProvider(data)
    max_frame = LIMITS[provider.ConsumeIntInRange(0, len(LIMITS) - 1)]
    step = provider.ConsumeIntInRange(0, 255)
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    decoder = wire.FrameDecoder(max_frame)
    chunks = [stream[i : i + step] for i in range(0, len(stream), step)] if step else [stream]
    try:
        for chunk in chunks:
            for body in decoder.feed(chunk):
                try:
                    check(wire.decode(body))
                except ProtocolError:
                    pass
    except ProtocolError:
        pass
    try:  # the whole stream as one body too: msgpack-ish bodies reach decode directly
        check(wire.decode(stream))
    except ProtocolError:
        pass


def main() -> None:
    argv = list(sys.argv)
    if not [a for a in argv[1:] if not a.startswith("-")]:  # no corpus, no input to replay
        corpus = tempfile.mkdtemp(prefix="dotdo-wire-corpus-")
        for index, seed in enumerate(seeds()):
            Path(corpus, f"seed-{index}").write_bytes(seed)
        argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
