"""The ``dotdo`` command: argument parsing, ``dotdo call`` against a server in this
process, and ``python -m dotdo serve`` / ``call`` as real subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo.actors.examples import EXAMPLES
from dotdo.cli import DEFAULT_URL, _json_or_text, build_parser, main
from dotdo.storage.options import Durability
from tests.dotdo.kinds import Waker
from tests.dotdo.serving import dotdo, dotdo_serve, environment, serving, stop

# -- parsing ---------------------------------------------------------------------------


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.modules == []
    assert (args.host, args.port, args.data) == ("127.0.0.1", 8787, Path("dotdo-data"))
    assert Durability(args.durability) is Durability.NORMAL
    assert (args.max_body, args.call_timeout, args.max_mailbox) == (1024 * 1024, 30.0, 1000)
    assert args.max_active is None and args.env == [] and args.debug is False
    assert args.rpc_port is None and args.token is None


def test_transport_port_follows_the_http_port() -> None:
    from dotdo import ServeOptions

    assert ServeOptions(port=8787).transport_port() == 8788
    assert ServeOptions(port=0).transport_port() == 0  # a free one, like HTTP's
    assert ServeOptions(port=8787, rpc_port=9000).transport_port() == 9000
    assert ServeOptions(port=8787, rpc_port=0).transport_port() is None  # off


def test_token_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOTDO_TOKEN", "from-env")
    assert build_parser().parse_args(["serve"]).token == "from-env"
    assert build_parser().parse_args(["serve", "--token", "given"]).token == "given"


def test_serve_options() -> None:
    args = build_parser().parse_args(
        ["serve", "a.py", "pkg.mod", "--port", "0", "--env", "A=1", "--env", "B=x=y", "--env", "C=",
         "--durability", "full", "--max-body", "10", "--idle-timeout", "0.5", "--debug", "--history", "7d"]
    )
    assert args.history == 7 * 86400.0
    assert build_parser().parse_args(["serve"]).history == 0.0
    assert build_parser().parse_args(["serve", "--history", "90"]).history == 90.0
    assert args.modules == ["a.py", "pkg.mod"]
    assert args.port == 0
    assert args.env == [("A", "1"), ("B", "x=y"), ("C", "")]
    assert args.durability == "full" and args.max_body == 10 and args.idle_timeout == 0.5 and args.debug


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "65536"], "port out of range: 65536"),
        (["serve", "--port", "-1"], "port out of range: -1"),
        (["serve", "--port", "http"], "not a port number: 'http'"),
        (["serve", "--max-body", "0"], "must be positive: '0'"),
        (["serve", "--call-timeout", "-1"], "must be 0 or more seconds: '-1'"),
        (["serve", "--call-timeout", "0"], "must be more than 0 seconds: '0'"),
        (["serve", "--idle-timeout", "soon"], "not a duration (seconds, or 30s, 2m, 12h, 7d, 1h30m): 'soon'"),
        (["serve", "--lease-ttl", "2.5"], "must be whole seconds: '2.5'"),
        (["serve", "--idle-timeout", "2x"], "not a duration"),
        (["serve", "--max-mailbox", "1.5"], "not a number: '1.5'"),
        (["serve", "--env", "NOEQUALS"], "expected KEY=VALUE, got 'NOEQUALS'"),
        (["serve", "--env", "=value"], "expected KEY=VALUE, got '=value'"),
        (["serve", "--durability", "sometimes"], "invalid choice: 'sometimes'"),
        (["serve", "--history", "a week"], "not a duration"),
        (["call", "Counter", "x", "get", "--kw", "novalue"], "expected KEY=VALUE"),
        (["call", "Counter", "x"], "the following arguments are required: method"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in parse_error(argv, capsys)


@pytest.mark.parametrize(
    ("argv", "name", "seconds"),
    [
        (["serve", "--idle-timeout", "2m"], "idle_timeout", 120.0),
        (["serve", "--call-timeout", "1m30s"], "call_timeout", 90.0),
        (["serve", "--read-timeout", "45"], "read_timeout", 45.0),
        (["serve", "--shutdown-grace", "0.5s"], "shutdown_grace", 0.5),
        (["serve", "--history", "12h"], "history", 43200.0),
        (["serve", "--drain-timeout", "10m"], "drain_timeout", 600.0),
        (["serve", "--lease-ttl", "5s"], "lease_ttl", 5),
        (["compact", "Counter", "a", "--retention", "7d"], "retention", 604800.0),
        (["compact", "Counter", "a", "--retention", "0"], "retention", 0.0),
        (["cluster", "drain", "b", "--timeout", "2h"], "timeout", 7200.0),
    ],
)
def test_durations_are_taken_the_same_way_everywhere(argv: list[str], name: str, seconds: float) -> None:
    assert getattr(build_parser(argv).parse_args(argv), name) == seconds


def test_version_is_the_installed_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        build_parser(["--version"]).parse_args(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"dotdo {version('dotdo')}\n"


def test_call_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOTDO_URL", raising=False)
    assert build_parser().parse_args(["call", "Counter", "x", "get"]).url == DEFAULT_URL == "http://127.0.0.1:8787"
    monkeypatch.setenv("DOTDO_URL", "http://127.0.0.1:9999")
    assert build_parser().parse_args(["call", "Counter", "x", "get"]).url == "http://127.0.0.1:9999"


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), ('"5"', "5"), ("hi", "hi"), ('{"a": [1]}', {"a": [1]}), ("null", None), ("true", True), ("{oops", "{oops")],
)
def test_call_arguments_are_json_or_text(text: str, value: Any) -> None:
    assert _json_or_text(text) == value


# -- dotdo call, against a server in this process ----------------------------------------


async def run_main(argv: list[str]) -> int:
    """Run ``dotdo`` in a thread (it blocks on urllib) while the server runs in trio."""

    def target() -> int:
        with pytest.raises(SystemExit) as info:
            main(argv)
        return int(info.value.code or 0)

    with trio.fail_after(20):
        return await trio.to_thread.run_sync(target)


async def test_call_says_what_went_as_json_and_text_takes_it_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(EXAMPLES, tmp_path) as server:
        url = ["--url", server.url]
        assert await run_main(["call", *url, "Customer", "zed", "notify", "123"]) == 1  # notify(message: str)
        error = capsys.readouterr().err
        assert error.startswith("error 400 InvalidArguments:")
        assert "note: sent as JSON values, not text: 123 (int); for text, quote them as JSON ('\"123\"') or give --text" in error
        assert await run_main(["call", *url, "Customer", "zed", "notify", "123", "--text"]) == 0
        assert capsys.readouterr().out == "1\n"
        assert await run_main(["call", *url, "Customer", "zed", "notify", '"456"']) == 0
        assert capsys.readouterr().out == "2\n"
        inbox = await server.client.post("/_rpc/Customer/zed/inbox", json={"args": [], "kwargs": {}})
        assert [m["message"] for m in inbox.json()["result"]] == ["456", "123"]


async def test_call_prints_the_json_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(EXAMPLES, tmp_path) as server:
        url = ["--url", server.url + "/"]
        assert await run_main(["call", *url, "Counter", "x", "increment"]) == 0
        assert capsys.readouterr().out == "1\n"
        assert await run_main(["call", *url, "Counter", "x", "increment", "5"]) == 0
        assert capsys.readouterr().out == "6\n"
        assert await run_main(["call", *url, "Counter", "x", "increment", "--kw", "by=-2"]) == 0
        assert capsys.readouterr().out == "4\n"
        assert await run_main(["call", *url, "Customer", "zoë", "notify", "hi"]) == 0
        assert await run_main(["call", *url, "Customer", "zoë", "notify", '"hi"']) == 0
        assert capsys.readouterr().out == "1\n2\n"
        assert await run_main(["call", *url, "Customer", "zoë", "inbox", "1"]) == 0
        [message] = json.loads(capsys.readouterr().out)
        assert message["message"] == "hi"
        assert await run_main(["call", *url, "Order", "o", "status"]) == 0
        assert capsys.readouterr().out == "null\n"


async def test_call_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(EXAMPLES, tmp_path) as server:
        url = ["--url", server.url]
        assert await run_main(["call", *url, "Counter", "x", "explode"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error 404 MethodNotAllowed: Counter.explode: no such public method")
        assert await run_main(["call", *url, "Nope", "x", "get"]) == 1
        assert capsys.readouterr().err.startswith("error 404 ActorNotFound: no actor kind 'Nope'")
        # An argument that parses as JSON is sent as JSON: 42 is a number, not text.
        assert await run_main(["call", *url, "Customer", "c", "notify", "42"]) == 1
        assert "error 400 InvalidArguments: notify(): argument 'message'" in capsys.readouterr().err
        # A name with characters that must be quoted in a URL.
        assert await run_main(["call", *url, "Counter", "a b?c#d", "increment"]) == 0
        assert capsys.readouterr().out == "1\n"


async def test_alarms_lists_what_is_pending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving([Waker, *EXAMPLES], tmp_path) as server:
        url = ["--url", server.url]
        assert await run_main(["alarms", *url]) == 0
        assert capsys.readouterr().out == "no pending alarms or schedules\n"
        await server.client.post("/_rpc/Waker/w1/wake_in", json={"args": [3600]})
        await server.client.post("/_rpc/Waker/w2/wake_in", json={"args": [7200]})
        await server.client.post("/_rpc/Waker/w1/daily", json={})
        assert await run_main(["alarms", *url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NEXT", "(UTC)", "ACTOR", "WHAT", "RETRIES"]
        assert len(lines) == 4
        assert any("Waker/w1" in line and "schedule report: daily at 6am" in line for line in lines)
        assert sum("Waker/w" in line and line.split()[-2:] == ["alarm", "0"] for line in lines) == 2
        assert await run_main(["alarms", *url, "--json", "--limit", "2"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 2 and all(row["namespace"] == "Waker" for row in rows)
        assert await run_main(["alarms", *url, "--namespace", "Counter"]) == 0
        assert capsys.readouterr().out == "no pending alarms or schedules\n"
        assert await run_main(["alarms", *url, "--namespace", "Nope"]) == 1
        assert capsys.readouterr().err.startswith("error 404 ActorNotFound: no actor kind 'Nope'")


async def test_call_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port on loopback that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert await run_main(["call", "--url", url, "--timeout", "5", "Counter", "x", "get"]) == 2
    assert capsys.readouterr().err.startswith(f"dotdo call: cannot reach {url}:")


_IMPORTED = """
import json, sys
from dotdo.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["call", "Counter", "x", "get"], ["alarms"], ["actors", "Counter"], ["clone", "Counter", "x", "y"], ["branches", "--help"]],
)
def test_client_commands_import_no_server(argv: list[str], tmp_path: Path) -> None:
    """A client command starts fast: it imports neither the layers nor the server (a
    fresh interpreter, against a closed port; benchmarks/startup_bench.py times it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**environment(), "DOTDO_URL": f"http://127.0.0.1:{port}"}
    done = subprocess.run([sys.executable, "-c", _IMPORTED, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=30)
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    heavy = ("dotdo.storage", "dotdo.runtime", "dotdo.actors", "dotdo.server", "dotdo.http", "trio", "apsw", "msgpack", "starlette", "hypercorn")
    assert [name for name in heavy if name in loaded] == []
    assert ("urllib.request" in loaded) == (argv != ["--help"] and "--help" not in argv)


# -- python -m dotdo, as subprocesses ----------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_the_examples_call_them_and_stop_on_sigint(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    async with dotdo_serve(tmp_path, "--data", str(data), "--workers", str(workers)) as served:
        output = served.output()
        with_workers = f" with {workers} workers" if workers > 1 else ""
        assert output.startswith(f"dotdo serving ChatRoom, Counter, Customer, Order{with_workers}\n")
        assert f"  data: {data.resolve()} (durability normal)\n" in output
        first = await dotdo("call", "--url", served.url, "Counter", "x", "increment", cwd=tmp_path)
        assert (first.returncode, first.stdout, first.stderr) == (0, b"1\n", b"")
        second = await dotdo("call", "--url", served.url, "Counter", "x", "increment", "5", cwd=tmp_path)
        assert (second.returncode, second.stdout) == (0, b"6\n")
        placed = await dotdo("call", "--url", served.url, "Order", "o1", "place", "alice", "widget", "--kw", "qty=2", cwd=tmp_path)
        assert placed.returncode == 0
        assert json.loads(placed.stdout)["customer_inbox_size"] == 1
        refused = await dotdo("call", "--url", served.url, "Counter", "x", "_private", cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.decode().startswith("error 404 MethodNotAllowed: Counter._private:")
        assert await stop(served, signal.SIGINT) == 0
        assert served.output().endswith("dotdo stopped: every database closed\n")
        assert "Traceback" not in served.stderr.read_text()
    assert list((data / "Counter").rglob("*.sqlite"))  # the actors' databases are in --data
    assert not (tmp_path / "dotdo-data").exists()


async def test_serve_takes_transport_clients_with_the_token(tmp_path: Path) -> None:
    from dotdo import Unauthorized, connect

    async with dotdo_serve(tmp_path, "--data", str(tmp_path / "data"), "--token", "t0ken") as served:
        [rpc] = [line.split("rpc:  ", 1)[1] for line in served.output().splitlines() if "rpc:  " in line]
        url = rpc.removesuffix(" (token required)")
        assert url.startswith("tcp://127.0.0.1:") and rpc.endswith("(token required)")
        with pytest.raises(Unauthorized):
            await connect(url, token="wrong")
        async with connect(url, token="t0ken") as S:
            assert await S.Counter("x").increment(5) == 5
            placed = await S.Order("o1").place("alice", "widget", qty=2)
            assert placed["customer_inbox_size"] == 1
        refused = await dotdo("call", "--url", served.url, "Counter", "x", "get", cwd=tmp_path)
        assert refused.returncode == 1 and b"401 Unauthorized" in refused.stderr
        http = await dotdo("call", "--url", served.url, "Counter", "x", "get", cwd=tmp_path, env={"DOTDO_TOKEN": "t0ken"})
        assert http.stdout == b"5\n"  # one server, one actor, whichever way it is reached
        assert await stop(served, signal.SIGTERM) == 0
    async with dotdo_serve(tmp_path, "--data", str(tmp_path / "data"), "--rpc-port", "0") as served:
        assert "rpc:" not in served.output()


async def test_serve_a_user_module_by_path_and_stop_on_sigterm(tmp_path: Path) -> None:
    module = tmp_path / "greeter.py"
    module.write_text(
        "from dotdo import DO\n\n\n"
        "class Greeter(DO):\n"
        "    async def hello(self, name: str) -> str:\n"
        "        return f\"hello {name} from {self.id.name} in {self.env['region']}\"\n"
    )
    async with dotdo_serve(tmp_path, str(module), "--data", "data", "--env", "region=eu") as served:
        assert served.output().startswith("dotdo serving Greeter\n")
        result = await dotdo("call", "--url", served.url, "Greeter", "g", "hello", "bob", cwd=tmp_path)
        assert (result.returncode, result.stdout) == (0, b'"hello bob from g in eu"\n')
        missing = await dotdo("call", "--url", served.url, "Counter", "x", "get", cwd=tmp_path)
        assert missing.returncode == 1
        assert b"error 404 ActorNotFound: no actor kind 'Counter'; known kinds: Greeter" in missing.stderr
        assert await stop(served, signal.SIGTERM) == 0
        assert "dotdo stopped: every database closed" in served.output()
    assert (tmp_path / "data" / "Greeter").is_dir()  # --data relative to the working folder


async def test_serve_refuses_a_module_it_cannot_load(tmp_path: Path) -> None:
    result = await dotdo("serve", "--port", "0", str(tmp_path / "missing.py"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == f"dotdo serve: no such file: {tmp_path / 'missing.py'}"
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    result = await dotdo("serve", "--port", "0", str(empty), cwd=tmp_path)
    assert result.returncode == 2
    assert "defines no actor kind" in result.stderr.decode()
    assert result.stdout == b""


@pytest.mark.parametrize(("workers", "fit"), [(1, 94), (2, 88)])
async def test_serve_refuses_a_max_active_the_open_file_limit_cannot_hold(tmp_path: Path, workers: int, fit: int) -> None:
    args = ("serve", "--port", "0", "--workers", str(workers), "--max-active", str(fit + 1))
    result = await dotdo(*args, cwd=tmp_path, nofile=1024)
    assert result.returncode == 1
    error = result.stderr.decode()
    assert error.startswith(f"dotdo serve: --max-active {fit + 1} does not fit the open-file limit (1024)")
    assert f"at most {fit} fit" in error and "raise the limit (ulimit -n" in error
    assert "lower --max-active or --max-connections" in error
    assert result.stdout == b"" and not (tmp_path / "dotdo-data").exists()  # nothing started


async def test_serve_refuses_an_open_file_limit_too_small_for_its_connections(tmp_path: Path) -> None:
    result = await dotdo("serve", "--port", "0", "--workers", "1", cwd=tmp_path, nofile=512)
    assert result.returncode == 1
    error = result.stderr.decode()
    assert error.startswith("dotdo serve: the open-file limit (512) is too small: the server needs 740 descriptors")
    assert "ulimit -n 788 or more) or lower --max-connections" in error


async def test_serve_under_a_low_limit_takes_the_active_actors_it_has_room_for(tmp_path: Path) -> None:
    # 512 = process 32 + HTTP 34 + transport 98 + reserve 128 + WebSockets 55 (a quarter of
    # the 220 left: the hard limit is 512 too) + 55 actors x 3
    args = ("--max-connections", "32", "--log-level", "info")
    async with dotdo_serve(tmp_path, *args, nofile=512) as served:
        errors = served.errors()
        assert "limit 512, process 32, HTTP 34, transport 98, worker links 0, transient reserve 128, WebSockets 55, actors 55 x 3" in errors
        assert "leaves room for 55 WebSockets per process, not 4096" in errors
        assert await stop(served, signal.SIGTERM) == 0


async def test_serve_raises_its_soft_open_file_limit_for_its_websockets(tmp_path: Path) -> None:
    # soft 1024, hard 8192: the WebSockets' 4096 come on top of the 1024, which the rest
    # spends as before (94 actors)
    async with dotdo_serve(tmp_path, "--log-level", "info", nofile=(1024, 8192)) as served:
        assert "descriptors: limit 5120, process 32, HTTP 258, transport 322, worker links 0, transient reserve 128, WebSockets 4096, actors 94 x 3" in served.errors()
        assert await stop(served, signal.SIGTERM) == 0
    async with dotdo_serve(tmp_path, "--log-level", "info", "--max-websockets", "0", nofile=(1024, 8192)) as served:
        assert "descriptors: limit 1024, process 32, HTTP 258, transport 322, worker links 0, transient reserve 128, actors 94 x 3" in served.errors()
        assert await stop(served, signal.SIGTERM) == 0


async def test_lifecycle_commands_reach_the_admin_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(EXAMPLES, tmp_path) as server:
        url = ["--url", server.url]
        assert await run_main(["call", *url, "Counter", "a", "increment", "41"]) == 0
        capsys.readouterr()
        assert await run_main(["clone", *url, "Counter", "a", "b", "--no-alarms"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["name"] == "b" and report["alarms"] is False
        assert await run_main(["call", *url, "Counter", "b", "increment"]) == 0
        assert capsys.readouterr().out == "42\n"
        assert await run_main(["compact", *url, "Counter", "a", "--retention", "0"]) == 0
        assert json.loads(capsys.readouterr().out)["bytes_after"] > 0
        assert await run_main(["clone", *url, "Counter", "a", "b"]) == 1
        assert capsys.readouterr().err.startswith("error 409 ActorExists: the actor Counter/")
        assert await run_main(["shard", *url, "Counter", "a", "2"]) == 1
        assert "key-value store holds entries" in capsys.readouterr().err
        response = await server.client.post("/_admin/actors/Counter/a/explode", json={})
        assert response.status_code == 400 and "unknown lifecycle operation" in response.json()["message"]
        response = await server.client.post("/_admin/actors/Counter/a/clone", json={"new_id": 5})
        assert response.status_code == 400


def test_bookmark_times() -> None:
    from dotdo.cli import _when

    assert _when("1700000000") == 1700000000.0
    assert _when("2026-11-23T10:00:00+00:00") == 1795428000.0
    assert _when("2026-11-23T10:00:00") == 1795428000.0
    import time

    assert abs(_when("-1h") - (time.time() - 3600)) < 5
    with pytest.raises(SystemExit):
        _when("yesterday")


async def test_a_reader_that_goes_away_ends_the_listing_quietly(tmp_path: Path) -> None:
    async with serving([Waker], tmp_path) as server:
        async def arm(i: int) -> None:
            await server.client.post(f"/_rpc/Waker/w{i}/wake_in", json={"args": [3600]})

        async with trio.open_nursery() as nursery:  # more alarms than a pipe holds (64 KiB)
            for i in range(500):
                nursery.start_soon(arm, i)
        env = environment()
        script = f"{sys.executable} -m dotdo alarms --json --url {server.url} | head -1"
        with trio.fail_after(30):
            done = await trio.run_process(["sh", "-c", script], capture_stdout=True, capture_stderr=True, env=env, check=False)
        assert done.returncode == 0 and json.loads(done.stdout)["namespace"] == "Waker"
        assert done.stderr == b""  # no BrokenPipeError traceback


async def test_a_second_server_of_a_data_directory_refuses_to_start_and_names_the_first(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    async with dotdo_serve(tmp_path, "--data", data) as first:
        second = await dotdo("serve", "--port", "0", "--data", data, cwd=tmp_path)
        assert second.returncode == 1
        error = second.stderr.decode()
        assert error.startswith(f"dotdo serve: {data} is served already, by process {first.process.pid} at {first.url}")
        assert "stop it first, or serve another --data" in error
        assert await stop(first, signal.SIGTERM) == 0
    async with dotdo_serve(tmp_path, "--data", data) as again:  # once it stopped, the directory is free
        assert await stop(again, signal.SIGTERM) == 0


async def test_actors_lists_a_namespace_with_names_sizes_and_alarms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving([Waker, *EXAMPLES], tmp_path) as server:
        for name in ("carol", "alice", "bob"):
            await server.client.post(f"/_rpc/Counter/{name}/increment", json={"args": [], "kwargs": {}})
        await server.client.post("/_rpc/Waker/w1/wake_in", json={"args": [3600]})
        await server.client.post("/_rpc/Waker/w1/daily", json={})
        page = (await server.client.get("/_admin/actors/Counter", params={"limit": 2})).json()
        assert page["namespace"] == "Counter" and len(page["actors"]) == 2 and page["after"] == page["actors"][-1]["id"]
        rest = (await server.client.get("/_admin/actors/Counter", params={"after": page["after"]})).json()
        listed = page["actors"] + rest["actors"]
        assert rest["after"] is None and sorted(a["name"] for a in listed) == ["alice", "bob", "carol"]
        assert [a["id"] for a in listed] == sorted(a["id"] for a in listed)  # id order
        assert all(a["bytes"] > 0 and a["last_write"] and a["alarm"] is None and a["schedules"] == 0 for a in listed)
        [waker] = (await server.client.get("/_admin/actors/Waker")).json()["actors"]
        assert waker["name"] == "w1" and waker["alarm"] and waker["schedules"] == 1
        assert (await server.client.get("/_admin/actors/Nope")).status_code == 404
        assert (await server.client.get("/_admin/actors/Counter", params={"after": "zz"})).status_code == 400
        assert (await server.client.get("/_admin/actors/Counter", params={"limit": 0})).status_code == 400

        url = ["--url", server.url]
        assert await run_main(["actors", *url, "Counter"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["NAME", "ID", "BYTES", "LAST", "WRITE", "(UTC)", "ALARM", "(UTC)", "SCHEDULES"]
        assert sorted(line.split()[0] for line in lines[1:]) == ["alice", "bob", "carol"]
        assert await run_main(["actors", *url, "Waker", "--json"]) == 0
        [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert row["name"] == "w1" and row["schedules"] == 1
        assert await run_main(["actors", *url, "Order"]) == 0
        assert capsys.readouterr().out == "no actors of Order\n"


async def test_serve_logs_json_lines_and_an_access_log(tmp_path: Path) -> None:
    import httpx

    args = ("--log-format", "json", "--access-log", "--log-level", "info", "--data", str(tmp_path / "data"))
    async with dotdo_serve(tmp_path, *args) as served:
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(f"{served.url}/Counter/visits/increment")).json() == {"value": 1}
            assert (await client.get(f"{served.url}/Nope/x")).status_code == 404
        with trio.fail_after(10):
            while "/Nope/x" not in served.errors():
                await trio.sleep(0.05)
        assert await stop(served, signal.SIGTERM) == 0
    lines = [json.loads(line) for line in served.errors().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line["message"] for line in lines if line["logger"] == "dotdo.access"]
    assert any('"POST /Counter/visits/increment HTTP/1.1" 200' in m for m in access)
    assert any('"GET /Nope/x HTTP/1.1" 404' in m for m in access)
    assert any(line["logger"] == "dotdo.server" and line["level"] == "info" for line in lines)


async def test_the_access_log_is_heard_at_the_default_level(tmp_path: Path) -> None:
    import httpx

    async with dotdo_serve(tmp_path, "--access-log", "--data", str(tmp_path / "data")) as served:
        async with httpx.AsyncClient(timeout=10) as client:
            await client.get(f"{served.url}/Counter/a")
        with trio.fail_after(10):
            while "GET /Counter/a" not in served.errors():
                await trio.sleep(0.05)
        line = next(line for line in served.errors().splitlines() if "GET /Counter/a" in line)
        assert " INFO dotdo.access: 127.0.0.1:" in line and '"GET /Counter/a HTTP/1.1" 200 ' in line and line.endswith("us")
        assert await stop(served, signal.SIGTERM) == 0


def test_serve_takes_its_defaults_from_dotdo_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dotdo.toml").write_text(
        '[serve]\nmodules = ["app.py"]\nworkers = 1\ndata = "var/dotdo"\nidle-timeout = "2m"\nhistory = "7d"\n'
        'access_log = true\nenv = { REGION = "eu", DEBUG = true }\nlog-format = "json"\n'
    )
    args = build_parser(["serve"]).parse_args(["serve"])
    assert args.modules == ["app.py"] and args.workers == 1 and args.data == Path("var/dotdo")
    assert args.idle_timeout == 120.0 and args.history == 7 * 86400.0 and args.access_log and args.log_format == "json"
    assert args.env == [("REGION", "eu"), ("DEBUG", "true")]
    argv = ["serve", "other.py", "--idle-timeout", "30"]  # the command line wins
    args = build_parser(argv).parse_args(argv)
    assert args.modules == ["other.py"] and args.idle_timeout == 30.0 and args.workers == 1
    (tmp_path / "elsewhere.toml").write_text('[serve]\nport = 9000\n')
    argv = ["serve", "--config", "elsewhere.toml"]
    assert build_parser(argv).parse_args(argv).port == 9000
    with pytest.raises(SystemExit):
        build_parser(["serve", "--config", "missing.toml"])
    assert "--config missing.toml: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\nidle-timeout = \"soon\"\n", "dotdo.toml: [serve] argument --idle-timeout: not a duration"),
        ("[serve]\nworkerz = 2\n", "dotdo.toml: unknown option 'workerz' in [serve] (see dotdo serve --help)"),
        ("[serve]\nlog-format = \"xml\"\n", "dotdo.toml: [serve] argument --log-format: invalid choice: 'xml'"),
        ("[serve]\naccess-log = \"yes\"\n", "dotdo.toml: [serve] argument --access-log: ignored explicit argument 'yes'"),
        ("[serve\n", "dotdo.toml: "),
        ("[client]\nurl = 1\n", "dotdo.toml: unknown table 'client'"),
        ("[serve]\nport = true\n", "dotdo.toml: [serve] argument --port: expected one argument"),
        ("[serve]\nenv = 3\n", "dotdo.toml: [serve] env: must be a table of KEY = value"),
    ],
)
def test_a_bad_dotdo_toml_stops_serve_naming_what_is_wrong(
    text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dotdo.toml").write_text(text)
    with pytest.raises(SystemExit) as info:
        build_parser(["serve"])
    assert info.value.code == 2 and message in capsys.readouterr().err
