"""Tokens: who may use which HTTP route (``dotdo.auth``) and the transport, on a real
server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from dotdo.actors.examples import Counter
from dotdo import DO, DotdoError, Forbidden, ServeOptions, Unauthorized, connect, serve
from dotdo.auth import Tokens, bearer
from tests.dotdo.serving import Server, dotdo, dotdo_serve, serving

CLIENT = "client-s3cret"
ADMIN = "admin-s3cret"


class Headers(DO):
    async def fetch(self, request: Any) -> dict[str, Any]:
        return {"headers": sorted(request.headers.keys())}


KINDS = (Counter, Headers)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def status(server: Server, method: str, path: str, token: str | None = None, **kwargs: Any) -> int:
    headers = auth(token) if token is not None else {}
    response = await server.client.request(method, path, headers=headers, **kwargs)
    return response.status_code


# -- the policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "admin", "path", "presented", "refusal"),
    [
        (None, None, "/Counter/a", None, None),
        (None, None, "/_admin/alarms", None, None),
        (CLIENT, None, "/_health", None, None),
        (CLIENT, None, "/Counter/a", None, Unauthorized),
        (CLIENT, None, "/Counter/a", "wrong", Unauthorized),
        (CLIENT, None, "/Counter/a", CLIENT, None),
        (CLIENT, None, "/_admin/alarms", CLIENT, Forbidden),
        (CLIENT, ADMIN, "/_admin/alarms", CLIENT, Forbidden),
        (CLIENT, ADMIN, "/_admin/alarms", None, Unauthorized),
        (CLIENT, ADMIN, "/_admin", ADMIN, None),
        (CLIENT, ADMIN, "/_admin/actors/Counter/a/compact", ADMIN, None),
        (CLIENT, ADMIN, "/Counter/a", ADMIN, None),  # the admin token opens client routes too
        (CLIENT, ADMIN, "/_adminx", CLIENT, None),  # a client route that merely starts alike
        (None, ADMIN, "/Counter/a", None, None),
        (None, ADMIN, "/_admin/alarms", None, Unauthorized),
        (None, ADMIN, "/_admin/alarms", ADMIN, None),
    ],
)
def test_routes_ask_for_their_token(client: str | None, admin: str | None, path: str, presented: str | None, refusal: type | None) -> None:
    found = Tokens(client, admin).check(path, presented.encode() if presented is not None else None)
    assert type(found) is refusal if refusal is not None else found is None


@pytest.mark.parametrize(
    ("client", "admin", "problem"),
    [
        ("same", "same", "must differ"),
        ("", None, "non-empty"),
        (None, " padded", "surrounding spaces"),
        ("line\nbreak", None, "printable"),
    ],
)
def test_unusable_tokens_are_refused(client: str | None, admin: str | None, problem: str) -> None:
    with pytest.raises(DotdoError, match=problem):
        Tokens(client, admin)


def test_bearer_reads_only_the_bearer_scheme() -> None:
    assert bearer([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer([(b"authorization", b"bearer  abc ")]) == b"abc"
    assert bearer([(b"authorization", b"Basic abc")]) is None
    assert bearer([(b"x-other", b"Bearer abc")]) is None


# -- on a real server ------------------------------------------------------------------


async def test_a_client_token_guards_every_route_but_health(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, token=CLIENT, admin_token=ADMIN) as server:
        assert await status(server, "GET", "/_health") == 200
        for method, path in [("GET", "/_kinds"), ("POST", "/_rpc/Counter/a/get"), ("GET", "/Headers/a/x")]:
            assert await status(server, method, path) == 401
            assert await status(server, method, path, "wrong") == 401
            assert await status(server, method, path, CLIENT) == 200
            assert await status(server, method, path, ADMIN) == 200
        refused = await server.client.post("/_rpc/Counter/a/increment", json={"args": [1]}, headers=auth("wrong"))
        assert refused.json()["error"] == "Unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["connection"] == "close"  # the unread body ends the connection
        # Nothing ran: the counter is still at zero.
        response = await server.client.post("/_rpc/Counter/a/get", headers=auth(CLIENT))
        assert response.json() == {"result": 0}


async def test_admin_routes_need_the_admin_token(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, token=CLIENT, admin_token=ADMIN) as server:
        compact = "/_admin/actors/Counter/a/compact"
        for path, method in [("/_admin/alarms", "GET"), (compact, "POST")]:
            assert await status(server, method, path) == 401
            assert await status(server, method, path, CLIENT) == 403
            assert await status(server, method, path, ADMIN) == 200
        # The router decodes the path: a percent-encoded admin path is still an admin path.
        assert await status(server, "GET", "/%5Fadmin/alarms", CLIENT) == 403


async def test_admin_routes_are_closed_without_an_admin_token(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, token=CLIENT) as server:
        response = await server.client.get("/_admin/alarms", headers=auth(CLIENT))
        assert response.status_code == 403 and "--admin-token" in response.json()["message"]
        assert "admin: /_admin routes closed" in server.out.getvalue()


async def test_without_tokens_every_route_is_open(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path) as server:
        assert await status(server, "GET", "/_admin/alarms") == 200
        assert await status(server, "POST", "/_rpc/Counter/a/get") == 200
        assert "token required" not in server.out.getvalue()


async def test_fetch_never_sees_the_servers_token(tmp_path: Path) -> None:
    async with serving(KINDS, tmp_path, token=CLIENT) as server:
        response = await server.client.get("/Headers/a/x", headers={**auth(CLIENT), "x-mine": "1"})
        assert "x-mine" in response.json()["headers"]
        assert "authorization" not in response.json()["headers"]


async def test_tokens_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(KINDS, tmp_path, token=CLIENT, admin_token=ADMIN, debug=True) as server:
        for token in (CLIENT, ADMIN, "wrong-guess"):
            for method, path in [("POST", "/_rpc/Counter/a/get"), ("GET", "/_admin/alarms"), ("POST", "/_rpc/Nope/a/b")]:
                response = await server.client.request(method, path, headers=auth(token))
                assert token not in response.text
        printed = server.out.getvalue()
    for secret in (CLIENT, ADMIN, "wrong-guess"):
        assert secret not in caplog.text and secret not in printed


async def test_the_transport_takes_either_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(KINDS, tmp_path, token=CLIENT, admin_token=ADMIN) as server:
        [rpc] = [line.split("rpc:  ", 1)[1] for line in server.out.getvalue().splitlines() if "rpc:  " in line]
        url = rpc.removesuffix(" (token required)")
        for token, added, total in ((ADMIN, 2, 2), (CLIENT, 3, 5)):
            async with connect(url, token=token) as S:
                assert await S.Counter("a").increment(added) == total
        for token in ("wrong-guess", ADMIN + "x", None):
            with pytest.raises(Unauthorized):
                await connect(url, token=token)
    for secret in (CLIENT, ADMIN, "wrong-guess"):
        assert secret not in caplog.text and secret not in server.out.getvalue()


async def test_an_admin_token_equal_to_the_client_token_stops_serve(tmp_path: Path) -> None:
    options = ServeOptions(host="127.0.0.1", port=0, data_dir=tmp_path, token="same", admin_token="same")
    with pytest.raises(DotdoError, match="must differ"):
        await serve(KINDS, options)
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


async def test_cli_commands_present_tokens_from_the_environment(tmp_path: Path) -> None:
    env = {"DOTDO_TOKEN": CLIENT, "DOTDO_ADMIN_TOKEN": ADMIN}
    async with dotdo_serve(tmp_path, "--data", str(tmp_path / "data"), "--rpc-port", "0", env=env) as served:
        assert "token required" in served.output() and "admin: /_admin routes need the admin token" in served.output()
        url = ["--url", served.url]
        refused = await dotdo("call", *url, "Counter", "a", "increment", "2", cwd=tmp_path, env={"DOTDO_TOKEN": ""})
        assert refused.returncode == 1 and b"401" in refused.stderr
        called = await dotdo("call", *url, "Counter", "a", "increment", "2", cwd=tmp_path, env=env)
        assert called.stdout == b"2\n"
        listed = await dotdo("alarms", *url, cwd=tmp_path, env={"DOTDO_ADMIN_TOKEN": ""})
        assert listed.returncode == 1 and b"401" in listed.stderr
        listed = await dotdo("alarms", *url, cwd=tmp_path, env=env)
        assert listed.returncode == 0 and listed.stdout == b"no pending alarms or schedules\n"
        compacted = await dotdo("compact", *url, "Counter", "a", cwd=tmp_path, env={"DOTDO_ADMIN_TOKEN": CLIENT})
        assert compacted.returncode == 1 and b"403" in compacted.stderr
        compacted = await dotdo("compact", *url, "Counter", "a", cwd=tmp_path, env=env)
        assert compacted.returncode == 0, compacted.stderr
    assert CLIENT not in served.output() and ADMIN not in served.output()
    assert CLIENT not in served.errors() and ADMIN not in served.errors()

