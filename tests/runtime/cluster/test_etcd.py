"""The etcd client against a real etcd (``tests/etcd_server.py``): keys, transactions,
leases, watches, and what happens when endpoints fail."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
import trio

from dotdo.runtime.cluster.etcd import (
    Compacted,
    Compare,
    Etcd,
    EtcdError,
    EtcdUnavailable,
    Event,
    KeyValue,
    LeaseExpired,
    Op,
    prefix_end,
)
from tests.etcd_server import EtcdServer, free_port

LIMIT = 15
"""Seconds any test may take."""
EXPIRY = 8
"""Seconds a lease of etcd's minimum TTL (about 2) may take to expire and be revoked."""


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[Etcd]:
    async with Etcd(etcd.endpoints) as client:
        yield client


def closed_url() -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def black_hole() -> Iterator[str]:
    """A loopback URL that accepts connections into its backlog and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def gone(client: Etcd, key: str) -> None:
    """Wait until ``key`` no longer exists."""
    while await client.get(key) is not None:
        await trio.sleep(0.1)


async def events(batches: AsyncIterator[tuple[list[Event], int]], count: int) -> list[tuple[str, str, bytes]]:
    """The next ``count`` events of a watch, as (type, key, value)."""
    seen: list[tuple[str, str, bytes]] = []
    while len(seen) < count:
        batch, _ = await anext(batches)
        seen += [(e.type, e.kv.key, e.kv.value) for e in batch]
    return seen


# -- keys ------------------------------------------------------------------------------


async def test_put_get_range_and_delete(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        first = await client.put("/a/1", b"one")
        second = await client.put("/a/2", b"two")
        await client.put("/a", b"not under /a/")
        await client.put("/b/1", b"elsewhere")
        assert second > first

        kv = await client.get("/a/1")
        assert kv == KeyValue("/a/1", b"one", first, first, 1, 0)
        assert await client.get("/a/nothing") is None

        kvs, revision = await client.range("/a/")
        assert [(kv.key, kv.value) for kv in kvs] == [("/a/1", b"one"), ("/a/2", b"two")]
        assert revision == second + 2

        again = await client.put("/a/1", b"uno")
        kv = await client.get("/a/1")
        assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"uno", first, again, 2)

        assert await client.delete("/a/1") == 1
        assert await client.delete("/a/1") == 0
        assert await client.delete("/a/", prefix=True) == 1
        assert (await client.range("/a/"))[0] == []
        assert await client.get("/a") is not None and await client.get("/b/1") is not None


async def test_odd_keys_and_binary_values(client: Etcd) -> None:
    keys = ["/odd/with space", "/odd/naïve ✓", "/odd/line\nbreak", "/odd/%2F?#&=", "/odd/raw\udcff"]
    values = [bytes(range(256)), b"", b"\x00", b"\xff\xfe", "✓".encode()]
    with trio.fail_after(LIMIT):
        for key, value in zip(keys, values):
            await client.put(key, value)
        for key, value in zip(keys, values):
            kv = await client.get(key)
            assert kv is not None and (kv.key, kv.value) == (key, value)
        kvs, _ = await client.range("/odd/")
        assert sorted(kv.key.encode("utf-8", "surrogateescape") for kv in kvs) == [kv.key.encode("utf-8", "surrogateescape") for kv in kvs]
        assert {kv.key for kv in kvs} == set(keys)


async def test_every_key_and_prefixes_ending_in_0xff(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        await client.put("/p\udcff/1", b"x")
        await client.put("/q", b"y")
        assert [kv.key for kv in (await client.range("/p\udcff"))[0]] == ["/p\udcff/1"]
        assert [kv.key for kv in (await client.range(""))[0]] == ["/p\udcff/1", "/q"]


def test_prefix_end_is_etcds_rule() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


# -- transactions ------------------------------------------------------------------------


async def test_create_revision_zero_means_the_key_is_absent(client: Etcd) -> None:
    absent = [Compare.create_revision("/lock", "==", 0)]
    with trio.fail_after(LIMIT):
        won = await client.txn(absent, [Op.put("/lock", b"me")], [Op.get("/lock")])
        assert won.succeeded and won.responses == [[]]
        lost = await client.txn(absent, [Op.put("/lock", b"you")], [Op.get("/lock")])
        assert not lost.succeeded and lost.revision == won.revision
        [[holder]] = lost.responses
        assert (holder.key, holder.value, holder.mod_revision) == ("/lock", b"me", won.revision)


async def test_mod_revision_fences_a_stale_writer(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        await client.put("/owner", b"a")
        seen = await client.get("/owner")
        assert seen is not None
        fenced = [Compare.mod_revision("/owner", "==", seen.mod_revision)]
        first = await client.txn(fenced, [Op.put("/owner", b"b")])
        stale = await client.txn(fenced, [Op.put("/owner", b"c")])
        assert first.succeeded and not stale.succeeded
        now = await client.get("/owner")
        assert now is not None and now.value == b"b" and now.mod_revision == first.revision


async def test_each_kind_of_compare(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        lease = await client.grant(30)
        revision = await client.put("/k", b"v", lease=lease)
        await client.put("/k", b"w", lease=lease)
        holds = [
            Compare.create_revision("/k", "==", revision),
            Compare.mod_revision("/k", ">", revision),
            Compare.version("/k", "==", 2),
            Compare.version("/k", "<", 3),
            Compare.value("/k", "==", b"w"),
            Compare.value("/k", "!=", b"v"),
            Compare.lease("/k", "==", lease),
        ]
        for compare in holds:
            assert (await client.txn([compare], [])).succeeded, compare
        fails = [
            Compare.create_revision("/k", "!=", revision),
            Compare.mod_revision("/k", "<", revision),
            Compare.version("/k", ">", 2),
            Compare.value("/k", "==", b"v"),
            Compare.lease("/k", "==", 0),
        ]
        for compare in fails:
            assert not (await client.txn([compare], [])).succeeded, compare
        assert not (await client.txn(holds + fails[:1], [])).succeeded


async def test_a_branch_runs_every_op_and_answers_each(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        await client.put("/t/old", b"1")
        result = await client.txn(
            [], [Op.put("/t/new", b"2"), Op.get("/t/", prefix=True), Op.delete("/t/old"), Op.get("/t/old")]
        )
        assert result.succeeded
        put, listed, deleted, after = result.responses
        assert put == [] and deleted == [] and after == []  # each op sees those before it
        assert [(kv.key, kv.value) for kv in listed] == [("/t/new", b"2"), ("/t/old", b"1")]
        assert [kv.key for kv in (await client.range("/t/"))[0]] == ["/t/new"]


async def test_etcds_errors_carry_its_message(client: Etcd) -> None:
    with trio.fail_after(LIMIT), pytest.raises(EtcdError, match="key is not provided"):
        await client.put("", b"x")


def test_bad_arguments_are_refused_early() -> None:
    for endpoints in ([], "http://127.0.0.1:2379", ["127.0.0.1:2379"], ["ftp://h:1"], ["http://"]):
        with pytest.raises(ValueError):
            Etcd(endpoints)
    with pytest.raises(ValueError):
        Etcd(["http://127.0.0.1:2379"], timeout=0)
    with pytest.raises(ValueError):
        Compare.version("/k", "=", 1)


# -- leases ----------------------------------------------------------------------------


async def test_a_revoked_lease_takes_its_keys(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        lease = await client.grant(60)
        await client.put("/leased/1", b"x", lease=lease)
        await client.put("/leased/2", b"y", lease=lease)
        kv = await client.get("/leased/1")
        assert kv is not None and kv.lease == lease
        assert 0 < await client.time_to_live(lease) <= 60
        await client.revoke(lease)
        assert (await client.range("/leased/"))[0] == []
        await client.revoke(lease)  # already gone: fine
        with pytest.raises(LeaseExpired):
            await client.time_to_live(lease)


async def test_a_lease_not_kept_alive_expires(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        lease = await client.grant(1)
        await client.put("/ephemeral", b"x", lease=lease)
        with trio.fail_after(EXPIRY):
            await gone(client, "/ephemeral")
        with pytest.raises(LeaseExpired) as expired:
            await client.keepalive(lease)
        assert expired.value.lease == lease
        with pytest.raises(LeaseExpired):
            await client.time_to_live(lease)


async def test_keepalive_extends_a_lease(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        lease = await client.grant(2)
        await client.put("/kept", b"x", lease=lease)
        for _ in range(8):  # 4 s: twice the TTL
            assert await client.keepalive(lease) >= 2
            await trio.sleep(0.5)
        assert await client.get("/kept") is not None
        assert await client.time_to_live(lease) > 0
        with trio.fail_after(EXPIRY):
            await gone(client, "/kept")


# -- watches -----------------------------------------------------------------------------


async def test_a_watch_sees_every_change_in_order_from_its_revision(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        start = await client.put("/w/a", b"1")
        await client.put("/elsewhere", b"not watched")
        await client.put("/w/b", b"2")
        await client.delete("/w/a")
        async with client.watch("/w/", start) as batches:
            assert await events(batches, 3) == [("put", "/w/a", b"1"), ("put", "/w/b", b"2"), ("delete", "/w/a", b"")]
            deleted = await client.delete("/w/", prefix=True)
            put = await client.put("/w/c", b"3")
            assert deleted == 1
            assert await events(batches, 2) == [("delete", "/w/b", b""), ("put", "/w/c", b"3")]

        async with client.watch("/w/c", put) as batches:
            [event], revision = await anext(batches)
            assert event.kv.mod_revision == event.kv.create_revision == revision == put


async def test_a_delete_event_has_the_deletes_revision(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        await client.put("/d/x", b"1")
        _, before = await client.range("/d/")
        async with client.watch("/d/", before + 1) as batches:
            await client.delete("/d/x")
            [event], revision = await anext(batches)
        assert event.type == "delete" and event.kv.value == b"" and event.kv.mod_revision == revision == before + 1


async def test_an_idle_watch_reports_progress(client: Etcd) -> None:
    with trio.fail_after(LIMIT):
        revision = await client.put("/other", b"x")
        async with client.watch("/idle/", revision + 1) as batches:
            assert await anext(batches) == ([], revision)


async def test_a_compacted_start_revision_raises_compacted(client: Etcd, etcd: EtcdServer) -> None:
    with trio.fail_after(LIMIT):
        old = await client.put("/c/x", b"1")
        await client.put("/c/x", b"2")
        latest = await client.put("/c/x", b"3")
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(f"{etcd.url}/v3/kv/compaction", json={"revision": str(latest), "physical": True})
            assert response.status_code == 200, response.text
        async with client.watch("/c/", old) as batches:
            with pytest.raises(Compacted) as compacted:
                await anext(batches)
        assert compacted.value.compact_revision == latest
        async with client.watch("/c/", latest) as batches:
            [event], _ = await anext(batches)
            assert event.kv.value == b"3"


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_a_watch_ends_when_etcd_stops_and_resumes_after_a_restart(client: Etcd, etcd: EtcdServer, how: str) -> None:
    with trio.fail_after(LIMIT):
        seen = await client.put("/s/a", b"1")
        async with client.watch("/s/", seen + 1) as batches:
            await getattr(etcd, how)()
            with pytest.raises(EtcdUnavailable):
                async for _ in batches:
                    pass
        await etcd.start()  # the same data: the watch goes on from the last revision seen
        await client.put("/s/b", b"2")
        async with client.watch("/s/", seen + 1) as batches:
            assert await events(batches, 1) == [("put", "/s/b", b"2")]


# -- failover --------------------------------------------------------------------------


async def test_a_refused_endpoint_is_skipped(etcd: EtcdServer) -> None:
    with trio.fail_after(LIMIT):
        async with Etcd([closed_url(), etcd.url]) as client:
            revision = await client.put("/f", b"x")
            kv = await client.get("/f")
            assert kv is not None and kv.mod_revision == revision


async def test_the_endpoint_that_answered_is_asked_first(etcd: EtcdServer) -> None:
    with trio.fail_after(LIMIT), black_hole() as silent:
        async with Etcd([silent, etcd.url], timeout=0.5) as client:
            with trio.fail_after(2):
                assert await client.get("/r") is None  # waits out the silent one once
            with trio.fail_after(0.4):
                await client.put("/r", b"x")
                assert await client.get("/r") is not None


async def test_a_write_that_may_have_arrived_is_not_sent_again(etcd: EtcdServer) -> None:
    with trio.fail_after(LIMIT), black_hole() as silent:
        async with Etcd([silent, etcd.url], timeout=0.5) as client:
            with pytest.raises(EtcdUnavailable, match="may or may not have been applied"):
                await client.put("/once", b"x")
            assert await client.get("/once") is None


async def test_no_endpoint_answering_raises_unavailable_within_the_timeout() -> None:
    refused = [closed_url(), closed_url()]
    with trio.fail_after(LIMIT):
        async with Etcd(refused, timeout=1) as client:
            with trio.fail_after(0.5), pytest.raises(EtcdUnavailable) as raised:
                await client.get("/x")
            assert all(url in str(raised.value) for url in refused)
        with black_hole() as silent:
            async with Etcd([silent], timeout=0.3) as client:
                started = trio.current_time()
                with pytest.raises(EtcdUnavailable, match="no answer within"):
                    await client.get("/x")
                assert 0.3 <= trio.current_time() - started < 1
                with pytest.raises(EtcdUnavailable):
                    async with client.watch("/x", 0):
                        pass


async def test_a_paused_etcd_times_out_and_answers_once_resumed(etcd: EtcdServer) -> None:
    with trio.fail_after(LIMIT):
        async with Etcd(etcd.endpoints, timeout=0.5) as impatient:
            await impatient.put("/p", b"x")
            etcd.pause()
            try:
                with pytest.raises(EtcdUnavailable):
                    await impatient.get("/p")
            finally:
                etcd.resume()
            assert await impatient.get("/p") is not None
