"""Fuzzing the TCP transport (issue 8): the frame decoder, the message decoder, the
client's side of a connection, and the call dispatcher of a live server.

What is fuzzed, and the property each time:

- ``wire.FrameDecoder.feed`` with arbitrary bytes in arbitrary chunks, with small and
  huge frame limits and oversized length prefixes: it cuts the same frames however the
  stream is chunked, refuses an oversized frame as soon as its header is in (with
  ``ProtocolError``) and raises nothing else.
- ``wire.decode`` on random bytes, on arbitrary msgpack, and on near-valid frames (the
  right kind codes with fields of the wrong shapes and types, huge ints, NaN and infinite
  timeouts, bad ids, namespaces, names and method names, bad options...): it raises
  ``ProtocolError`` and nothing else, and whatever it accepts round-trips
  (``decode(encode(m)) == m``); an error frame it accepts becomes a ``DotdoError``.
- A ``Connection`` whose server answers with fuzzed bytes: only ``DotdoError``s.
- A real ``TransportServer`` on 127.0.0.1 (port 0) running in a thread of its own, fed
  fuzzed byte streams on raw sockets before, instead of and after a hello, in one write
  or several. Each stream is first cut and decoded here, so the test knows what the
  server must do: answer every call exactly once (an error frame of the right type for
  unknown kinds, private, lifecycle and system methods such as ``$admin``; the value
  itself for an echo), answer every ping, refuse a bad opening or a bad frame with a
  connection error frame and close. After every stream the server must have ended the
  connection's task, logged no internal error, run no private or lifecycle method, and a
  well-behaved client connected all along still gets correct answers. The actor's own
  errors, with awkward attributes and lone surrogates, must still make error frames.
- The same live server fed fuzzed streams by rude clients: each is reset (SO_LINGER 0)
  at a random byte of its stream, before or after its hello, after floods of pings
  and large calls that it never reads, or after reading its replies a byte at a time.
  The server must end each connection alone: its loop alive, no internal error, the
  long-lived client answered; and its memory must stay bounded (the peak RSS of the
  process is reported at the end).

CI runs a bounded number of examples (the file takes 10 to 15 s). For a longer run, set
``DOTDO_FUZZ_EXAMPLES`` to the number of examples of each decoder test (the tests that
talk to the server get a tenth of it); the per-test time limit is then lifted::

    DOTDO_FUZZ_EXAMPLES=20000 python -m pytest tests/runtime/transport/test_transport_fuzz.py

``tests/runtime/fuzz_wire_atheris.py`` fuzzes the decoder with atheris, when installed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import queue
import socket
import struct
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dotdo import DO
from dotdo.runtime.core import values
from dotdo.runtime.transport import wire, wire_errors
from dotdo.runtime.transport.connection import Connection
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId, id_from_name
from dotdo.runtime.supervisor import Supervisor
from dotdo.runtime.transport.server import MAX_HELLO, TransportOptions, TransportServer
from dotdo.storage.errors import DotdoError, InvalidInput, InvalidValue

LONG = int(os.environ.get("DOTDO_FUZZ_EXAMPLES") or 0)
"""Examples per decoder test in a long run (0: the CI budget)."""

pytestmark = [pytest.mark.timeout(0)] if LONG else []


def budget(ci: int, share: float = 1.0) -> settings:
    """Settings of a fuzz test: ``ci`` examples, or ``share`` of ``DOTDO_FUZZ_EXAMPLES``."""
    examples = max(ci, int(LONG * share)) if LONG else ci
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def frame_of(body: bytes) -> bytes:
    """A frame around an already-packed body."""
    return wire.HEADER.pack(len(body)) + body


def pack(value: Any, bin_type: bool = True) -> bytes:
    """``value`` as msgpack (bytes as ``bin``, or as ``str`` without ``bin_type``)."""
    return msgpack.packb(value, use_bin_type=bin_type)


# -- the fuzzed kind ---------------------------------------------------------------------

AWKWARD: list[Any] = [
    {1, 2}, 2**70, -(2**64), object(), dt.datetime(2024, 1, 1), (1, {2}), Decimal("1.5"), [1, [2, (3,)]],
    "text", "lone \udcff surrogate", ["\ud800"], b"bin", None, 7, ("a", "b"),
]
"""Attribute values an actor's error may hold; msgpack carries only some of them."""
ERROR_ATTRIBUTES = ["public", "message", "expected", "actual", "target", "known", "method", "allowed", "address", "chain", "other"]


class Awkward(InvalidInput):
    """An error raised by an actor's own code, with attributes of any type."""

    def __init__(self, attributes: dict[str, Any]) -> None:
        super().__init__("awkward")
        self.__dict__.update(attributes)


class Fz(DO):
    """Public methods that echo, add, nap, fail, mark and hand out references; private,
    lifecycle, static and non-async names that must never run from outside."""

    forbidden_ran: ClassVar[list[str]] = []
    touched: ClassVar[set[str]] = set()

    async def echo(self, value: Any = None) -> Any:
        return value

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def nap(self, seconds: float) -> float:
        await trio.sleep(min(max(seconds, 0.0), 0.02))
        return seconds

    async def boom(self, code: int = 0x21) -> None:
        raise ValueError(f"boom {chr(code % 0x110000)}")  # a lone surrogate for 0xd800 to 0xdfff

    async def text(self, code: int) -> str:
        return chr(code % 0x110000)

    async def me(self) -> Any:
        return self.S.Fz("pipe")

    async def touch(self, key: str) -> str:
        Fz.touched.add(key)
        return key

    async def fail(self, picks: dict[str, int]) -> None:
        raise Awkward({name: AWKWARD[index % len(AWKWARD)] for name, index in picks.items()})

    async def _secret(self) -> None:
        Fz.forbidden_ran.append("_secret")

    async def fetch(self, request: Any) -> Any:
        Fz.forbidden_ran.append("fetch")

    async def alarm(self) -> None:
        Fz.forbidden_ran.append("alarm")

    def plain(self) -> None:
        Fz.forbidden_ran.append("plain")

    @staticmethod
    async def static() -> None:
        Fz.forbidden_ran.append("static")

    @classmethod
    async def klass(cls) -> None:
        Fz.forbidden_ran.append("klass")


PUBLIC = frozenset({"echo", "add", "nap", "boom", "me", "touch", "fail", "text"})
FORBIDDEN = [
    "_secret", "__init__", "__class__", "__dotdo_kind__", "_dotdo_create", "fetch", "alarm", "on_start",
    "plain", "static", "klass", "set_alarm", "get_alarm", "delete_alarm", "namespace", "storage", "sql",
    "S", "id", "$admin", "$event", "$subscribe", "$", "", "_",
]
TOKEN = "s3cret"
GUARDED_MAX_FRAME = 4096
ANSWER_ERRORS = frozenset({
    "ActorNotFound", "MethodNotAllowed", "InvalidValue", "InvalidArguments", "InvalidId", "InvalidNamespace",
    "ActorError", "CallTimeout", "DotdoError", "Overloaded", "InvalidInput",
})
"""Error types a call may be answered with here (a plain DotdoError: a pipeline step
that returned no reference)."""


# -- strategies: valid messages --------------------------------------------------------

request_ids = st.one_of(st.integers(0, wire.MAX_REQUEST_ID), st.sampled_from([0, 1, 2**31, 2**32, wire.MAX_REQUEST_ID]))
names = st.one_of(st.sampled_from(["a", "b", "pipe", "é", "a/b"]), st.text(min_size=1, max_size=12))
namespaces = st.one_of(
    st.just("Fz"),
    st.sampled_from(["Nobody", "fz", "FZ", "Fz_", "Shop"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True),
)


@st.composite
def targets(draw: st.DrawFn, namespace: st.SearchStrategy[str] = namespaces) -> ActorId:
    """A target that decodes: an id of its namespace, with its name or none."""
    named = id_from_name(draw(namespace), draw(names))
    return named if draw(st.booleans()) else ActorId(named.namespace, named.hex)


methods = st.one_of(
    st.sampled_from(sorted(PUBLIC)),
    st.sampled_from(FORBIDDEN),
    st.text(max_size=12),
    st.text(max_size=8).map(lambda s: "_" + s),
    st.text(max_size=8).map(lambda s: "$" + s),
)
echo_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10)
    | st.binary(max_size=10) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    | st.builds(msgpack.Timestamp, st.integers(-(2**33), 2**34 - 1), st.integers(0, 999_999_999)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
"""Anything msgpack can carry, maps keyed by text."""
refs = st.builds(
    lambda ns, hex_id, name: msgpack.ExtType(values.REF_EXT, pack([ns, hex_id, name])),
    st.sampled_from(["Fz", "Nobody", "1x"]),
    st.one_of(st.just(id_from_name("Fz", "a").hex), st.just(id_from_name("Nobody", "a").hex), st.text(max_size=64)),
    st.one_of(st.none(), names, st.integers(0, 9)),
)
argument_lists = st.lists(st.one_of(msgpack_values, refs, st.dictionaries(st.integers(-(2**63), 2**63 - 1), msgpack_values, max_size=2)), max_size=3)
KEYWORDS: list[Any] = ["value", "a", "b", "seconds", "key", "self", "x", 1, b"value"]
"""Keyword names, non-text ones included (they must be refused as invalid arguments)."""
keyword_maps = st.dictionaries(st.sampled_from(KEYWORDS), msgpack_values, max_size=3)
arguments = st.one_of(
    st.tuples(argument_lists, keyword_maps).map(lambda a: pack(list(a))),
    st.builds(lambda a, b: pack([[a, b], {}]), st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)),
)
"""Arguments as a client packs them: ``[positional, keywords]``."""
characters = st.one_of(st.integers(0xD800, 0xDFFF), st.integers(0, 0x10FFFF)).map(lambda c: pack([[c], {}]))
awkward_picks = st.dictionaries(st.sampled_from(ERROR_ATTRIBUTES), st.integers(0, len(AWKWARD) - 1), max_size=4).map(lambda p: pack([[p], {}]))
payloads = st.one_of(
    arguments,
    msgpack_values.map(pack),
    st.sampled_from([b"", b"\x92\x90\x80", b"\xc1", b"\x92\x90"]),
    st.binary(max_size=20),
)


@st.composite
def options(draw: st.DrawFn) -> tuple[float | None, str | None, tuple[str, ...]]:
    """A call's timeout, chain and path, as a client may send them."""
    timeout = draw(st.one_of(st.none(), st.sampled_from([1e-9, 5.0, 30.0, 1e300]), st.floats(5, 1e6)))
    chain = draw(st.one_of(st.none(), st.none(), st.text(max_size=128)))
    path = tuple(draw(st.lists(st.text(max_size=40), max_size=3)))
    return timeout, chain, path


@dataclass(frozen=True)
class Sent:
    """A request the session sends, with what its answer must be when it is known."""

    message: wire.Message
    echo: tuple[Any, ...] = ()  # (value,) when the answer must be a reply of value


@st.composite
def calls(draw: st.DrawFn, request: int) -> Sent:
    """A call that decodes: random target, steps and options; sometimes an exact echo."""
    target = draw(targets())
    timeout, chain, path = draw(options())
    if draw(st.integers(0, 3)) == 0:
        value = draw(echo_values)
        steps = [("echo", pack([[value], {}]))]
        exact = target.namespace == "Fz" and (timeout is None or timeout >= 5)
        return Sent(wire.Call(request, target, steps, timeout, chain, path), (value,) if exact else ())
    aimed = st.tuples(st.sampled_from(sorted(PUBLIC)), arguments)  # past the method check, to the binder
    failing = st.one_of(  # answers that are awkward to encode
        st.tuples(st.just("fail"), awkward_picks),
        st.tuples(st.sampled_from(["boom", "text"]), characters),
    )
    steps = draw(st.lists(st.one_of(aimed, failing, st.tuples(methods, payloads)), min_size=1, max_size=3))
    if draw(st.booleans()):
        steps = [("me", b"\x92\x90\x80"), *steps]  # a pipeline through a reference
    return Sent(wire.Call(request, target, steps[: wire.MAX_STEPS], timeout, chain, path))


http_requests = st.builds(
    wire.HttpRequest,
    st.sampled_from(["GET", "POST", "DELETE", "", "x" * 16]),
    st.text(max_size=20).map(lambda p: "/" + p),
    st.binary(max_size=20),
    st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=3),
    st.binary(max_size=40),
)


def client_frames(request: int) -> st.SearchStrategy[Sent]:
    """One frame a client may send (it decodes), for request id ``request``."""
    return st.one_of(
        calls(request),
        calls(request),
        calls(request),
        st.builds(wire.Event, targets(), methods, payloads).map(Sent),
        st.just(Sent(wire.Ping(request))),
        st.builds(lambda t, r, s: Sent(wire.Fetch(request, t, r, s)), targets(), http_requests, st.one_of(st.none(), st.just(5.0))),
    )


# -- strategies: near-valid frames ----------------------------------------------------

mutants = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1.5, math.nan, math.inf, -math.inf, -0.0, 5e-324, "", b"", [], {}]),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.dictionaries(st.integers(-(2**63), 2**63 - 1), st.none(), min_size=1, max_size=2),  # a map keyed by ints
    msgpack_values,
)
"""Values a field should not hold (and some it may)."""


def slot(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: right twice as often as wrong."""
    return st.one_of(good, good, mutants)


@st.composite
def raw_targets(draw: st.DrawFn) -> Any:
    """A target array, right or wrong in one of the ways a peer may get it wrong."""
    good = draw(targets())
    other = id_from_name("Other", "a").hex
    namespace, hex_id, name = good.namespace, good.hex, good.name
    choice = draw(st.integers(0, 9))
    if choice == 0:
        hex_id = other  # an id of another namespace
    elif choice == 1:
        hex_id = hex_id.upper()
    elif choice == 2:
        hex_id = hex_id[: draw(st.integers(0, 63))]
    elif choice == 3:
        namespace = draw(st.sampled_from(["", "1x", "é", "a b", "x" * 65, "Fz\x00"]))
    elif choice == 4:
        name = draw(st.one_of(mutants, st.text(max_size=20), st.just("n" * 600)))
    elif choice == 5:
        return draw(st.lists(slot(st.text(max_size=8)), max_size=4))
    return [namespace, hex_id, name]


raw_steps = st.one_of(
    st.lists(slot(st.tuples(slot(methods), slot(payloads)).map(list)), max_size=4),
    st.integers(wire.MAX_STEPS - 1, wire.MAX_STEPS + 1).map(lambda n: [["echo", b"\x92\x90\x80"]] * n),
    st.just([["m" * 257, b""]]),
)
timeouts = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, True, False, "5", 5e-324, 2**64 - 1, 1e308]),
    st.floats(),
    st.integers(-(2**63), 2**64 - 1),
)
raw_options = st.fixed_dictionaries(
    {},
    optional={
        "timeout": slot(timeouts),
        "chain": slot(st.one_of(st.text(max_size=10), st.just("c" * 129))),
        "path": slot(st.one_of(st.lists(st.text(max_size=10), max_size=3), st.just(["p"] * 1025), st.just(["p" * 513]))),
        "extra": mutants,
    },
)
raw_http = st.fixed_dictionaries(
    {},
    optional={
        "method": slot(st.sampled_from(["GET", "x" * 17])),
        "path": slot(st.sampled_from(["/", "/Fz/a", "Fz/a", ""])),
        "query": slot(st.binary(max_size=5)),
        "headers": slot(st.one_of(st.lists(st.lists(slot(st.binary(max_size=4)), max_size=3), max_size=3), st.just([[b"a", b"b"]] * 257))),
        "body": slot(st.binary(max_size=5)),
    },
)


def array(kind: int, *fields: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A frame's array: the kind, then each field drawn right or wrong."""
    return st.tuples(*(slot(f) for f in fields)).map(lambda values_: [kind, *values_])


near_valid_arrays = st.one_of(
    array(wire.HELLO, st.fixed_dictionaries({"version": slot(st.integers(0, 2)), "token": slot(st.none() | st.text(max_size=10))})),
    array(wire.WELCOME, st.fixed_dictionaries({k: slot(st.integers(-(2**63), 2**64 - 1)) for k in ("version", "max_frame", "max_inflight")})),
    array(wire.CALL, request_ids, raw_targets(), raw_steps, raw_options),
    array(wire.REPLY, request_ids, st.binary(max_size=10)),
    array(
        wire.ERROR,
        st.none() | request_ids,
        st.fixed_dictionaries(
            {"type": slot(st.sampled_from(["ProtocolError", "ActorError", "Nope", "x" * 129])), "message": slot(st.text(max_size=10))},
            optional={"attrs": slot(st.dictionaries(st.sampled_from(["address", "known", "method", "message", "chain", "other"]), mutants))},
        ),
    ),
    array(wire.CANCEL, request_ids),
    array(wire.EVENT, raw_targets(), methods, payloads),
    array(wire.PING, request_ids),
    array(wire.PONG, request_ids),
    array(wire.FETCH, request_ids, raw_targets(), raw_http, raw_options),
)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> bytes:
    """A frame body close to a valid one: right kind (mostly), wrong shapes and types."""
    raw = draw(near_valid_arrays)
    change = draw(st.integers(0, 9))
    if change == 0 and len(raw) > 1:
        raw = raw[:-1]  # a field missing
    elif change == 1:
        raw = [*raw, draw(mutants)]  # a field too many
    elif change == 2:
        raw[0] = draw(st.one_of(mutants, st.integers(-1, 12)))  # another kind code
    elif change == 3:
        raw = {"kind": raw[0]}  # not an array
    return pack(raw, bin_type=draw(st.integers(0, 4)) > 0)


garbage = st.one_of(
    st.binary(max_size=40),
    near_valid_bodies().map(frame_of),
    near_valid_bodies().map(lambda b: frame_of(b)[: max(1, len(b) // 2)]),  # cut short
    st.builds(lambda n, tail: struct.pack(">I", n) + tail, st.integers(GUARDED_MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=8)),
    st.builds(lambda n: struct.pack(">I", n), st.integers(wire.DEFAULT_MAX_FRAME + 1, 2**32 - 1)),
    st.sampled_from([b"\x92\x08\xd4\xff\x00", b"\x92\x08\xc7\x05\xff" + b"\xff" * 5]).map(frame_of),  # bad timestamps
    st.builds(lambda depth: frame_of(b"\x91" * depth), st.integers(500, 5000)),  # nested deeper than msgpack goes
    st.sampled_from([wire.encode(wire.Reply(1, b"")), wire.encode(wire.Pong(1)), wire.encode(wire.Hello(1, None)),
                     wire.encode(wire.Welcome(1, 1, 1)), wire.encode(wire.Error(None, "x", "y"))]),
)
"""Bytes that are not (or may not be) a frame a client may send."""


# -- the oracle: what the server sees -----------------------------------------------


@dataclass
class Prediction:
    """What the server makes of a byte stream sent after its welcome.

    Attributes:
        accepted: The messages it takes, in order, before any problem.
        ends: "clean" (whole frames, all fine), "partial" (a frame cut short at the end)
            or "error" (a frame the server must refuse: it answers a connection error).
        exact: Whether request ids are unique, so that every answer can be checked.
    """

    accepted: list[wire.Message]
    ends: str
    exact: bool


CLIENT_KINDS = (wire.Call, wire.Fetch, wire.Cancel, wire.Event, wire.Ping)


def cut(data: bytes, max_frame: int) -> tuple[list[bytes], str]:
    """The frame bodies in ``data`` and how it ends: "clean", "partial" or "oversize"."""
    bodies: list[bytes] = []
    start = 0
    while len(data) - start >= wire.HEADER.size:
        (length,) = wire.HEADER.unpack_from(data, start)
        if length > max_frame:
            return bodies, "oversize"
        end = start + wire.HEADER.size + length
        if end > len(data):
            return bodies, "partial"
        bodies.append(data[start + wire.HEADER.size : end])
        start = end
    return bodies, "clean" if start == len(data) else "partial"


def predict(data: bytes, max_frame: int) -> Prediction:
    """What the server makes of ``data`` (see ``Prediction``)."""
    bodies, ending = cut(data, max_frame)
    accepted: list[wire.Message] = []
    requests: Counter[int] = Counter()
    for body in bodies:
        try:
            message = wire.decode(body)
        except ProtocolError:
            return Prediction(accepted, "error", max(requests.values(), default=0) <= 1)
        if not isinstance(message, CLIENT_KINDS):
            return Prediction(accepted, "error", max(requests.values(), default=0) <= 1)
        if isinstance(message, wire.Call | wire.Fetch):
            requests[message.id] += 1
        accepted.append(message)
    exact = max(requests.values(), default=0) <= 1
    return Prediction(accepted, {"clean": "clean", "partial": "partial", "oversize": "error"}[ending], exact)


def check_answer(sent: wire.Message, answer: wire.Reply | wire.Error, echo: tuple[Any, ...], fetches: bool) -> None:
    """``answer`` is what the protocol promises for ``sent``."""
    if isinstance(sent, wire.Fetch):
        if fetches:
            assert isinstance(answer, wire.Reply) and values.unpack(answer.result) == [200, [], sent.request.body]
        else:
            assert isinstance(answer, wire.Error) and answer.type == "MethodNotAllowed", answer
        return
    assert isinstance(sent, wire.Call)
    first = sent.steps[0][0]
    if isinstance(answer, wire.Error):
        assert answer.type in ANSWER_ERRORS and not answer.message.startswith("internal error"), answer
        if sent.target.namespace != "Fz":
            assert answer.type == "ActorNotFound", answer
        elif first not in PUBLIC:
            assert answer.type == "MethodNotAllowed" and answer.attrs.get("method") == first[:100], answer
    else:
        assert sent.target.namespace == "Fz" and all(m in PUBLIC for m, _ in sent.steps), (sent, answer)
    if echo:
        assert isinstance(answer, wire.Reply), answer
        assert values.unpack(answer.result) == echo[0]


# -- the live server ---------------------------------------------------------------------


async def _fetch(target: ActorId, request: wire.HttpRequest, timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The open server's fetch handler: echoes the body."""
    return 200, [], request.body


@dataclass
class LiveServer:
    """A supervisor with two transport servers in a trio loop of their own thread: "open"
    (no token, the default frame limit, fetch frames taken) and "guarded" (a token, a
    4 KiB frame limit, 4 calls in flight, no fetch). ``client`` is a well-behaved
    connection to the open one, kept all along."""

    token: trio.lowlevel.TrioToken
    stop: trio.CancelScope
    servers: dict[str, TransportServer]
    ports: dict[str, int]
    client: Connection
    thread: threading.Thread
    crashed: list[BaseException]
    internal: list[logging.LogRecord]
    tally: Counter[str] = field(default_factory=Counter)
    checks: Iterator[int] = field(default_factory=itertools.count)
    rss_start: int = field(default_factory=lambda: rss_kib("VmRSS"))

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the async ``fn`` in the server's loop and return its result."""
        self.check_alive()
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def check_alive(self) -> None:
        """Fail if the server's loop ended: a crash, chained here (once it has crashed,
        every later example fails too, so the example shown may not be the culprit)."""
        if self.crashed or not self.thread.is_alive():
            raise AssertionError("the server's loop ended: the transport server crashed") from (self.crashed[0] if self.crashed else None)

    def connections(self) -> int:
        """Connections served right now, the long-lived client's included."""
        self.check_alive()
        return trio.from_thread.run_sync(lambda: sum(s.connections for s in self.servers.values()), trio_token=self.token)

    def settle(self) -> None:
        """Check the server after a fuzzed connection closed: every connection task but
        the long-lived client's has ended, nothing was logged as an internal error, no
        private or lifecycle method ran, and the long-lived client is answered."""
        limit = time.monotonic() + 10
        while self.connections() > 1:
            assert time.monotonic() < limit, "a connection's task is still there 10 s after its socket closed"
            time.sleep(0.002)
        logged, self.internal[:] = list(self.internal), []
        assert not logged, [(r.getMessage(), r.exc_info) for r in logged]
        ran, Fz.forbidden_ran[:] = list(Fz.forbidden_ran), []
        assert not ran, f"methods that may not be called from outside ran: {ran}"
        n = next(self.checks)
        assert self.run(_health, self.client, n) == {"n": n}


async def _health(client: Connection, n: int) -> Any:
    """A call of the long-lived client (in the server's loop)."""
    with trio.fail_after(10):
        return await client.S.Fz("health").echo({"n": n})


class _Internal(logging.Handler):
    """Keeps the errors logged by dotdo: each is an internal error."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


async def _serve(data_dir: Path, ready: queue.Queue[Any]) -> None:
    """The server thread's loop: serve until the test's side cancels ``stop``."""
    with trio.CancelScope() as stop:
        async with Supervisor([Fz], data_dir) as sup, trio.open_nursery() as nursery:
            servers = {
                "open": TransportServer(sup, TransportOptions(), _fetch),
                "guarded": TransportServer(sup, TransportOptions(token=TOKEN, max_frame=GUARDED_MAX_FRAME, max_inflight=4)),
            }
            ports = {}
            for label, server in servers.items():
                listeners = await nursery.start(server.serve, "127.0.0.1", 0)
                ports[label] = listeners[0].socket.getsockname()[1]
            client = await Connection.open("127.0.0.1", ports["open"])
            try:
                ready.put((trio.lowlevel.current_trio_token(), stop, servers, ports, client))
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The live server, shared by the tests of this module."""
    ready: queue.Queue[Any] = queue.Queue()
    crashed: list[BaseException] = []

    def main() -> None:
        try:
            trio.run(_serve, tmp_path_factory.mktemp("fuzz"), ready)
        except BaseException as exc:  # reported by the test that notices
            crashed.append(exc)
            ready.put(None)

    internal: list[logging.LogRecord] = []
    handler = _Internal(internal)
    logging.getLogger("dotdo").addHandler(handler)
    thread = threading.Thread(target=main, name="fuzzed-server", daemon=True)
    thread.start()
    started = ready.get(timeout=30)
    if started is None:
        raise AssertionError("the server did not start") from crashed[0]
    token, stop, servers, ports, client = started
    server = LiveServer(token, stop, servers, ports, client, thread, crashed, internal)
    try:
        yield server
    finally:
        if server.tally:
            print("\nframes sent to the live server, by kind:", dict(sorted(server.tally.items())))
            print(
                f"memory of the process serving them: {server.rss_start / 1024:.0f} MiB at the start, "
                f"{rss_kib('VmRSS') / 1024:.0f} MiB at the end, {rss_kib('VmHWM') / 1024:.0f} MiB at the peak"
            )
        if thread.is_alive():
            trio.from_thread.run_sync(stop.cancel, trio_token=token)
        thread.join(30)
        logging.getLogger("dotdo").removeHandler(handler)
    assert not crashed, crashed


@pytest.fixture(autouse=True)
def _no_leftovers() -> None:
    """Each test starts with no private method recorded as run."""
    Fz.forbidden_ran.clear()


def rss_kib(field_name: str) -> int:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/self/status")


# -- raw connections -------------------------------------------------------------------


@dataclass
class Transcript:
    """What the server sent on one connection, and whether it closed it."""

    frames: list[wire.Message]
    closed: bool


READ_LIMIT = 10.0
"""Seconds a raw connection waits for the server's next bytes before the test fails:
the server neither answered nor closed."""


def open_raw(port: int, token: str | None) -> socket.socket:
    """A raw socket past the handshake (the welcome checked)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_LIMIT)
    try:
        sock.sendall(wire.encode(wire.Hello(wire.VERSION, token)))
        transcript = read(sock, wire.FrameDecoder(), lambda frames: len(frames) == 1)
        assert len(transcript.frames) == 1 and isinstance(transcript.frames[0], wire.Welcome), transcript
    except BaseException:
        sock.close()
        raise
    return sock


def send(sock: socket.socket, chunks: list[bytes], pause: bool) -> None:
    """Send ``chunks`` (with a short pause between them when ``pause``); a server that
    closed the connection first is fine: what it sent is checked by the caller."""
    try:
        for index, chunk in enumerate(chunks):
            if pause and index:
                time.sleep(0.001)
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read(sock: socket.socket, decoder: wire.FrameDecoder, done: Callable[[list[wire.Message]], bool] | None) -> Transcript:
    """Read frames until ``done(frames)`` or the server closes; everything the server
    sends must be frames that decode."""
    frames: list[wire.Message] = []
    while done is None or not done(frames):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return Transcript(frames, True)
        except TimeoutError:
            raise AssertionError(f"the server neither answered nor closed within {READ_LIMIT:g} s; got {frames}") from None
        if not data:
            return Transcript(frames, True)
        frames.extend(wire.decode(body) for body in decoder.feed(data))
    return Transcript(frames, False)


def half_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# -- decoder properties -------------------------------------------------------------


def decode_or_refuse(body: bytes) -> wire.Message | None:
    """``wire.decode(body)``, or None when it raises ProtocolError (anything else
    fails the test); what it accepts must round-trip."""
    try:
        message = wire.decode(body)
    except ProtocolError:
        return None
    again = wire.decode(wire.encode(message)[wire.HEADER.size :])
    assert wire.encode(again) == wire.encode(message)
    if message == message:  # not when a NaN hides in an error's attributes
        assert again == message
    if isinstance(message, wire.Error):
        assert isinstance(wire_errors.error_from_frame(message), DotdoError)
    return message


frame_limits = st.sampled_from([0, 1, 5, 64, 4096, wire.DEFAULT_MAX_FRAME, 2**32 - 1])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the positions ``cuts`` (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@budget(ci=600)
@given(
    st.lists(st.one_of(st.binary(max_size=30), near_valid_bodies().map(frame_of), garbage), max_size=5).map(b"".join),
    st.lists(st.integers(0, 10**6), max_size=12),
    frame_limits,
)
def test_the_frame_decoder_cuts_the_same_frames_however_the_stream_is_chunked(data: bytes, cuts: list[int], max_frame: int) -> None:
    bodies, ending = cut(data, max_frame)
    decoder = wire.FrameDecoder(max_frame)
    got: list[bytes] = []
    received = 0
    try:
        for chunk in chunked(data, cuts):
            received += len(chunk)
            got += decoder.feed(chunk)
    except ProtocolError as exc:
        assert ending == "oversize" and "over the limit" in str(exc)
        assert got == bodies[: len(got)]
        # refused as soon as the oversized header was in: not one chunk later
        consumed = sum(wire.HEADER.size + len(b) for b in bodies)
        assert consumed + wire.HEADER.size <= received < consumed + wire.HEADER.size + len(chunk)
        return
    assert ending != "oversize" and got == bodies
    assert decoder.pending == len(data) - sum(wire.HEADER.size + len(b) for b in bodies)
    for body in got:
        decode_or_refuse(body)


@budget(ci=300)
@given(
    st.lists(st.binary(max_size=20), max_size=3),
    st.integers(1, 2**32 - 1),
    st.binary(max_size=10),
    st.lists(st.integers(0, 10**6), max_size=6),
)
def test_an_oversized_length_prefix_is_refused_before_its_body(frames: list[bytes], length: int, tail: bytes, cuts: list[int]) -> None:
    max_frame = length - 1
    prefix = b"".join(frame_of(f) for f in frames if len(f) <= max_frame)
    data = prefix + struct.pack(">I", length) + tail
    decoder = wire.FrameDecoder(max_frame)
    fed = 0
    with pytest.raises(ProtocolError, match="over the limit"):
        for chunk in chunked(data, cuts):
            fed += len(chunk)
            decoder.feed(chunk)
    header_end = len(prefix) + wire.HEADER.size
    assert fed - len(chunk) < header_end <= fed  # by the chunk that completed the header


@budget(ci=800)
@given(st.binary(max_size=200))
def test_random_bodies_only_ever_give_protocol_errors(body: bytes) -> None:
    decode_or_refuse(body)


@budget(ci=1000)
@given(near_valid_bodies())
def test_near_valid_frames_only_ever_give_protocol_errors(body: bytes) -> None:
    decode_or_refuse(body)


@budget(ci=150)
@given(st.integers(0, 20).flatmap(lambda n: st.lists(client_frames(n), min_size=1, max_size=3)), st.lists(st.integers(0, 10**6), max_size=8))
def test_valid_client_frames_round_trip_through_any_chunking(sent: list[Sent], cuts: list[int]) -> None:
    data = b"".join(wire.encode(s.message) for s in sent)
    decoder = wire.FrameDecoder()
    bodies = [body for chunk in chunked(data, cuts) for body in decoder.feed(chunk)]
    assert [wire.decode(b) for b in bodies] == [s.message for s in sent]


@budget(ci=300)
@given(st.one_of(st.binary(max_size=60), garbage, near_valid_bodies().map(frame_of)), st.booleans())
async def test_a_client_meets_only_dotdo_errors_from_a_fuzzed_server(answer: bytes, welcome_first: bool) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()

    async def server() -> None:
        await server_side.receive_some(65536)  # the hello
        if welcome_first:
            await server_side.send_all(wire.encode(wire.Welcome(1, 1 << 20, 8)))
            await server_side.receive_some(65536)  # the call
        await server_side.send_all(answer)
        await server_side.send_eof()

    async def connect() -> trio.abc.Stream:
        return client_side

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with trio.fail_after(10):
            try:
                connection = await Connection._open(connect, "fuzzed", None, 8, 10)
                async with connection.S as S:
                    await S.Fz("a").echo(1)
            except DotdoError:
                pass


# -- the live server ---------------------------------------------------------------------


@dataclass
class Session:
    """Bytes a client sends after its welcome, in chunks, and the requests among them."""

    chunks: list[bytes]
    sent: list[Sent]


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    """Client frames that decode (calls, events, pings, fetches, cancels of earlier calls)
    with unique request ids; in half of them, garbage somewhere (perhaps cut short)."""
    count = draw(st.integers(0, 6))
    ids = draw(st.lists(request_ids, min_size=count, max_size=count, unique=True))
    sent: list[Sent] = []
    for request in ids:
        sent.append(draw(client_frames(request)))
        calls_so_far = [s.message.id for s in sent if isinstance(s.message, wire.Call)]
        if calls_so_far and draw(st.integers(0, 5)) == 0:
            sent.append(Sent(wire.Cancel(draw(st.sampled_from(calls_so_far)))))
    chunks = [wire.encode(s.message) for s in sent]
    if draw(st.booleans()):
        chunks.insert(draw(st.integers(0, len(chunks))), draw(garbage))
    return Session(chunks, sent)


def expectations(accepted: list[wire.Message]) -> tuple[dict[int, wire.Message], set[int], Counter[int]]:
    """From the messages the server takes: requests by id, the ids whose answer is owed
    (not cancelled), and the pings owed by id."""
    requests: dict[int, wire.Message] = {}
    owed: set[int] = set()
    pings: Counter[int] = Counter()
    for message in accepted:
        if isinstance(message, wire.Call | wire.Fetch):
            requests[message.id] = message
            owed.add(message.id)
        elif isinstance(message, wire.Cancel):
            owed.discard(message.id)
        elif isinstance(message, wire.Ping):
            pings[message.id] += 1
    return requests, owed, pings


def all_answered(owed: set[int], pings: Counter[int]) -> Callable[[list[wire.Message]], bool]:
    def done(frames: list[wire.Message]) -> bool:
        answered = {f.id for f in frames if isinstance(f, wire.Reply | wire.Error)}
        ponged = Counter(f.id for f in frames if isinstance(f, wire.Pong))
        return owed <= answered and all(ponged[i] >= n for i, n in pings.items())

    return done


def tally_session(live: LiveServer, session: Session, garbage_included: bool) -> None:
    for s in session.sent:
        live.tally[type(s.message).__name__.lower()] += 1
    if garbage_included:
        live.tally["garbage"] += 1


@budget(ci=150, share=0.1)
@given(sessions(), st.sampled_from(["open", "guarded"]), st.booleans())
def test_fuzzed_streams_after_a_hello_get_what_the_protocol_promises(live: LiveServer, session: Session, server: str, pause: bool) -> None:
    max_frame = GUARDED_MAX_FRAME if server == "guarded" else wire.DEFAULT_MAX_FRAME
    data = b"".join(session.chunks)
    prediction = predict(data, max_frame)
    tally_session(live, session, len(session.chunks) > len(session.sent))
    echoes = {s.message.id: s.echo for s in session.sent if isinstance(s.message, wire.Call)}
    requests, owed, pings = expectations(prediction.accepted)
    strict = prediction.ends == "clean" and prediction.exact
    final_ping = wire.Ping(wire.MAX_REQUEST_ID)
    if strict:
        pings[final_ping.id] += 1
    with open_raw(live.ports[server], TOKEN if server == "guarded" else None) as sock:
        send(sock, session.chunks + ([wire.encode(final_ping)] if strict else []), pause)
        if not strict:
            half_close(sock)
        transcript = read(sock, wire.FrameDecoder(), all_answered(owed, pings) if strict else None)
    answers = Counter(f.id for f in transcript.frames if isinstance(f, wire.Reply | wire.Error))
    for frame in transcript.frames:
        if isinstance(frame, wire.Error) and frame.id is None:
            assert frame is transcript.frames[-1] and transcript.closed, transcript
            assert frame.type == "ProtocolError", frame
            assert prediction.ends == "error" or not prediction.exact, (prediction, frame)  # a reused id may be in flight
            continue
        assert isinstance(frame, wire.Reply | wire.Error | wire.Pong), frame
        if isinstance(frame, wire.Pong):
            assert frame.id in pings, frame
            continue
        assert frame.id in requests, f"an answer to request {frame.id}, which was never sent"
        if prediction.exact:
            assert answers[frame.id] == 1, f"request {frame.id} answered {answers[frame.id]} times"
            check_answer(requests[frame.id], frame, echoes.get(frame.id, ()) if frame.id in owed else (), server == "open")
    if prediction.ends == "error":
        assert transcript.closed and transcript.frames, "a stream the server must refuse got no connection error"
        last = transcript.frames[-1]
        assert isinstance(last, wire.Error) and last.id is None, transcript
    live.settle()


@st.composite
def openings(draw: st.DrawFn) -> bytes:
    """What a client sends first: hellos right or wrong, other frames, garbage, a hello
    with frames glued after it (a call that must not run: ``touch`` of a fresh key)."""
    first = draw(
        st.one_of(
            st.builds(lambda v, t: wire.encode(wire.Hello(v, t)), st.sampled_from([0, 1, 1, 2, 2**63]), st.sampled_from([None, TOKEN, "wrong", ""]) | st.text(max_size=8)),
            near_valid_bodies().map(frame_of),
            garbage,
            client_frames(1).map(lambda s: wire.encode(s.message)),
        )
    )
    glued = draw(st.one_of(st.just(b""), garbage, client_frames(2).map(lambda s: wire.encode(s.message))))
    return first + glued


def touch_call(key: str) -> bytes:
    return wire.encode(wire.Call(7, id_from_name("Fz", "t"), [("touch", pack([[key], {}]))]))


def refused(frames: list[wire.Message]) -> bool:
    """Whether the server sent a connection error."""
    return any(isinstance(f, wire.Error) and f.id is None for f in frames)


@budget(ci=150, share=0.1)
# A hello and an oversized header in one write: the limit is what the server sees first.
@example(opening=wire.encode(wire.Hello(1, None)) + struct.pack(">I", wire.DEFAULT_MAX_FRAME + 1), server="open", pause=False, touch=False)
@example(opening=struct.pack(">I", MAX_HELLO + 1), server="open", pause=False, touch=False)
@example(opening=wire.encode(wire.Hello(1, None)) + struct.pack(">I", 65536), server="guarded", pause=False, touch=False)
@given(openings(), st.sampled_from(["open", "guarded"]), st.booleans(), st.booleans())
def test_fuzzed_openings_are_refused_with_a_connection_error_or_welcomed(
    live: LiveServer, opening: bytes, server: str, pause: bool, touch: bool
) -> None:
    max_frame = GUARDED_MAX_FRAME if server == "guarded" else wire.DEFAULT_MAX_FRAME
    key = f"\x00opening{next(live.checks)}"
    data = opening + (touch_call(key) if touch else b"")
    # Until its welcome, a connection may send no frame larger than a hello.
    bodies, ending = cut(data, min(MAX_HELLO, max_frame))
    hello = decode_or_refuse(bodies[0]) if bodies else None
    good_hello = isinstance(hello, wire.Hello) and hello.version == wire.VERSION
    authorized = good_hello and (server == "open" or hello.token == TOKEN)  # type: ignore[union-attr]
    # Welcomed, the frames after the hello must then be served: a ping at the end, and
    # reading until every call among them is answered, shows that none was dropped.
    tail = predict(data[wire.HEADER.size + len(bodies[0]) :], max_frame) if bodies else None
    strict = authorized and tail is not None and tail.ends == "clean" and tail.exact
    _, owed, pings = expectations(tail.accepted if strict and tail else [])
    if strict:
        pings[wire.MAX_REQUEST_ID] += 1
        data += wire.encode(wire.Ping(wire.MAX_REQUEST_ID))
    live.tally["opening"] += 1
    decoder = wire.FrameDecoder()
    with socket.create_connection(("127.0.0.1", live.ports[server]), timeout=READ_LIMIT) as sock:
        send(sock, chunked(data, [wire.HEADER.size, len(data) // 2]) if pause else [data], pause)
        frames: list[wire.Message] = []
        if strict:
            answered = all_answered(owed, pings)
            frames += read(sock, decoder, lambda frames: refused(frames) or answered(frames)).frames
        half_close(sock)
        frames += read(sock, decoder, None).frames
    welcomed = bool(frames) and isinstance(frames[0], wire.Welcome)
    connection_errors = [(f.id, f.type) for f in frames if isinstance(f, wire.Error) and f.id is None]
    # An oversized frame header read along with the hello is refused before the hello.
    refusal = frames[0] if len(frames) == 1 and isinstance(frames[0], wire.Error) and frames[0].id is None else None
    over_limit = ending == "oversize" and refusal is not None and refusal.type == "ProtocolError" and "over the limit" in refusal.message
    if not bodies:
        expected = [(None, "ProtocolError")] if ending == "oversize" else []
        assert connection_errors == expected and len(frames) == len(expected), (ending, frames)
    elif not good_hello:
        assert connection_errors == [(None, "ProtocolError")] and len(frames) == 1, frames
    elif not authorized:
        assert over_limit or (connection_errors == [(None, "Unauthorized")] and len(frames) == 1), frames
    elif len(data) > wire.HEADER.size + len(bodies[0]) and not welcomed:
        # frames glued to the hello, seen with it: refused, not dropped
        assert connection_errors == [(None, "ProtocolError")] and len(frames) == 1, frames
        assert refusal is not None and (over_limit or "before the welcome" in refusal.message), frames
    else:
        assert welcomed, frames
    live.settle()
    if not welcomed:
        assert key not in Fz.touched, "a call sent before the welcome ran on a refused connection"


def test_frames_glued_to_the_hello_are_refused_not_dropped(live: LiveServer) -> None:
    """A hello and a call in one write: the server used to welcome the connection and
    silently drop the call (its answer never came); the protocol makes it an error."""
    with socket.create_connection(("127.0.0.1", live.ports["open"]), timeout=READ_LIMIT) as sock:
        sock.sendall(wire.encode(wire.Hello(wire.VERSION, None)) + touch_call("glued"))
        transcript = read(sock, wire.FrameDecoder(), None)
    assert transcript.closed and len(transcript.frames) == 1
    refusal = transcript.frames[0]
    assert isinstance(refusal, wire.Error) and refusal.id is None and refusal.type == "ProtocolError"
    assert "before the welcome" in refusal.message
    live.settle()
    assert "glued" not in Fz.touched


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0), as a killed or hostile peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


FLOOD_PAYLOAD = 3000
"""Bytes of the argument of each large call in a flood (under the guarded frame limit)."""
RSS_GROWTH_LIMIT = 256 * 1024
"""KiB the serving process may grow by over the rude clients' test: the caps allow a
few MiB per connection; without them one flood of unread pongs took hundreds."""


@dataclass(frozen=True)
class Rudeness:
    """How a rude client behaves: where in its stream it resets the connection (a byte
    offset, taken modulo the stream's length), whether it says hello first, how many
    pings and large calls it floods the server with and never reads, and how it reads
    before the reset ("never", "some": what is there, "trickle": a byte at a time)."""

    cut: int
    hello: bool
    pings: int
    calls: int
    reads: str


rudeness = st.builds(
    Rudeness,
    st.integers(0, 10**6),
    st.sampled_from([True, True, False]),
    st.sampled_from([0, 0, 10, 500, 5000]),
    st.sampled_from([0, 0, 4, 40]),
    st.sampled_from(["never", "some", "trickle"]),
)


def flood(rude: Rudeness) -> list[bytes]:
    """The pings and large calls a rude client sends without reading the answers."""
    pings = b"".join(wire.encode(wire.Ping(i)) for i in range(rude.pings))
    payload = pack([["f" * FLOOD_PAYLOAD], {}])
    calls = [wire.encode(wire.Call(10**9 + i, id_from_name("Fz", f"flood{i % 7}"), [("echo", payload)])) for i in range(rude.calls)]
    return [chunk for chunk in [pings, *calls] if chunk]


def send_until_stalled(sock: socket.socket, chunks: list[bytes]) -> None:
    """Send ``chunks``; a server that stops reading (its caps reached, nothing read
    back) or that closed the connection ends the sending."""
    sock.settimeout(0.3)
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.settimeout(READ_LIMIT)


def read_rudely(sock: socket.socket, how: str) -> None:
    sock.settimeout(0.05)
    try:
        if how == "some":
            sock.recv(65536)
        elif how == "trickle":
            for _ in range(20):
                if not sock.recv(1):
                    break
    except (TimeoutError, ConnectionResetError):
        pass


@budget(ci=120, share=0.1)
@example(session=Session([], []), server="open", rude=Rudeness(0, True, 5000, 40, "never"))
@example(session=Session([], []), server="guarded", rude=Rudeness(0, True, 5000, 40, "trickle"))
@given(sessions(), st.sampled_from(["open", "guarded"]), rudeness)
def test_rude_clients_that_reset_flood_and_read_slowly_end_only_their_own_connection(
    live: LiveServer, session: Session, server: str, rude: Rudeness
) -> None:
    """Resets used to take the whole server down (an ExceptionGroup nobody caught), and
    a client that pinged without reading grew the server's memory without bound."""
    data = b"".join(session.chunks)
    token = TOKEN if server == "guarded" else None
    hello = wire.encode(wire.Hello(wire.VERSION, token))
    tally_session(live, session, len(session.chunks) > len(session.sent))
    live.tally["reset"] += 1
    live.tally["flooded ping"] += rude.pings
    live.tally["flooded call"] += rude.calls
    if rude.hello:
        sock = open_raw(live.ports[server], token)
    else:  # reset somewhere in the hello itself, or in what follows it unwelcomed
        sock = socket.create_connection(("127.0.0.1", live.ports[server]), timeout=READ_LIMIT)
        data = hello + data
    try:
        cut = rude.cut % (len(data) + 1)
        send_until_stalled(sock, [data[:cut], *flood(rude)] if rude.hello else [data[:cut]])
        read_rudely(sock, rude.reads)
    finally:
        reset(sock)
    live.settle()
    growth = rss_kib("VmRSS") - live.rss_start
    assert growth < RSS_GROWTH_LIMIT, f"the serving process grew by {growth / 1024:.0f} MiB"


def test_a_target_name_is_not_kept_once_its_frame_is_gone() -> None:
    """The decoder caches checked targets; it used to keep each name too (up to a frame
    long, 4096 of them: gigabytes a client could pin in the server). Names are now
    checked against the id, so a long one is refused and nothing of it is kept."""
    target = id_from_name("Fz", "a")

    def frame(i: int) -> bytes:
        name = f"{i:06d}" + "n" * 100_000
        return pack([wire.CALL, i, ["Fz", target.hex, name], [["echo", b"\x92\x90\x80"]], {}])

    with pytest.raises(ProtocolError):
        wire.decode(frame(0))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 31):
            with pytest.raises(ProtocolError, match="bad target"):
                wire.decode(frame(i))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 500_000, f"{kept:,} bytes kept after decoding 30 calls with 100 kB names"


async def test_keyword_arguments_named_by_non_text_are_invalid_arguments(tmp_path: Path) -> None:
    async with Supervisor([Fz], tmp_path) as sup:
        for keywords in ({1: 2}, {b"value": 2}):
            with pytest.raises(InvalidInput):
                await sup.call_from_peer(id_from_name("Fz", "a"), [("echo", pack([[], keywords]))], timeout=None)


def test_an_actors_error_of_any_attributes_still_makes_a_frame() -> None:
    """An actor's own DotdoError with attributes msgpack cannot carry (a set, a datetime,
    a 70-bit int) or a lone surrogate in its message used to make ``encode`` raise in the
    server's call task, which took the whole transport server down."""
    odd = Awkward({
        "public": "lone \udcff", "message": "x\ud800", "expected": {1, 2}, "actual": 2**70,
        "target": dt.datetime(2024, 1, 1), "known": ("a", "b"),
    })
    frame = wire.decode(wire.encode(wire_errors.error_frame(3, odd))[wire.HEADER.size :])
    assert frame == wire.Error(3, "InvalidInput", "lone \\udcff", {"message": "x\\ud800", "known": ["a", "b"]})
    untidy = Awkward({"public": 7})
    assert wire.decode(wire.encode(wire_errors.error_frame(None, untidy))[wire.HEADER.size :]) == wire.Error(None, "InvalidInput", "InvalidInput")


def test_a_target_named_unlike_its_id_is_refused() -> None:
    """A peer cannot give an actor another's name: the actor would keep it as
    ``self.id.name`` (and sharding builds names from it)."""
    bob = id_from_name("Fz", "bob")
    impostor = wire.to_wire(wire.Call(1, bob, [("echo", pack([[], {}]))], None, None, ()))
    impostor[2][2] = "alice"
    with pytest.raises(ProtocolError, match="not the name of"):
        wire.decode(msgpack.packb(impostor))
    assert wire.decode(msgpack.packb(wire.to_wire(wire.Call(1, bob, [("echo", pack([[], {}]))], None, None, ())))).target.name == "bob"
    reference = msgpack.ExtType(values.REF_EXT, msgpack.packb(["Fz", bob.hex, "alice"]))
    with pytest.raises(InvalidValue, match="not the name of"):
        values.unpack(msgpack.packb(reference))

