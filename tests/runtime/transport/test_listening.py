"""Accepting under a cap and containing each connection (``dotdo.runtime.transport.listening``)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from dotdo.runtime.transport.listening import accept_loop, contained


async def _broken_in_a_nursery() -> None:
    async with trio.open_nursery() as nursery:
        async def reader() -> None:
            raise trio.BrokenResourceError("socket connection broken: [Errno 104] Connection reset by peer")

        nursery.start_soon(reader)
        await trio.sleep_forever()


async def test_a_broken_stream_ends_quietly_even_inside_an_exception_group(caplog: pytest.LogCaptureFixture) -> None:
    await contained(_broken_in_a_nursery(), "a test connection")
    assert caplog.records == []


async def test_a_bug_serving_a_connection_is_logged_and_contained(caplog: pytest.LogCaptureFixture) -> None:
    async def buggy() -> None:
        async with trio.open_nursery():
            raise KeyError("oops")

    await contained(buggy(), "a test connection")
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "a test connection failed inside dotdo" in record.getMessage()


async def test_cancellation_passes_through() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await contained(trio.sleep_forever(), "a test connection")
        raise AssertionError("not cancelled")
    assert scope.cancelled_caught


async def test_connections_past_the_cap_wait_and_a_failing_one_ends_alone(caplog: pytest.LogCaptureFixture) -> None:
    served: list[int] = []
    release = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        number = len(served)
        served.append(number)
        if number == 0:
            raise RuntimeError("a bug in the first connection")
        await release.wait()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listeners[0], handler, trio.Semaphore(2), nursery, "a test connection")
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        with trio.fail_after(5):
            while len(served) < 3:  # the first failed and gave its slot back
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert len(served) == 3  # two held, the fourth waits in the backlog
        release.set()
        with trio.fail_after(5):
            while len(served) < 4:
                await trio.sleep(0.01)
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert any("failed inside dotdo" in r.getMessage() for r in caplog.records)
