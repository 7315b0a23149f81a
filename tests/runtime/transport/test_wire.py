"""Frames and messages of the transport, including a bounded fuzz of the decoder."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotdo.runtime.transport import wire
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import id_from_name

FUZZ = settings(max_examples=300, deadline=None)

targets = st.builds(lambda n: id_from_name("Shop", n), st.text(min_size=1, max_size=20))
request_ids = st.integers(0, wire.MAX_REQUEST_ID)
steps = st.lists(st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=50)), min_size=1, max_size=5)
messages = st.one_of(
    st.builds(
        wire.Call,
        request_ids,
        targets,
        steps,
        st.one_of(st.none(), st.floats(0.001, 1e6)),
        st.one_of(st.none(), st.text(max_size=20)),
        st.lists(st.text(max_size=20), max_size=3).map(tuple),
    ),
    st.builds(wire.Reply, request_ids, st.binary(max_size=100)),
    st.builds(wire.Error, st.one_of(st.none(), request_ids), st.text(max_size=20), st.text(max_size=50), st.just({})),
    st.builds(wire.Cancel, request_ids),
    st.builds(wire.Event, targets, st.text(min_size=1, max_size=20), st.binary(max_size=50)),
    st.builds(wire.Ping, request_ids),
    st.builds(wire.Pong, request_ids),
    st.builds(wire.Hello, st.integers(0, 5), st.one_of(st.none(), st.text(max_size=30))),
    st.builds(wire.Welcome, st.integers(0, 5), st.integers(1, 2**31), st.integers(1, 1000)),
    st.builds(
        wire.Fetch,
        request_ids,
        targets,
        st.builds(
            wire.HttpRequest,
            st.sampled_from(["GET", "POST", "DELETE"]),
            st.text(max_size=30).map(lambda p: "/" + p),
            st.binary(max_size=30),
            st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=4),
            st.binary(max_size=50),
        ),
        st.one_of(st.none(), st.floats(0.001, 1e6)),
    ),
)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=6), st.lists(st.integers(1, 40), max_size=20))
def test_frames_survive_any_split_of_the_stream(sent: list[wire.Message], cuts: list[int]) -> None:
    stream = b"".join(wire.encode(m) for m in sent)
    decoder = wire.FrameDecoder()
    bodies: list[bytes] = []
    position = 0
    for cut in cuts:
        bodies += decoder.feed(stream[position : position + cut])
        position += cut
    bodies += decoder.feed(stream[position:])
    assert [wire.decode(b) for b in bodies] == sent
    assert decoder.pending == 0


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_give_protocol_errors(data: bytes) -> None:
    decoder = wire.FrameDecoder(max_frame=1000)
    try:
        for body in decoder.feed(data):
            wire.decode(body)
    except ProtocolError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.lists(msgpack_values, max_size=6), st.integers(1, 9))
def test_well_formed_msgpack_of_the_wrong_shape_gives_protocol_errors(fields: list[object], kind: int) -> None:
    body = msgpack.packb([kind, *fields], use_bin_type=True)
    try:
        wire.decode(body)
    except ProtocolError:
        pass


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = wire.FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="over the limit of 100"):
        decoder.feed(struct.pack(">I", 101))
    assert wire.FrameDecoder(max_frame=100).feed(struct.pack(">I", 100) + b"x" * 100) == [b"x" * 100]


def test_fetch_frames_are_checked() -> None:
    target = ["Shop", id_from_name("Shop", "a").hex, "a"]
    good = {"method": "GET", "path": "/Shop/a", "query": b"", "headers": [[b"x", b"y"]], "body": b""}
    fetch = wire.decode(msgpack.packb([wire.FETCH, 1, target, good, {"timeout": 2}], use_bin_type=True))
    assert fetch == wire.Fetch(1, id_from_name("Shop", "a"), wire.HttpRequest("GET", "/Shop/a", b"", [(b"x", b"y")], b""), 2.0)
    for change, problem in [
        ({"path": "Shop/a"}, "must start with /"),
        ({"body": "text"}, "query and body must be bin"),
        ({"headers": [[b"x"]]}, "a fetch header is"),
        ({"headers": [[b"x", "y"]]}, "a fetch header is"),
        ({"headers": [[b"x", b"y"]] * (wire.MAX_HEADERS + 1)}, "at most 256"),
        ({"method": 5}, "an HTTP method"),
    ]:
        body = msgpack.packb([wire.FETCH, 1, target, {**good, **change}, {}], use_bin_type=True)
        with pytest.raises(ProtocolError, match=problem):
            wire.decode(body)


def test_specific_problems_are_named() -> None:
    bad_target = msgpack.packb([wire.CALL, 1, ["Shop", "0" * 64, None], [["m", b""]], {}])
    with pytest.raises(ProtocolError, match="bad target"):
        wire.decode(bad_target)
    target = ["Shop", id_from_name("Shop", "a").hex, "a"]
    with pytest.raises(ProtocolError, match="1 to 64 steps"):
        wire.decode(msgpack.packb([wire.CALL, 1, target, [], {}]))
    with pytest.raises(ProtocolError, match="positive number of seconds"):
        wire.decode(msgpack.packb([wire.CALL, 1, target, [["m", b""]], {"timeout": -1}]))
    with pytest.raises(ProtocolError, match="unknown message kind 42"):
        wire.decode(msgpack.packb([42]))
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        wire.decode(b"\xc1")
