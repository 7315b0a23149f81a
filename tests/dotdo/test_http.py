"""The HTTP app served by hypercorn on 127.0.0.1: routes, ids, errors, limits, shutdown."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.responses import PlainTextResponse, Response

from dotdo.actors.examples import Counter
from dotdo import DO, ActorError, DotdoError, InvalidArguments, id_from_name, new_unique_id
from dotdo.http import as_response, error_response
from tests.dotdo.kinds import Waker
from tests.dotdo.serving import Server, open_files_under, serving


class Http(DO):
    async def echo(self, value: Any) -> Any:
        return value

    async def add(self, a: int, b: int = 0) -> int:
        return a + b

    async def nothing(self) -> str:
        return "nothing"

    async def who(self) -> dict[str, Any]:
        return {"namespace": self.id.namespace, "hex": self.id.hex, "name": self.id.name}

    async def boom(self) -> None:
        self.storage.put("written", True)
        raise ValueError("kaboom")

    async def written(self) -> Any:
        return self.storage.get("written")

    async def encodings(self) -> dict[str, Any]:
        return {
            "bytes": b"\x00\xffdata",
            "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "ref": self.S.Http("friend"),
        }

    async def sleep(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "slept"

    async def cross(self, other: str) -> str:
        await trio.sleep(0.2)  # both sides now hold their own turn
        return await self.S.Http(other).echo("crossed")

    async def _private(self) -> int:
        return 1

    def sync(self) -> int:
        return 1

    async def fetch(self, request: Any) -> Any:
        tail = request.url.path.rsplit("/", 1)[-1]
        if tail == "dict":
            return {"kind": "dict", "id": self.id.name}
        if tail == "str":
            return "plain text"
        if tail == "none":
            return None
        if tail == "response":
            return PlainTextResponse("made", status_code=201, headers={"x-actor": "yes"})
        if tail == "int":
            return 5
        if tail == "raise":
            raise KeyError("bad key")
        if tail == "body":
            return {"size": len(await request.body())}
        return {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "body": (await request.body()).decode(),
        }


class Plain(DO):
    """A kind without fetch."""

    async def ping(self) -> str:
        return "pong"


KINDS = (Http, Plain, Counter)


async def rpc(server: Server, namespace: str, actor: str, method: str, *args: Any, **kwargs: Any) -> httpx.Response:
    return await server.client.post(f"/_rpc/{namespace}/{actor}/{method}", json={"args": list(args), "kwargs": kwargs})


async def test_health_and_kinds(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await server.client.get("/_health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "active_actors": 0, "calls_in_flight": 0, "websockets": 0}
        assert (await rpc(server, "Plain", "p", "ping")).json() == {"result": "pong"}
        assert (await server.client.get("/_health")).json()["active_actors"] == 1
        assert (await server.client.head("/_health")).status_code == 200
        response = await server.client.get("/_kinds")
        assert response.status_code == 200
        kinds = response.json()["kinds"]
        assert set(kinds) == {"Http", "Plain", "Counter"}
        assert kinds["Plain"] == {"methods": ["ping"], "fetch": False}
        assert kinds["Counter"] == {"methods": ["get", "increment", "reset"], "fetch": True}
        assert kinds["Http"]["fetch"] is True
        assert "sync" not in kinds["Http"]["methods"] and "_private" not in kinds["Http"]["methods"]
        assert kinds["Http"]["methods"] == sorted(kinds["Http"]["methods"])
    assert "dotdo serving Counter, Http, Plain" in server.out.getvalue()
    assert f"http: {server.url}" in server.out.getvalue()


async def test_rpc_calls_a_method_with_args_and_kwargs(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await rpc(server, "Http", "a", "add", 2, b=3)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"result": 5}
        assert (await rpc(server, "Http", "a", "add", "4")).json() == {"result": 4}  # lax conversion
        body = {"args": [{"nested": [1, None, "é"]}]}
        assert (await server.client.post("/_rpc/Http/a/echo", json=body)).json() == {"result": {"nested": [1, None, "é"]}}
        for raw in (b"", b"  ", b"{}", b'{"args": []}', b'{"kwargs": {}}'):
            response = await server.client.post("/_rpc/Http/a/nothing", content=raw)
            assert response.json() == {"result": "nothing"}, raw


async def test_rpc_results_use_dotdo_encodings(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        result = (await rpc(server, "Http", "a", "encodings")).json()["result"]
        assert base64.b64decode(result["bytes"]) == b"\x00\xffdata"
        assert dt.datetime.fromisoformat(result["when"]) == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        friend = id_from_name("Http", "friend")
        assert result["ref"] == {"$actor": {"namespace": "Http", "id": friend.hex, "name": "friend"}}


async def test_names_and_hex_ids_reach_the_same_actor(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        alice = id_from_name("Counter", "alice")
        assert (await rpc(server, "Counter", "alice", "increment", 2)).json() == {"result": 2}
        assert (await rpc(server, "Counter", alice.hex, "increment")).json() == {"result": 3}
        assert (await server.client.get(f"/Counter/{alice.hex}")).json() == {"value": 3}
        assert (await server.client.get("/Counter/alice")).json() == {"value": 3}
        assert (await rpc(server, "Counter", "bob", "get")).json() == {"result": 0}

        named = (await rpc(server, "Http", "alice", "who")).json()["result"]
        assert named == {"namespace": "Http", "hex": id_from_name("Http", "alice").hex, "name": "alice"}
        unique = new_unique_id("Http")
        by_hex = (await rpc(server, "Http", unique.hex, "who")).json()["result"]
        assert by_hex == {"namespace": "Http", "hex": unique.hex, "name": None}
        # A hex id minted for another namespace is not an id here: it is taken as a name.
        foreign = (await rpc(server, "Http", alice.hex, "who")).json()["result"]
        assert foreign["name"] == alice.hex and foreign["hex"] != alice.hex
        # Percent-encoded names are decoded before they become ids.
        spaced = (await server.client.post("/_rpc/Http/a%20b%C3%A9/who", json={})).json()["result"]
        assert spaced["name"] == "a bé"


async def test_a_name_with_a_slash_reaches_its_own_actor(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await server.client.get("/Http/a%2Fb/dict")
        assert response.json() == {"kind": "dict", "id": "a/b"}
        response = await server.client.post("/_rpc/Http/a%2Fb/who", json={})
        assert response.status_code == 200
        assert response.json()["result"]["name"] == "a/b"


async def test_fetch_results_become_responses(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await server.client.get("/Http/alice/dict")
        assert (response.status_code, response.json()) == (200, {"kind": "dict", "id": "alice"})
        assert response.headers["content-type"] == "application/json"
        response = await server.client.get("/Http/alice/str")
        assert (response.status_code, response.text) == (200, "plain text")
        assert response.headers["content-type"].startswith("text/plain")
        response = await server.client.get("/Http/alice/none")
        assert (response.status_code, response.content) == (204, b"")
        response = await server.client.get("/Http/alice/response")
        assert (response.status_code, response.text, response.headers["x-actor"]) == (201, "made", "yes")


async def test_fetch_gets_the_request(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            content = b"payload" if method in ("POST", "PUT", "PATCH") else b""
            response = await server.client.request(method, "/Http/alice/some/deep/path?x=1&y=two", content=content)
            assert response.status_code == 200
            assert response.json() == {
                "method": method,
                "path": "/Http/alice/some/deep/path",
                "query": {"x": "1", "y": "two"},
                "body": content.decode(),
            }
        response = await server.client.get("/Http/alice")  # no tail: the actor's root
        assert response.json()["path"] == "/Http/alice"


async def test_fetch_errors(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await server.client.get("/Http/alice/int")
        assert response.status_code == 500
        assert response.json()["error"] == "DotdoError"
        assert "fetch returned int;" in response.json()["message"]
        response = await server.client.get("/Http/alice/raise")
        assert response.status_code == 500
        assert response.json() == {
            "error": "ActorError",
            "message": f"KeyError in Http/{id_from_name('Http', 'alice').hex[:16]}: 'bad key'",
            "remote_type": "KeyError",
        }
        response = await server.client.get("/Plain/p/anything")
        assert response.status_code == 404
        assert response.json()["error"] == "MethodNotAllowed"
        assert "lifecycle" in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "error", "message"),
    [
        ("POST", "/_rpc/Nope/a/ping", b"{}", 404, "ActorNotFound", "no actor kind 'Nope'; known kinds: Counter, Http, Plain"),
        ("GET", "/Nope/a", b"", 404, "ActorNotFound", "no actor kind 'Nope'"),
        ("POST", "/_rpc/Http/a/missing", b"{}", 404, "MethodNotAllowed", "Http.missing: no such public method"),
        ("POST", "/_rpc/Http/a/_private", b"{}", 404, "MethodNotAllowed", "names starting with '_' are private"),
        ("POST", "/_rpc/Http/a/sync", b"{}", 404, "MethodNotAllowed", "only async methods"),
        ("POST", "/_rpc/Http/a/fetch", b"{}", 404, "MethodNotAllowed", "a lifecycle hook is not callable"),
        ("POST", "/_rpc/Http/a/on_start", b"{}", 404, "MethodNotAllowed", "a lifecycle hook is not callable"),
        ("POST", "/_rpc/Http/a/echo", b"{not json", 400, "InvalidInput", "the request body is not valid JSON"),
        ("POST", "/_rpc/Http/a/echo", b"\xff\xfe", 400, "InvalidInput", "the request body is not valid UTF-8"),
        ("POST", "/_rpc/Http/a/echo", b"[1]", 400, "InvalidInput", "the request body must be a JSON object"),
        ("POST", "/_rpc/Http/a/echo", b'{"args": [1], "extra": 1}', 400, "InvalidInput", "unknown fields in the request body: extra"),
        ("POST", "/_rpc/Http/a/echo", b'{"args": {"a": 1}}', 400, "InvalidInput", '"args" must be a JSON array'),
        ("POST", "/_rpc/Http/a/echo", b'{"kwargs": [1]}', 400, "InvalidInput", '"kwargs" must be a JSON object'),
        ("POST", "/_rpc/Http/a/add", b'{"args": ["two"]}', 400, "InvalidArguments", "add(): argument 'a': Input should be a valid integer"),
        ("POST", "/_rpc/Http/a/add", b'{"args": []}', 400, "InvalidArguments", "argument 'a': Missing required argument"),
        ("POST", "/_rpc/Http/a/add", b'{"args": [1], "kwargs": {"c": 2}}', 400, "InvalidArguments", "argument 'c': Unexpected keyword argument"),
        ("POST", "/_rpc/Http/a/nothing", b'{"args": [1]}', 400, "InvalidArguments", "nothing() takes no arguments"),
        ("POST", "/_rpc/Http/a%01b/echo", b'{"args": [1]}', 400, "InvalidId", "control characters are not allowed"),
        ("POST", "/_rpc/Http/a%00/echo", b'{"args": [1]}', 400, "InvalidId", "control characters are not allowed"),
        ("GET", "/Http/a%7Fb/dict", b"", 400, "InvalidId", "control characters are not allowed"),
        ("POST", "/_rpc/Http/" + "x" * 513 + "/echo", b'{"args": [1]}', 400, "InvalidId", "the limit is 512"),
        ("POST", "/_rpc/Http/a/boom", b"{}", 500, "ActorError", "ValueError in Http/"),
    ],
)
async def test_errors_map_to_statuses(
    tmp_path: Path, method: str, path: str, content: bytes, status: int, error: str, message: str
) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await server.client.request(method, path, content=content)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"] == error
        assert message in body["message"]
        assert "traceback" not in body
        assert set(body) <= {"error", "message", "remote_type"}
        if status < 500:  # refused before any actor was activated
            assert (await server.client.get("/_health")).json()["active_actors"] == 0


async def test_a_raising_handler_is_a_500_without_traceback_and_rolls_back(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        response = await rpc(server, "Http", "a", "boom")
        assert response.status_code == 500
        body = response.json()
        assert body == {
            "error": "ActorError",
            "message": f"ValueError in Http/{id_from_name('Http', 'a').hex[:16]}: kaboom",
            "remote_type": "ValueError",
        }
        assert "Traceback" not in response.text
        assert (await rpc(server, "Http", "a", "written")).json() == {"result": None}
        assert (await rpc(server, "Http", "a", "add", 1, 1)).json() == {"result": 2}  # still serving


async def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, debug=True) as server:
        body = (await rpc(server, "Http", "a", "boom")).json()
        assert body["error"] == "ActorError" and body["remote_type"] == "ValueError"
        assert "Traceback (most recent call last)" in body["traceback"]
        assert "kaboom" in body["traceback"]
        body = (await server.client.post("/_rpc/Http/a/echo", content=b"{")).json()
        assert body["error"] == "InvalidInput" and "Traceback" in body["traceback"]


async def test_bodies_over_the_limit_are_413(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, max_body=100) as server:
        fits = {"args": ["x" * 50]}
        assert (await server.client.post("/_rpc/Http/a/echo", json=fits)).status_code == 200
        big = json.dumps({"args": ["x" * 200]}).encode()
        for path in ("/_rpc/Http/b/echo", "/Http/b/body"):
            response = await server.client.post(path, content=big)  # declared Content-Length
            assert response.status_code == 413
            assert response.json() == {
                "error": "BodyTooLarge",
                "message": f"request body of {len(big)} bytes or more is over the 100-byte limit",
            }

            async def chunks() -> Any:  # no Content-Length: the limit applies while reading
                for _ in range(10):
                    yield b"x" * 30

            # The server answers before the body is read, then drops the connection
            # without saying so (no "Connection: close"): do not reuse it.
            response = await server.client.post(path, content=chunks(), headers={"connection": "close"})
            assert response.status_code == 413
            assert response.json()["error"] == "BodyTooLarge"
        assert not server.client.is_closed
        assert (await server.client.post("/Http/c/body", content=b"x" * 100)).json() == {"size": 100}


async def test_a_call_past_its_deadline_is_504(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, call_timeout=0.2) as server:
        response = await rpc(server, "Http", "slow", "sleep", 5)
        assert response.status_code == 504
        assert response.json()["error"] == "CallTimeout"
        assert "did not finish within 0.2 s" in response.json()["message"]
        assert (await rpc(server, "Http", "slow", "sleep", 0)).json() == {"result": "slept"}


async def wait_for_calls_in_flight(server: Server, count: int) -> None:
    with trio.fail_after(5):
        while (await server.client.get("/_health")).json()["calls_in_flight"] < count:
            await trio.sleep(0.005)


async def test_a_full_mailbox_is_503(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, max_mailbox=1) as server:
        responses: list[httpx.Response] = []

        async def call(method: str, *args: Any) -> None:
            responses.append(await rpc(server, "Http", "hot", method, *args))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "sleep", 0.3)
            await wait_for_calls_in_flight(server, 1)
            for _ in range(3):
                nursery.start_soon(call, "echo", 1)
            # The rest of the server is unaffected: another actor answers meanwhile.
            other = await rpc(server, "Http", "cool", "echo", 2)
            assert other.json() == {"result": 2}
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 503, 503]
        refused = [r.json() for r in responses if r.status_code == 503]
        assert all(r["error"] == "Overloaded" and "calls waiting" in r["message"] for r in refused)


async def test_a_deadlock_is_503(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        responses: list[httpx.Response] = []

        async def call(me: str, other: str) -> None:
            responses.append(await rpc(server, "Http", me, "cross", other))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "a", "b")
            nursery.start_soon(call, "b", "a")
        assert sorted(r.status_code for r in responses) == [200, 503]
        ok = next(r for r in responses if r.status_code == 200)
        refused = next(r for r in responses if r.status_code == 503)
        assert ok.json() == {"result": "crossed"}
        assert refused.json()["error"] == "DeadlockError"
        assert "Http/a" in refused.json()["message"] and "Http/b" in refused.json()["message"]


async def test_unrouted_paths_are_404(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        assert (await server.client.get("/")).status_code == 404
        assert (await server.client.get("/Http")).status_code == 404
        assert (await server.client.post("/_kinds")).status_code == 405


async def test_shutdown_finishes_calls_in_flight_and_closes_every_database(tmp_path: Path) -> None:
    responses: list[httpx.Response] = []
    async with serving(KINDS, tmp_path) as server:
        for name in ("a", "b", "c"):
            assert (await rpc(server, "Counter", name, "increment")).status_code == 200
        assert (await server.client.get("/Http/d/dict")).status_code == 200
        assert open_files_under(server.data_dir)  # four actors hold their databases open

        async def slow() -> None:
            responses.append(await rpc(server, "Http", "slow", "sleep", 0.3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await wait_for_calls_in_flight(server, 1)
            server.stop.set()  # graceful: stop accepting, let the running call finish
    assert [(r.status_code, r.json()) for r in responses] == [(200, {"result": "slept"})]
    assert open_files_under(server.data_dir) == []
    assert server.out.getvalue().rstrip().endswith("dotdo stopped: every database closed")
    async with serving(KINDS, tmp_path) as again:
        assert (await rpc(again, "Counter", "a", "get")).json() == {"result": 1}


async def test_admin_lists_pending_alarms_and_schedules(tmp_path: Path) -> None:
    async with serving([Waker, Counter], tmp_path) as server:
        assert (await server.client.get("/_admin/alarms")).json() == {"alarms": [], "after": None}
        w1 = (await rpc(server, "Waker", "w1", "wake_in", 3600)).json()["result"]
        w2 = (await rpc(server, "Waker", "w2", "wake_in", 7200)).json()["result"]
        daily = (await rpc(server, "Waker", "w1", "daily")).json()["result"]
        listing = (await server.client.get("/_admin/alarms")).json()
        assert listing["after"] is None
        by_what = {(a["name"], a["kind"], a["item"]): a for a in listing["alarms"]}
        assert set(by_what) == {("w1", "alarm", ""), ("w2", "alarm", ""), ("w1", "schedule", "report")}
        alarm = by_what[("w1", "alarm", "")]
        assert alarm == {
            "namespace": "Waker",
            "id": id_from_name("Waker", "w1").hex,
            "name": "w1",
            "kind": "alarm",
            "item": "",
            "schedule": None,
            "next": w1,
            "retries": 0,
        }
        assert by_what[("w2", "alarm", "")]["next"] == w2
        schedule = by_what[("w1", "schedule", "report")]
        assert (schedule["schedule"], schedule["next"]) == ("daily at 6am", daily)

        pages: list[dict[str, Any]] = []
        after = ""
        for _ in range(5):
            page = (await server.client.get("/_admin/alarms", params={"limit": 1, "after": after})).json()
            pages.extend(page["alarms"])
            if page["after"] is None:
                break
            after = page["after"]
        assert pages == listing["alarms"]

        assert (await server.client.get("/_admin/alarms?namespace=Counter")).json() == {"alarms": [], "after": None}
        assert len((await server.client.get("/_admin/alarms?namespace=Waker")).json()["alarms"]) == 3
        for query, status, message in [
            ("namespace=Nope", 404, "no actor kind 'Nope'"),
            ("limit=0", 400, "limit must be between 1 and 10000"),
            ("limit=10001", 400, "limit must be between 1 and 10000"),
            ("limit=many", 400, "limit must be a whole number"),
            ("after=bad", 400, "after is the cursor of the previous page"),
        ]:
            response = await server.client.get(f"/_admin/alarms?{query}")
            assert response.status_code == status, query
            assert message in response.json()["message"]


def test_error_response_for_errors_that_are_not_dotdo_errors() -> None:
    response = error_response(RuntimeError("secret detail"))
    assert response.status_code == 500
    assert json.loads(response.body) == {
        "error": "InternalError",
        "message": "the server failed to handle the request",
    }
    debug = json.loads(error_response(RuntimeError("secret detail"), debug=True).body)
    assert "secret detail" in debug["traceback"]


def test_error_response_for_dotdo_errors() -> None:
    response = error_response(InvalidArguments("f(): argument 'a': bad"))
    assert response.status_code == 400
    assert json.loads(response.body) == {"error": "InvalidArguments", "message": "f(): argument 'a': bad"}
    response = error_response(ActorError("KeyError", "'k'", address=("Http", "ab" * 32)))
    assert response.status_code == 500
    assert json.loads(response.body)["remote_type"] == "KeyError"


def test_fetch_results_that_are_not_responses() -> None:
    made = Response("x")
    assert as_response(made) is made
    assert json.loads(as_response([1, "a"]).body) == [1, "a"]
    with pytest.raises(DotdoError, match="fetch returned set; return a starlette Response"):
        as_response({1})
