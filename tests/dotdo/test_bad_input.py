"""Bad input over HTTP against a real server on 127.0.0.1 (issue 8).

Every input here must get a clear refusal: a 4xx or 503 with a JSON body
``{"error", "message"}``, a bare 4xx from the HTTP parser (h11) followed by the
connection closing, or just the connection closing; never a 5xx from the app, never a
hang (every exchange is bounded). After each input the server still serves a normal
request, no error is logged, and nothing outside the data directory was created or
changed. Names that only look dangerous (``..``, ``/etc/passwd``) are valid actor names:
they reach their own actor, whose database lies inside the data directory under a hash.

Kinds: oversized bodies, invalid JSON, text that is not Unicode, wrong arguments,
methods that are not callable, ids, namespaces, long URLs and headers, broken HTTP,
lifecycle arguments, slow clients, many connections. ``pytest -s`` prints how many inputs of each kind were tried.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dotdo import DO, id_from_name
from tests.dotdo.rawhttp import Reply, exchange, request
from tests.dotdo.refusals import (
    Case,
    Tally,
    active_actors,
    judge,
    serve_with_few_descriptors,
    serving_in_thread,
    still_serving,
    tree,
)
from tests.dotdo.serving import Server, serving


class Probe(DO):
    """The kind every bad input is aimed at."""

    async def echo(self, value: Any) -> Any:
        return value

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def typed(self, when: dt.datetime, tags: list[str], limits: dict[str, int], flag: bool = False) -> str:
        return "typed"

    async def who(self) -> dict[str, Any]:
        return {"name": self.id.name, "hex": self.id.hex}

    async def nothing(self) -> str:
        return "nothing"

    async def note(self, text: str) -> int:
        self.sql.exec("CREATE TABLE IF NOT EXISTS notes(text TEXT)")
        self.sql.exec("INSERT INTO notes VALUES (?)", text)
        return self.sql.exec("SELECT count(*) AS n FROM notes").one()["n"]

    async def remember(self, data: dict[str, Any]) -> str:
        return self.S.db.create("Note", data)["$id"]

    async def _private(self) -> int:
        return 1

    def sync(self) -> int:
        return 1

    @staticmethod
    async def static() -> int:
        return 1

    @classmethod
    async def klass(cls) -> int:
        return 1

    async def fetch(self, request: Any) -> Any:
        return {"name": self.id.name, "size": len(await request.body())}


KINDS = [Probe]
MAX_BODY = 64 * 1024
OPTIONS: dict[str, Any] = {"max_body": MAX_BODY, "read_timeout": 2.0, "keep_alive_timeout": 2.0}


# -- fixtures: the tally, the guard, the shared server ------------------------------------


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    counts = Tally()
    yield counts
    print(f"\n{counts.summary()}")


@pytest.fixture(autouse=True)
def guard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Afterwards: nothing under the session's temporary directory changed but inside
    data directories, and nothing was logged as an error (by this process's servers)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "outside.txt").write_text("must stay as it is")
    root = tmp_path.parent
    before = tree(root)
    yield
    assert tree(root) == before, "a file outside the data directories was created or changed"
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data directory of the test's own server."""
    return tmp_path / "data"


@dataclass(frozen=True)
class Shared:
    """The server most inputs go to: one for the module, in a thread of its own."""

    url: str
    data_dir: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One server with ``OPTIONS`` for the many inputs that need no server of their
    own, stopped gracefully at the end of the module."""
    data = tmp_path_factory.mktemp("shared") / "data"
    with serving_in_thread(KINDS, data, **OPTIONS) as url:
        yield Shared(url, data.resolve())


def port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def refused(kind: str, case: Case, shared: Shared, tally: Tally, *, activates: bool = False) -> Reply:
    """Send ``case`` to the shared server: it is refused as it must be, activates no
    actor (unless ``activates``), and the server then still serves."""
    async with httpx.AsyncClient(base_url=shared.url, timeout=10) as client:
        before = await active_actors(client)
        reply = await exchange(shared.port, case.request)
        tally.record(kind, judge(reply, case.status, case.error))
        if not activates:
            assert await active_actors(client) == before
        await still_serving(client)
    return reply


def ids(cases: list[Case]) -> list[str]:
    return [case.label for case in cases]


# -- oversized bodies ----------------------------------------------------------------------

OVER = b"x" * (MAX_BODY + 1)
CHUNKED = [("Transfer-Encoding", "chunked")]


def chunks(*sizes: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (size, b"x" * size) for size in sizes) + b"0\r\n\r\n"


BODIES = [
    Case("over the limit, declared", request("POST", "/_rpc/Probe/a/echo", OVER), 413, "BodyTooLarge"),
    Case("over the limit, to fetch", request("POST", "/Probe/a/x", OVER), 413, "BodyTooLarge"),
    Case("over the limit, to admin", request("POST", "/_admin/actors/Probe/a/history", OVER), 413, "BodyTooLarge"),
    Case("over the limit, to health", request("GET", "/_health", OVER), 413, "BodyTooLarge"),
    Case("declares a terabyte, sends nothing", request("POST", "/_rpc/Probe/a/echo", headers=[("Content-Length", str(10**12))]), 413),
    Case("declares 10^30 bytes", request("POST", "/Probe/a/x", headers=[("Content-Length", "9" * 30)]), 413),
    Case("chunked, two chunks over", request("POST", "/_rpc/Probe/a/echo", chunks(MAX_BODY, MAX_BODY), headers=CHUNKED), 413),
    Case("chunked, many small chunks over", request("POST", "/Probe/a/x", chunks(*[1000] * 70), headers=CHUNKED), 413),
    Case("chunked, one chunk declared huge", request("POST", "/Probe/a/x", b"fffffff\r\n" + OVER, headers=CHUNKED), 413),
    Case(
        "expects 100-continue, over the limit",
        request("POST", "/_rpc/Probe/a/echo", headers=[("Expect", "100-continue"), ("Content-Length", "99999999")]),
        413,
    ),
    Case("negative Content-Length", request("POST", "/_rpc/Probe/a/echo", headers=[("Content-Length", "-1")])),
    Case("Content-Length not a number", request("POST", "/_rpc/Probe/a/echo", headers=[("Content-Length", "1e3")])),
    Case(
        "two Content-Lengths",
        request("POST", "/_rpc/Probe/a/echo", b"{}", headers=[("Content-Length", "2"), ("Content-Length", "3")]),
    ),
    Case("chunk size not hex", request("POST", "/_rpc/Probe/a/echo", b"zz\r\n{}\r\n0\r\n\r\n", headers=CHUNKED)),
    Case("unknown transfer coding", request("POST", "/_rpc/Probe/a/echo", b"{}", headers=[("Transfer-Encoding", "gzip")]), 501),
]


@pytest.mark.parametrize("case", BODIES, ids=ids(BODIES))
async def test_oversized_and_misframed_bodies(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("body", case, shared, tally)


# -- invalid JSON and wrong arguments ------------------------------------------------------


def rpc(method: str, body: bytes, actor: str = "a") -> bytes:
    return request("POST", f"/_rpc/Probe/{actor}/{method}", body)


def nested(depth: int) -> bytes:
    return b'{"args": [' + b"[" * depth + b"]" * depth + b"]}"


JSON = [
    Case("not JSON", rpc("echo", b"{not json"), 400, "InvalidInput"),
    Case("truncated", rpc("echo", b'{"args": [1'), 400, "InvalidInput"),
    Case("trailing garbage", rpc("echo", b'{"args": [1]} x'), 400, "InvalidInput"),
    Case("not UTF-8", rpc("echo", b'{"args": ["\xff\xfe"]}'), 400, "InvalidInput"),
    Case("NUL bytes", rpc("echo", b"\x00\x00\x00"), 400, "InvalidInput"),
    Case("raw control character in a string", rpc("echo", b'{"args": ["\x01"]}'), 400, "InvalidInput"),
    Case("NaN", rpc("echo", b'{"args": [NaN]}'), 400, "InvalidInput"),
    Case("Infinity", rpc("echo", b'{"args": [Infinity]}'), 400, "InvalidInput"),
    Case("-Infinity in kwargs", rpc("echo", b'{"kwargs": {"value": -Infinity}}'), 400, "InvalidInput"),
    Case("1e999", rpc("echo", b'{"args": [1e999]}'), 400, "InvalidInput"),
    Case("5000-digit integer", rpc("echo", b'{"args": [' + b"9" * 5000 + b"]}"), 400, "InvalidInput"),
    Case("nested 2,000 deep", rpc("echo", nested(2000)), 400, "InvalidInput"),
    Case("nested 30,000 deep", rpc("echo", nested(30_000)), 400, "InvalidInput"),
    Case("an array", rpc("echo", b"[1, 2]"), 400, "InvalidInput"),
    Case("a string", rpc("echo", b'"args"'), 400, "InvalidInput"),
    Case("null", rpc("echo", b"null"), 400, "InvalidInput"),
    Case("a number", rpc("echo", b"5"), 400, "InvalidInput"),
    Case("args an object", rpc("echo", b'{"args": {"value": 1}}'), 400, "InvalidInput"),
    Case("args a string", rpc("echo", b'{"args": "abc"}'), 400, "InvalidInput"),
    Case("args null", rpc("echo", b'{"args": null}'), 400, "InvalidInput"),
    Case("kwargs an array", rpc("echo", b'{"kwargs": [1]}'), 400, "InvalidInput"),
    Case("kwargs null", rpc("echo", b'{"kwargs": null}'), 400, "InvalidInput"),
    Case("unknown field", rpc("echo", b'{"args": [1], "method": "add"}'), 400, "InvalidInput"),
    Case("duplicate args, the last wrong", rpc("echo", b'{"args": [1], "args": 2}'), 400, "InvalidInput"),
]


@pytest.mark.parametrize("case", JSON, ids=ids(JSON))
async def test_invalid_json(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("json", case, shared, tally)


# -- text that is not Unicode: lone surrogates, which JSON can spell ----------------------

UNICODE = [
    Case("lone high surrogate to SQL", rpc("note", br'{"args": ["\ud800"]}'), 400, "InvalidValue"),
    Case("lone low surrogate to SQL", rpc("note", br'{"args": ["x\udfff"]}'), 400, "InvalidValue"),
    Case("reversed pair", rpc("note", br'{"args": ["\ude00\ud83d"]}'), 400, "InvalidValue"),
    Case("surrogate, upper-case escape", rpc("note", br'{"args": ["\uD800"]}'), 400, "InvalidValue"),
    Case("surrogate to the things store", rpc("remember", br'{"args": [{"name": "\ud800"}]}'), 400, "InvalidValue"),
    Case("surrogate as a key", rpc("remember", br'{"args": [{"\udc00": 1}]}'), 400, "InvalidValue"),
    Case("surrogate as a kwargs name", rpc("echo", br'{"kwargs": {"\ud800": 1}}'), 400, "InvalidValue"),
    Case("surrogate echoed back", rpc("echo", br'{"args": ["\ud800"]}'), 400, "InvalidValue"),
    Case("surrogate 200 deep", rpc("echo", b'{"args": [' + b"[" * 200 + br'"\udbff"' + b"]" * 200 + b"]}"), 400, "InvalidValue"),
    Case("surrogate to admin", request("POST", "/_admin/actors/Probe/a/clone", br'{"new_id": "\ud800"}'), 400, "InvalidValue"),
    Case("UTF-8 of a surrogate (CESU)", rpc("note", b'{"args": ["\xed\xa0\x80"]}'), 400, "InvalidInput"),
]


@pytest.mark.parametrize("case", UNICODE, ids=ids(UNICODE))
async def test_text_that_is_not_unicode_is_refused_at_the_edge(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("not Unicode", case, shared, tally, activates=True)


async def test_surrogate_pairs_and_escaped_backslashes_are_text(shared: Shared, tally: Tally) -> None:
    """What only looks like a lone surrogate is served: a pair is one character, and
    ``\\ud800`` is a backslash and five letters."""
    for body, expected in [(br'{"args": ["\ud83d\ude00"]}', "\U0001f600"), (br'{"args": ["\\ud800"]}', "\\" + "ud800")]:
        reply = await exchange(shared.port, rpc("echo", body))
        assert reply.status == 200, str(reply)
        assert json.loads(reply.body) == {"result": expected}
        tally.record("not Unicode", "served as text")


TYPED = b'"when": "2024-01-02T03:04:05Z", "tags": ["a"], "limits": {"a": 1}'
ARGUMENTS = [
    Case("a word for an int", rpc("add", b'{"args": ["two"]}'), 400, "InvalidArguments"),
    Case("a fraction for an int", rpc("add", b'{"args": [1.5]}'), 400, "InvalidArguments"),
    Case("a list for an int", rpc("add", b'{"args": [[1]]}'), 400, "InvalidArguments"),
    Case("an object for an int", rpc("add", b'{"args": [{"a": 1}]}'), 400, "InvalidArguments"),
    Case("null for an int", rpc("add", b'{"args": [null]}'), 400, "InvalidArguments"),
    Case("'1e3' for an int", rpc("add", b'{"args": ["1e3"]}'), 400, "InvalidArguments"),
    Case("an int past 64 bits", rpc("add", b'{"args": [123456789012345678901234567890]}', "big"), 400, "InvalidValue"),
    Case("a lone surrogate", rpc("echo", b'{"args": ["\\ud800"]}', "surrogate"), 400, "InvalidValue"),
    Case("missing argument", rpc("add", b'{"args": []}'), 400, "InvalidArguments"),
    Case("one argument too many", rpc("add", b'{"args": [1, 2, 3]}'), 400, "InvalidArguments"),
    Case("unknown keyword", rpc("add", b'{"args": [1], "kwargs": {"c": 2}}'), 400, "InvalidArguments"),
    Case("self as a keyword", rpc("add", b'{"kwargs": {"self": 1, "a": 1}}'), 400, "InvalidArguments"),
    Case("the same argument twice", rpc("add", b'{"args": [1], "kwargs": {"a": 2}}'), 400, "InvalidArguments"),
    Case("arguments to a method taking none", rpc("nothing", b'{"args": [1]}'), 400, "InvalidArguments"),
    Case("not a datetime", rpc("typed", b'{"kwargs": {' + TYPED.replace(b"2024-01-02T03:04:05Z", b"soon") + b"}}"), 400, "InvalidArguments"),
    Case("a string for list[str]", rpc("typed", b'{"kwargs": {' + TYPED.replace(b'["a"]', b'"a"') + b"}}"), 400, "InvalidArguments"),
    Case("a word in dict[str, int]", rpc("typed", b'{"kwargs": {' + TYPED.replace(b'"a": 1', b'"a": "x"') + b"}}"), 400, "InvalidArguments"),
    Case("'maybe' for a bool", rpc("typed", b'{"kwargs": {' + TYPED + b', "flag": "maybe"}}'), 400, "InvalidArguments"),
]


@pytest.mark.parametrize("case", ARGUMENTS, ids=ids(ARGUMENTS))
async def test_wrong_arguments(case: Case, shared: Shared, tally: Tally) -> None:
    # Values that cannot travel (msgpack) are refused while the call is copied into the
    # actor's mailbox, after its activation; signature and type checks come before.
    await refused("arguments", case, shared, tally, activates=case.error == "InvalidValue")


async def test_a_long_list_of_wrong_arguments_gets_a_short_message(data_dir: Path, tally: Tally) -> None:
    """300,000 unexpected arguments (600 kB) are refused with a message of at most a
    few kB, not one line per argument (14 MB)."""
    async with serving(KINDS, data_dir, **{**OPTIONS, "max_body": 1024 * 1024}) as server:
        reply = await exchange(port(server), rpc("echo", b'{"args": [' + b"1," * 300_000 + b"1]}"))
        tally.record("arguments", judge(reply, 400, "InvalidArguments"))
        assert len(reply.body) < 4096 and reply.json()["message"].endswith(" more")  # "and N more"
        await still_serving(server.client)


async def test_a_long_error_message_is_capped(shared: Shared) -> None:
    """A 30 kB keyword name makes a long message; the reply carries its first 2,000
    characters and says how many more there were."""
    name = b"k" * 30_000
    reply = await exchange(shared.port, rpc("echo", b'{"kwargs": {"value": 1, "' + name + b'": 1}}'))
    judge(reply, 400, "InvalidArguments")
    message = reply.json()["message"]
    assert len(message) < 2100 and message.endswith("more characters)")


async def test_a_typed_call_with_right_arguments_works(shared: Shared) -> None:
    """The typed cases above are wrong only where they say they are."""
    reply = await exchange(shared.port, rpc("typed", b'{"kwargs": {' + TYPED + b"}}"))
    assert (reply.status, reply.json()) == (200, {"result": "typed"})


# -- methods that are not callable ---------------------------------------------------------

NOT_CALLABLE = [
    "missing", "ECHO", "Echo", "echo%20", "_private", "%5Fprivate", "__init__", "__class__", "__dict__",
    "__getattribute__", "__call__", "__del__", "__reduce_ex__", "%5F%5Finit%5F%5F", "fetch", "alarm", "on_start",
    "set_alarm", "get_alarm", "delete_alarm", "namespace", "storage", "sql", "env", "S", "id", "sync", "static",
    "klass", "mro", "..", "%2e%2e", "echo%2F..", "echo%00", "",
]  # fmt: skip
METHODS = [Case(f"method {name!r}", rpc(name, b"{}"), 404, "MethodNotAllowed") for name in NOT_CALLABLE] + [
    Case("method path with an extra segment", rpc("echo/extra", b"{}"), 400, "InvalidInput"),
    Case("method with a raw control character", rpc("echo\x01", b"{}")),
    Case("GET on the RPC route", request("GET", "/_rpc/Probe/a/echo"), 404, "ActorNotFound"),
    Case("unknown HTTP method", request("BREW", "/Probe/a/x"), 405, "HttpMethodNotAllowed"),
    Case("TRACE", request("TRACE", "/Probe/a/x"), 405, "HttpMethodNotAllowed"),
    Case("POST to the kinds listing", request("POST", "/_kinds"), 405, "HttpMethodNotAllowed"),
]


@pytest.mark.parametrize("case", METHODS, ids=ids(METHODS))
async def test_methods_that_are_not_callable(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("methods", case, shared, tally)


# -- ids and namespaces --------------------------------------------------------------------

BAD_IDS = [
    "%00", "a%00b", "%01", "a%0d%0aX-Injected:%201", "%1f", "%7f", "%09tab", "%ff", "a%c3%28", "%ed%a0%80",
    "%c0%ae%c0%ae", "%e2%82", "x" * 513, "%c3%a9" * 257,
]  # fmt: skip
RAW_BAD_IDS = [b"a\x00b", b"a\x01b", b"a\rb", b"a\nb", b"a\x7fb", b"a b", b"\xff\xfe", b"a\tb"]
IDS = (
    [Case(f"id {raw[:24]!r} (RPC)", rpc("who", b"{}", raw)) for raw in BAD_IDS]
    + [Case(f"id {raw[:24]!r} (fetch)", request("GET", f"/Probe/{raw}/x"), 400, "InvalidId") for raw in BAD_IDS]
    + [Case(f"raw id {raw!r} (RPC)", request("POST", b"/_rpc/Probe/" + raw + b"/who", b"{}")) for raw in RAW_BAD_IDS]
    + [Case(f"raw id {raw!r} (fetch)", request("GET", b"/Probe/" + raw + b"/x")) for raw in RAW_BAD_IDS]
    + [
        Case("empty id (RPC)", rpc("who", b"{}", ""), 400, "InvalidId"),
        Case("empty id (fetch)", request("GET", "/Probe//x"), 404, "NotFound"),
    ]
)


@pytest.mark.parametrize("case", IDS, ids=ids(IDS))
async def test_ids_that_are_refused(case: Case, shared: Shared, tally: Tally) -> None:
    reply = await refused("ids", case, shared, tally)
    if case.status is None and reply.body:  # RPC: a bad id (400), or a decoded CR/LF no route takes (404)
        assert (reply.status, reply.json()["error"]) in ((400, "InvalidId"), (404, "NotFound")), str(reply)


# Text that only looks like a path: each is a valid name of its own actor.
NAMES = {
    "..": "..",
    "%2e%2e": "..",
    ".": ".",
    "..%2F..%2F..%2Fetc%2Fpasswd": "../../../etc/passwd",
    "%2Fetc%2Fpasswd": "/etc/passwd",
    "%2F": "/",
    "..%5C..%5Cwindows": "..\\..\\windows",
    "C:%5CWindows": "C:\\Windows",
    "~root": "~root",
    "%252e%252e": "%2e%2e",
    "%E2%80%AE": "\u202e",
    "outside.txt": "outside.txt",
    "x" * 512: "x" * 512,
}


@pytest.mark.parametrize("raw", list(NAMES), ids=[raw[:24] for raw in NAMES])
async def test_names_that_look_like_paths_stay_inside_the_data_directory(raw: str, shared: Shared, tally: Tally) -> None:
    name = NAMES[raw]
    called = await exchange(shared.port, rpc("who", b"{}", raw))
    assert called.status == 200, str(called)
    assert called.json()["result"] == {"name": name, "hex": id_from_name("Probe", name).hex}
    tally.record("ids", "served as a name")
    if not name.startswith("/"):  # the router matches the decoded path: "/Probe//..." is no route
        fetched = await exchange(shared.port, request("GET", f"/Probe/{raw}/x"))
        assert (fetched.status, fetched.json()) == (200, {"name": name, "size": 0})
        tally.record("ids", "served as a name")
    database = id_from_name("Probe", name).address.path(shared.data_dir)
    assert database.exists() and database.resolve().is_relative_to(shared.data_dir)


BAD_NAMESPACES = [
    "..", "%2e%2e", "..%2F..", "%2Fetc", "Probe%00", "Probe%2F..", "probe", "PROBE", "Probe%20", "%ff", "x" * 65,
    "_dotdo", "Probe%0d%0a",
]  # fmt: skip
NAMESPACES = (
    [Case(f"namespace {ns[:24]!r} (RPC)", request("POST", f"/_rpc/{ns}/a/who", b"{}")) for ns in BAD_NAMESPACES]
    + [Case(f"namespace {ns[:24]!r} (fetch)", request("GET", f"/{ns}/a/x")) for ns in BAD_NAMESPACES]
    + [Case(f"namespace {ns[:24]!r} (admin)", request("POST", f"/_admin/actors/{ns}/a/history", b"{}")) for ns in BAD_NAMESPACES]
    + [Case(f"namespace {ns[:24]!r} (alarms)", request("GET", f"/_admin/alarms?namespace={ns}")) for ns in BAD_NAMESPACES]
    + [
        Case("raw NUL in namespace", request("GET", b"/Pro\x00be/a/x")),
        Case("absolute path", request("GET", "//etc/passwd"), 404, "NotFound"),
        Case("dot segments up to the root", request("GET", "/../../../etc/passwd"), 404, "ActorNotFound"),
        Case("absolute URI", request("GET", "http://elsewhere/Probe/a/x"), 404, "NotFound"),
    ]
)


@pytest.mark.parametrize("case", NAMESPACES, ids=ids(NAMESPACES))
async def test_namespaces_that_are_refused(case: Case, shared: Shared, tally: Tally) -> None:
    reply = await refused("namespaces", case, shared, tally)
    if reply.status is not None and reply.body:
        assert reply.status in (400, 404), str(reply)


# -- long URLs and headers, broken HTTP ----------------------------------------------------

LONG = [
    Case("8 kB id", rpc("who", b"{}", "x" * 8000), 400, "InvalidId"),
    Case("15 kB path", request("GET", "/Probe/" + "x" * 15000 + "/x"), 400, "InvalidId"),
    Case("100 kB path", request("GET", "/Probe/" + "x" * 100_000 + "/x")),
    Case("1 MB path", request("GET", "/Probe/" + "x" * 1_000_000 + "/x")),
    Case("100 kB query", request("GET", "/Probe/a/x?q=" + "x" * 100_000)),
    Case("100 kB header", request("GET", "/Probe/a/x", headers=[("X-Big", "x" * 100_000)])),
    Case("10,000 headers", request("GET", "/Probe/a/x", headers=[(f"X-{i}", "v") for i in range(10_000)])),
    Case("headers without end", b"GET /Probe/a/x HTTP/1.1\r\nHost: test\r\n" + b"X-A: b\r\n" * 20_000),
]


@pytest.mark.parametrize("case", LONG, ids=ids(LONG))
async def test_long_urls_and_headers(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("long URLs and headers", case, shared, tally)


PROTOCOL = [
    Case("TLS handshake", bytes.fromhex("16030100a5010000a10303") + bytes(160)),
    Case("binary noise", bytes(range(256)) * 4),
    Case("HTTP/1.1 without Host", b"GET /Probe/a/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
    Case("NUL in a header value", request("GET", "/Probe/a/x", headers=[("X-A", "a\x00b")])),
    Case("space in a header name", request("GET", "/Probe/a/x", headers=[("X A", "b")])),
    Case("request line only", b"GET\r\n\r\n"),
    Case("CONNECT", request("CONNECT", "elsewhere:443"), 404, "NotFound"),
    Case("OPTIONS *", request("OPTIONS", "*"), 404, "NotFound"),
    Case("unrouted path", request("GET", "/"), 404, "NotFound"),
    Case(
        "WebSocket upgrade",
        request(
            "GET",
            "/Probe/a/x",
            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")],
        ),
    ),
]


@pytest.mark.parametrize("case", PROTOCOL, ids=ids(PROTOCOL))
async def test_broken_http(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("broken HTTP", case, shared, tally)


# -- lifecycle arguments -------------------------------------------------------------------


def admin(operation: str, arguments: dict[str, Any] | bytes) -> bytes:
    body = arguments if isinstance(arguments, bytes) else json.dumps(arguments).encode()
    return request("POST", f"/_admin/actors/Probe/a/{operation}", body)


LIFECYCLE = [
    Case("unknown operation", admin("explode", {}), 400, "InvalidInput"),
    Case("dunder operation", admin("__init__", {}), 400, "InvalidInput"),
    Case("private operation", admin("_check", {}), 400, "InvalidInput"),
    Case("operation '..'", admin("..", {}), 400, "InvalidInput"),
    Case("body not an object", admin("clone", b'["b"]'), 400, "InvalidInput"),
    Case("timeout of the wrong type", admin("clone", {"new_id": "b", "timeout": "abc"}), 400, "InvalidInput"),
    Case("a timeout at all", admin("clone", {"new_id": "b", "timeout": -1}), 400, "InvalidInput"),
    Case("operation as an argument", admin("clone", {"new_id": "b", "operation": "compact"}), 400, "InvalidInput"),
    Case("target as an argument", admin("clone", {"new_id": "b", "target": "c"}), 400, "InvalidInput"),
    Case("self as an argument", admin("clone", {"new_id": "b", "self": "c"}), 400, "InvalidInput"),
    Case("clone to a number", admin("clone", {"new_id": 5}), 400, "InvalidInput"),
    Case("clone to an empty name", admin("clone", {"new_id": ""}), 400, "InvalidId"),
    Case("clone to a 600-byte name", admin("clone", {"new_id": "x" * 600}), 400, "InvalidId"),
    Case("branch '../../x'", admin("branch", {"name": "../../x"}), 400, "InvalidInput"),
    Case("branch '/etc/passwd'", admin("branch", {"name": "/etc/passwd"}), 400, "InvalidInput"),
    Case("branch with NUL", admin("branch", {"name": "a\x00"}), 400, "InvalidInput"),
    Case("checkout '../main'", admin("checkout", {"name": "../main"}), 400, "InvalidInput"),
    Case("diff of '..' and '/'", admin("diff", {"a": "..", "b": "/"}), 400, "InvalidInput"),
    Case("restore '../../x'", admin("restore", {"bookmark": "../../x"}), 400),
    Case("bookmark 'yesterday'", admin("bookmark", {"at": "yesterday"}), 400, "InvalidInput"),
    Case("shard into -1", admin("shard", {"n": -1}), 400, "InvalidInput"),
    Case("shard into a million", admin("shard", {"n": 1_000_000}), 400, "InvalidInput"),
    Case("shard by SQL", admin("shard", {"n": 2, "key": "'; DROP TABLE x; --"}), 400, "InvalidInput"),
    Case("query op 'drop'", admin("query", {"op": "drop"}), 400, "InvalidInput"),
    Case("query type with SQL", admin("query", {"op": "list", "type": "'; DROP"}), 400, "InvalidInput"),
    Case("compact keeping 'forever'", admin("compact", {"retention": "forever"}), 400, "InvalidInput"),
]


@pytest.mark.parametrize("case", LIFECYCLE, ids=ids(LIFECYCLE))
async def test_lifecycle_arguments(case: Case, shared: Shared, tally: Tally) -> None:
    await refused("lifecycle arguments", case, shared, tally, activates=True)  # operations run as turns


async def test_a_clone_named_like_a_path_stays_inside_the_data_directory(shared: Shared, tally: Tally) -> None:
    reply = await exchange(shared.port, admin("clone", {"new_id": "../../outside.txt"}))
    assert reply.status == 200, str(reply)
    tally.record("lifecycle arguments", "served as a name")
    database = id_from_name("Probe", "../../outside.txt").address.path(shared.data_dir)
    assert database.exists() and database.resolve().is_relative_to(shared.data_dir)


# -- slow clients --------------------------------------------------------------------------

SLOW_OPTIONS = {**OPTIONS, "read_timeout": 1.0, "keep_alive_timeout": 1.0, "call_timeout": 2.0}
STALLS = [
    Case("connects and sends nothing", b""),
    Case("half a request line", b"GET /Probe/a/an"),
    Case("request line, no headers", b"GET /Probe/a/x HTTP/1.1\r\n"),
    Case("half the headers", b"GET /Probe/a/x HTTP/1.1\r\nHost: test\r\nX-Half: ab"),
    Case("half a body to RPC", request("POST", "/_rpc/Probe/a/echo", headers=[("Content-Length", "100")]) + b'{"args"', 400),
    Case("half a body to fetch", request("POST", "/Probe/a/x", headers=[("Content-Length", "100")]) + b"0123456789", 400),
    Case("half a body to admin", request("POST", "/_admin/actors/Probe/a/history", headers=[("Content-Length", "50")]) + b"{", 400),
    Case("one chunk, then nothing", request("POST", "/_rpc/Probe/a/echo", b"2\r\n{}\r\n", headers=CHUNKED), 400),
]


async def test_clients_that_stall_are_cut_off_while_others_are_served(data_dir: Path, tally: Tally) -> None:
    """Each stalling client at once: one that stops before its request is whole is
    closed (by the keep-alive timer, 1 s, or the read timeout, 1 s); one that stops in
    its body gets a 400 (or just the close). Others are served meanwhile."""
    async with serving(KINDS, data_dir, **SLOW_OPTIONS) as server:
        replies: dict[str, Reply] = {}

        async def stall(case: Case) -> None:
            replies[case.label] = await exchange(port(server), case.request, limit=10)

        async with trio.open_nursery() as nursery:
            for case in STALLS:
                nursery.start_soon(stall, case)
            for _ in range(5):
                await still_serving(server.client)
        for case in STALLS:
            reply = replies[case.label]
            tally.record("slow clients", judge(reply))
            if reply.status is not None:  # a body cut short: the client may not hear the 400
                assert case.status == 400, f"{case}: {reply}"
                assert reply.json()["error"] == "InvalidInput" and "did not arrive whole" in reply.json()["message"]
        await still_serving(server.client)


def endless(head: bytes) -> Iterator[bytes]:
    yield head
    while True:
        yield b" "


TRICKLES = {
    "headers": b"GET /Probe/busy/x HTTP/1.1\r\nHost: test\r\nX-Slow: ",
    "a body to RPC": request("POST", "/_rpc/Probe/busy/echo", headers=[("Content-Length", "4000")]),
    "a body to fetch": request("POST", "/Probe/busy/x", headers=[("Content-Length", "4000")]),
    "a body to admin": request("POST", "/_admin/actors/Probe/busy/history", headers=[("Content-Length", "4000")]),
}


async def test_clients_that_trickle_are_cut_off_and_hold_no_actor(data_dir: Path, tally: Tally) -> None:
    """A byte every 0.2 s never trips the 1 s read timeout: headers are cut by the
    keep-alive timer, bodies by the call deadline (2 s). Meanwhile no call is in flight
    (bodies are read before the turn, so the actor is free) and the actor they are
    for answers others."""
    async with serving(KINDS, data_dir, **SLOW_OPTIONS) as server:
        replies: dict[str, Reply] = {}

        async def trickle(label: str) -> None:
            replies[label] = await exchange(port(server), endless(TRICKLES[label]), pause=0.2, limit=15)

        async with trio.open_nursery() as nursery:
            for label in TRICKLES:
                nursery.start_soon(trickle, label)
            await trio.sleep(0.5)  # the trickles have started
            health = (await server.client.get("/_health")).json()
            response = await server.client.get("/Probe/busy/x")
            assert (response.status_code, response.json()) == (200, {"name": "busy", "size": 0})
        assert health["calls_in_flight"] == 0, "a turn waits for a slow client"
        assert judge(replies.pop("headers")) == "closed"
        for label, reply in replies.items():
            assert judge(reply, 408, "RequestTimeout") == "json", label
            assert "did not arrive within 2 s" in reply.json()["message"]
        tally.record("slow clients", "closed")
        tally.record("slow clients", "json", len(replies))
        await still_serving(server.client)


# -- many connections ----------------------------------------------------------------------


async def test_many_idle_connections_past_the_cap_wait_while_others_are_served(data_dir: Path, tally: Tally) -> None:
    """300 idle connections against the default cap of 256 (the rest wait in the listen
    backlog of 100): requests on an open connection go on being served and activate new
    actors, requests on new connections are served once idle ones are closed (by the
    keep-alive timer), and the server closes every idle connection."""
    idle, fresh = 300, 20
    async with serving(KINDS, data_dir, **{**OPTIONS, "keep_alive_timeout": 1.0}) as server:
        await still_serving(server.client)  # the client's connection is open before the crowd
        closed: list[Reply] = []
        answers: list[int] = []

        async def sit() -> None:
            closed.append(await exchange(port(server), b"", limit=20))

        async def newcomer(index: int) -> None:
            reply = await exchange(port(server), rpc("add", b'{"args": [%d]}' % index, f"new{index}"), limit=20)
            assert (reply.status, reply.json()) == (200, {"result": index}), str(reply)
            answers.append(index)

        async with trio.open_nursery() as nursery:
            for index in range(idle):
                nursery.start_soon(sit)
                if index % 50 == 49:  # the server shares this thread: let it accept before
                    await trio.sleep(0.05)  # the listen backlog (100) overflows
            await trio.sleep(0.3)
            for index in range(fresh):
                nursery.start_soon(newcomer, index)
            for index in range(30):  # on the open connection: served meanwhile
                response = await server.client.post(f"/_rpc/Probe/kept{index}/add", json={"args": [index]})
                assert response.json() == {"result": index}
        assert sorted(answers) == list(range(fresh))
        assert len(closed) == idle and all(reply.status is None for reply in closed)
        tally.record("connections", "closed", idle)
        tally.record("connections", "served", fresh)
        await still_serving(server.client)


async def test_connections_cannot_take_the_descriptors_actors_need(tmp_path: Path, tally: Tally) -> None:
    """Under the smallest open-file limit the descriptor budget takes with a cap of 64
    connections (404: 356 for the process, the connections and the reserve, and 16
    actors x 3), 150 idle connections leave actors their descriptors: new actors still
    activate. (Without the cap the server would accept every connection it is offered,
    however many the limit can hold.)"""
    async with serve_with_few_descriptors(tmp_path, 404, "--max-connections", "64", "--keep-alive-timeout", "30") as url:
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=1)) as client:
            assert (await client.post("/Counter/first/increment")).json() == {"value": 1}
            sockets = [await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1])) for _ in range(150)]
            try:
                for index in range(20):  # more than --max-active (16 at this limit): some passivate
                    response = await client.post(f"/Counter/c{index}/increment")
                    assert (response.status_code, response.json()) == (200, {"value": 1}), response.text
            finally:
                for sock in sockets:
                    await sock.aclose()
        tally.record("connections", "held or waiting", 150)
