"""WebSocket frames as the hub encodes them (dotdo.runtime.services.websockets): once per
message however many sockets it goes to, checked against wsproto, the WebSocket library
the HTTP server parses with."""

from __future__ import annotations


import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from dotdo.runtime.services.websockets import BINARY, TEXT, WebSockets, frame, unframe
from dotdo.storage.errors import InvalidInput


def hub(max_message: int = 1 << 20) -> WebSockets:
    return WebSockets(None, max_message, lambda: 0.0)  # type: ignore[arg-type]  # framing needs no supervisor


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frames_of_every_length_read_back_as_a_client_reads_them(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frame(TEXT, text.encode()) + frame(BINARY, data))
    events = list(client.events())
    assert [type(e) for e in events] == [TextMessage, BytesMessage]
    assert events[0].data == text and events[1].data == data and all(e.message_finished for e in events)
    assert unframe(frame(TEXT, text.encode()) + frame(BINARY, data)) == [text, data]


def test_a_message_is_encoded_once_for_every_socket_it_goes_to() -> None:
    sockets = hub()
    message = "hello room"
    first = sockets.frame(message)
    assert sockets.frame(message) is first  # the same object: the frame kept
    assert sockets.frame("hello" + " room") == first  # another object, encoded again
    assert sockets.frame(b"\x00") == bytes((0x82, 1, 0))


def test_what_cannot_be_sent_is_refused_when_sent() -> None:
    sockets = hub(max_message=10)
    with pytest.raises(InvalidInput, match="at most 10 bytes"):
        sockets.frame("é" * 6)  # 12 bytes of UTF-8
    with pytest.raises(InvalidInput, match="lone surrogate"):
        sockets.frame("\ud800")
    assert sockets.frame("é" * 5)
