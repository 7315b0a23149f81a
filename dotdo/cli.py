"""The ``dotdo`` command: ``serve``, ``call``, ``alarms`` and the lifecycle commands
(``clone``, ``compact``, ``branch``, ``checkout``, ``merge``, ``branches``,
``delete-branch``, ``diff``, ``bookmark``, ``restore``, ``history``, ``promote``,
``shard``, ``unshard``, ``query``); ``dotdo <command> --help`` for each."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dotdo.durations import duration, positive_duration, whole_seconds

if TYPE_CHECKING:
    import urllib.error

# A client command imports only what it uses (argparse, json, urllib): what serving
# needs is imported by cmd_serve and by the serve command's arguments, built only when
# that command is the one run. benchmarks/startup_bench.py measures the start-up.

DEFAULT_URL = "http://127.0.0.1:8787"


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"etcd URLs start with http:// or https://, got {url!r}")
    if not urls:
        raise argparse.ArgumentTypeError("give at least one etcd URL")
    return urls


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the ``dotdo`` command.

    Every command is listed, but only the one that ``argv`` names gets its arguments
    (every command does when ``argv`` is None): a client command then neither builds
    serve's two dozen arguments nor imports what they need.
    """
    parser = argparse.ArgumentParser(prog="dotdo", description="Durable Objects for Python.")
    parser.add_argument("--version", action="version", version=f"dotdo {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    named = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), "")
    for command, (summary, description, add_arguments) in _commands().items():
        sub = commands.add_parser(command, help=summary, description=description)
        if named is None or named == command:
            add_arguments(sub)
            if command == "serve" and argv is not None:
                _read_config(sub, argv)
    return parser


def _read_config(serve: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """serve's defaults from ``--config PATH``, or ``./dotdo.toml`` when there is one
    (``dotdo.config_file``); the command line still wins."""
    from pathlib import Path

    from dotdo.config_file import FILE, ConfigError, serve_defaults

    path: Path | None = None
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            path = Path(argv[index + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
    if path is None:
        if not Path(FILE).is_file():
            return
        path = Path(FILE)
    elif not path.is_file():
        serve.error(f"--config {path}: no such file")
    try:
        serve.set_defaults(**serve_defaults(serve, path))
    except ConfigError as exc:
        serve.error(str(exc))


def _version() -> str:
    """The installed distribution's version (the source tree's, when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dotdo")
    except PackageNotFoundError:
        return "(not installed)"


def _commands() -> dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]]:
    """Each command: its summary, its description, and what adds its arguments."""
    commands: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
        "serve": (
            "serve actor kinds over HTTP",
            "Serve every DO subclass found in the given modules (default: the built-in "
            "examples Counter, Customer, Order and ChatRoom). Stops cleanly on Ctrl-C or SIGTERM.",
            _serve_arguments,
        ),
        "call": (
            "call an actor's method on a running server",
            "Call NAMESPACE/ID.METHOD on a running server and print the JSON result. "
            "Each ARG is parsed as JSON, or taken as a string when it is not JSON "
            '(dotdo call Customer alice notify \'"hi"\' and ... notify hi are the same; '
            "123 is the number, '\"123\"' or --text the string).",
            _call_arguments,
        ),
        "alarms": (
            "list pending alarms and schedules of a running server",
            "List every pending alarm and schedule of a running server, by actor, "
            "with the time it runs next (UTC).",
            _alarms_arguments,
        ),
        "actors": (
            "list the actors of a namespace on a running server",
            "List the actors of NAMESPACE that the server's data directory holds, in id order: "
            "each one's name (as it was created), id, size on disk, last write, and pending alarm "
            "and schedules. Nothing is activated.",
            _actors_arguments,
        ),
        "cluster": (
            "see and steer a cluster of nodes: status, drain",
            "The cluster's state as etcd holds it (nodes, the slots each owns and their epochs, "
            "what is moving, what is unavailable), and draining a node. Reads etcd directly, "
            "so it works whichever nodes are up.",
            _cluster_arguments,
        ),
    }
    for command, (summary, _) in LIFECYCLE.items():
        description = f"{summary[0].upper()}{summary[1:]}, on a running server."
        commands[command] = (summary, description, functools.partial(_lifecycle_arguments, command=command))
    return commands


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    from pathlib import Path

    from dotdo.storage.options import Durability

    serve.add_argument("modules", nargs="*", metavar="MODULE", help="dotted module name or path to a .py file")
    serve.add_argument(
        "--config", metavar="PATH",
        help="a TOML file whose [serve] table gives these options' defaults (default: ./dotdo.toml when there is one)",
    )  # fmt: skip
    serve.add_argument("--data", type=Path, default=Path("dotdo-data"), help="data directory (default: ./dotdo-data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8787, help="HTTP port; 0 picks a free one (default: 8787)")
    serve.add_argument(
        "--rpc-port",
        type=_port,
        default=None,
        help="port of the msgpack/TCP transport; 0 turns it off (default: the HTTP port + 1)",
    )
    serve.add_argument(
        "--token",
        default=os.environ.get("DOTDO_TOKEN") or None,
        help="client token every HTTP route but /_health and the TCP transport ask for "
        "(default: $DOTDO_TOKEN; none: open). Prefer the variable: other users can read command lines",
    )
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("DOTDO_ADMIN_TOKEN") or None,
        help="admin token the /_admin routes (lifecycle, alarms) ask for; must differ from the "
        "client token (default: $DOTDO_ADMIN_TOKEN; none: open without a client token, else closed)",
    )
    serve.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        metavar="N",
        help="worker processes, each owning a share of the actors (default: the number of cores)",
    )
    serve.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default="normal",
        help="normal: commits survive a killed process; full: also power loss (default: normal)",
    )
    serve.add_argument(
        "--history",
        type=duration,
        default=0.0,
        metavar="SECONDS",
        help="point-in-time history kept per actor for bookmark/restore, e.g. 604800 or 7d "
        "(default: 0, off; every commit is then archived too, which costs write speed and disk)",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="serve the data directory for reading only: writes get 503, nothing is created, alarms wait "
        "(automatic when the directory cannot be written)",
    )
    serve.add_argument("--max-body", type=_positive(int), default=1024 * 1024, metavar="BYTES", help="largest request body (default: 1048576)")
    serve.add_argument(
        "--max-ws-message", type=_positive(int), default=1024 * 1024, metavar="BYTES",
        help="largest WebSocket message, either way (default: 1048576); a larger one from a client closes its socket (1009)",
    )
    serve.add_argument("--idle-timeout", type=positive_duration, default=120.0, metavar="SECONDS", help="passivate actors idle this long (default: 120)")
    serve.add_argument(
        "--max-active",
        type=_positive(int),
        default=None,
        metavar="N",
        help="active actors kept at most, per worker; each holds 3 file descriptors (default: what the open-file "
        "limit leaves once connections, worker links and a reserve are counted; a number that does not fit is refused)",
    )
    serve.add_argument("--call-timeout", type=positive_duration, default=30.0, metavar="SECONDS", help="deadline of a call (default: 30)")
    serve.add_argument("--cpu-limit", type=positive_duration, default=30.0, metavar="SECONDS", help="CPU time one turn may use; past it the turn is stopped and rolled back, and the actor starts afresh (default: 30)")
    serve.add_argument("--max-mailbox", type=_positive(int), default=1000, metavar="N", help="calls that may wait for one actor before 503 (default: 1000)")
    serve.add_argument("--shutdown-grace", type=positive_duration, default=10.0, metavar="SECONDS", help="time in-flight calls get on shutdown (default: 10)")
    serve.add_argument(
        "--max-connections",
        type=_positive(int),
        default=256,
        metavar="N",
        help="open HTTP connections at most, more wait to be accepted; and open transport connections at most, more are "
        "refused (default: 256 each, per worker); each holds a file descriptor, taken from what --max-active can have",
    )
    serve.add_argument(
        "--max-websockets",
        type=_count,
        default=None,
        metavar="N",
        help="open WebSockets at most, per worker; an upgrade past it gets 503 (default: 4096, or what the open-file "
        "limit fits); an upgraded connection leaves --max-connections, and the server raises its soft open-file limit "
        "by this many when the hard limit allows",
    )
    serve.add_argument("--keep-alive-timeout", type=positive_duration, default=5.0, metavar="SECONDS", help="close a connection idle this long between requests, or still sending its headers (default: 5)")
    serve.add_argument("--read-timeout", type=positive_duration, default=30.0, metavar="SECONDS", help="close a connection whose client sends nothing for this long mid-request; a body must also arrive whole within --call-timeout (default: 30)")
    serve.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE", help="a value actors read as self.env[KEY]; repeatable")
    cluster = serve.add_argument_group(
        "cluster", "Join a cluster of nodes coordinated by etcd; the cluster secret comes from $DOTDO_CLUSTER_SECRET"
    )
    cluster.add_argument("--cluster", type=_urls, default=(), metavar="URLS", help="etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379): serve as a node of that cluster")
    cluster.add_argument("--node", metavar="NAME", help="this node's name in the cluster (letters, digits, - and _); required with --cluster")
    cluster.add_argument("--advertise", metavar="HOST:PORT", help="where the other nodes reach this node's transport (default: --host and the transport's port)")
    cluster.add_argument("--lease-ttl", type=whole_seconds, default=5, metavar="SECONDS", help="the node's etcd lease TTL: a node that cannot renew it stops serving before it expires (default: 5)")
    cluster.add_argument("--slots", type=_positive(int), default=256, metavar="N", help="slots addresses hash to, when this node forms a new cluster (default: 256)")
    cluster.add_argument("--drain-timeout", type=positive_duration, default=120.0, metavar="SECONDS", help="time a stopping node has to hand its slots to the others (default: 120)")
    cluster.add_argument("--replicas", type=_count, default=2, metavar="R", help="copies of each of this node's slots kept on other nodes, at most one per node; 0 turns replication off; give every node the same (default: 2)")
    cluster.add_argument("--ack", choices=["quorum", "all", "none"], default="quorum", help="replicas that hold a commit before the turn's reply leaves: a majority of the copies, all of them, or none (asynchronous: what they lack is lost with the primary's disk) (default: quorum)")
    serve.add_argument("--debug", action="store_true", help="include tracebacks in error responses")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="(default: warning)")
    serve.add_argument("--log-format", default="text", choices=["text", "json"], help="text for people, or JSON lines for machines (default: text)")
    serve.add_argument("--access-log", action="store_true", help="log a line per HTTP request and WebSocket upgrade (dotdo.access), whatever --log-level says")



def _call_arguments(call: argparse.ArgumentParser) -> None:
    call.add_argument("namespace")
    call.add_argument("id", help="a name, or a 64-hex id")
    call.add_argument("method")
    call.add_argument("args", nargs="*", metavar="ARG")
    call.add_argument("--kw", type=_env_pair, action="append", default=[], metavar="NAME=JSON", help="a keyword argument; repeatable")
    call.add_argument(
        "--text", action="store_true",
        help="take every ARG and keyword value as text, never as JSON (123 is then the string \"123\")",
    )  # fmt: skip
    _server_arguments(call, timeout=60.0)


def _alarms_arguments(alarms: argparse.ArgumentParser) -> None:
    alarms.add_argument("--namespace", help="only actors of this namespace")
    alarms.add_argument("--limit", type=_positive(int), default=1000, metavar="N", help="list at most N (default: 1000)")
    alarms.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _server_arguments(alarms, timeout=30.0)


def _actors_arguments(actors: argparse.ArgumentParser) -> None:
    actors.add_argument("namespace")
    actors.add_argument("--limit", type=_positive(int), default=1000, metavar="N", help="list at most N (default: 1000)")
    actors.add_argument("--after", metavar="ID", help="start after this id (the last of a listing before)")
    actors.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _server_arguments(actors, timeout=30.0)


def _cluster_arguments(cluster: argparse.ArgumentParser) -> None:
    from dotdo.cluster_cli import add_arguments

    add_arguments(cluster, _urls)


def _server_arguments(sub: argparse.ArgumentParser, timeout: float) -> None:
    """The arguments of a command that talks to a running server."""
    sub.add_argument("--url", default=os.environ.get("DOTDO_URL", DEFAULT_URL), help=f"server URL (default: $DOTDO_URL or {DEFAULT_URL})")
    sub.add_argument("--timeout", type=positive_duration, default=timeout, metavar="SECONDS", help=f"give up after this long (default: {timeout:g})")


# command: (help, [(positional argument, help)]); the operation is named like the
# command (dashes as underscores) unless LIFECYCLE_OPERATION says otherwise.
LIFECYCLE: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "clone": ("copy an actor's data to a new actor of the same kind", [("new_id", "the copy's name or id")]),
    "compact": ("fold old events and actions, vacuum, truncate the WAL; prints bytes before and after", []),
    "branch": ("fork the actor's current state into a new branch", [("name", "the branch")]),
    "checkout": ("make the actor serve another branch", [("name", "the branch")]),
    "merge": ("bring a branch's changes since the fork into the current branch", [("source", "the branch to merge")]),
    "branches": ("list the actor's branches", []),
    "delete-branch": ("delete a branch (not the current one)", [("name", "the branch")]),
    "diff": ("rows inserted, updated and deleted per table between two branches", [("a", "from this branch")]),
    "bookmark": ("a bookmark of the actor's state now, or at --at", []),
    "restore": ("restore the actor to a bookmark; prints the undo bookmark", [("bookmark", "from `dotdo bookmark`")]),
    "history": ("the actor's restore window and its size on disk", []),
    "promote": ("make a thing of the actor's store an actor of its own", [("thing_id", "the thing's $id")]),
    "shard": ("split the actor's data over N shards by a key (on a sharded actor: reshard)", [("n", "how many shards")]),
    "unshard": ("bring a sharded actor's data back into it", []),
    "query": ("query the actor's semantic store (fans out over shards)", [("op", "list, count, find_one, get, search, nearest")]),
}
LIFECYCLE_OPERATION = {"unshard": "shard"}


def _lifecycle_arguments(sub: argparse.ArgumentParser, command: str) -> None:
    sub.add_argument("namespace")
    sub.add_argument("id", help="a name, or a 64-hex id")
    for name, text in LIFECYCLE[command][1]:
        sub.add_argument(name, type=int if name == "n" else str, help=text)
    if command == "clone":
        sub.add_argument("--no-alarms", action="store_true", help="the copy gets no alarm and no schedules")
    if command == "compact":
        sub.add_argument("--retention", type=duration, default=None, metavar="SECONDS", help="keep events this recent (default: the server's, 7 days)")
    if command == "merge":
        sub.add_argument("--policy", choices=["fail", "source", "current"], default="fail", help="on rows changed on both sides: fail and change nothing (default), or let one side win")
    if command == "diff":
        sub.add_argument("b", nargs="?", default=None, help="to this branch (default: the current one)")
    if command == "bookmark":
        sub.add_argument("--at", default=None, metavar="TIME", help="a past time: ISO 8601, epoch seconds, or -1h / -30m / -2d ago")
    if command == "shard":
        sub.add_argument("--key", default="$id", help="the field (and method parameter) to split by (default: $id)")
    if command == "query":
        sub.add_argument("--arg", type=_env_pair, action="append", default=[], metavar="NAME=JSON", help="an argument of the query, e.g. type=Order, limit=10; repeatable")
    _server_arguments(sub, timeout=300.0)


def _operation_body(args: argparse.Namespace) -> dict[str, Any]:
    command = args.command
    arguments: dict[str, Any] = {}
    for name, _ in LIFECYCLE[command][1]:
        arguments[name] = getattr(args, name)
    if command == "clone":
        arguments["alarms"] = not args.no_alarms
    elif command == "compact" and args.retention is not None:
        arguments["retention"] = args.retention
    elif command == "merge":
        arguments["policy"] = args.policy
    elif command == "diff" and args.b is not None:
        arguments["b"] = args.b
    elif command == "bookmark" and args.at is not None:
        arguments["at"] = _when(args.at)
    elif command == "shard":
        arguments["key"] = args.key
    elif command == "unshard":
        arguments["n"] = 1
    elif command == "query":
        arguments.update({k: _json_or_text(v) for k, v in args.arg})
    return arguments


def _when(text: str) -> float:
    """Epoch seconds from ISO 8601, epoch seconds, or ``-<n><s|m|h|d>`` ago."""
    ago = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text.strip())
    if ago:
        return time.time() - float(ago.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"dotdo: --at {text!r} is not ISO 8601, epoch seconds or -1h style") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def cmd_lifecycle(args: argparse.Namespace) -> int:
    operation = LIFECYCLE_OPERATION.get(args.command, args.command.replace("-", "_"))
    return _post_and_print(args, ("_admin", "actors", args.namespace, args.id, operation), _operation_body(args))


def _post_and_print(args: argparse.Namespace, parts: tuple[str, ...], body: Any) -> int:
    """POST ``body`` as JSON to the path of ``parts`` (each quoted) on ``args.url`` and
    print the ``result`` of the answer; the exit status."""
    payload = _request(args, parts, body=body)
    print(json.dumps(payload.get("result"), indent=2, ensure_ascii=False))
    return 0


def _request(args: argparse.Namespace, parts: tuple[str, ...], body: Any = None, query: dict[str, str] | None = None) -> Any:
    """Send a request to the path of ``parts`` (each quoted) and ``query`` on the server
    at ``args.url`` (a POST of ``body`` as JSON, a GET when it is None) and return its
    JSON answer. An /_admin path carries the admin token, others the client token.

    Raises:
        SystemExit: 1 when the server answered with an error, 2 when it could not be
            reached; the reason is printed to stderr first.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    url = args.url.rstrip("/") + "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = _authorization(admin=parts[0] == "_admin")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        _print_http_error(exc)
        raise SystemExit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        print(f"dotdo {args.command}: cannot reach {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        raise SystemExit(2) from None


def _authorization(admin: bool) -> dict[str, str]:
    """The Authorization header for a request to the server: the admin token
    ($DOTDO_ADMIN_TOKEN) for /_admin routes, the client token ($DOTDO_TOKEN) for the
    others; none when the variable is unset. Tokens come from the environment only,
    never from the command line, which other users can read."""
    token = os.environ.get("DOTDO_ADMIN_TOKEN" if admin else "DOTDO_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_serve(args: argparse.Namespace) -> int:
    from dotdo.actors.examples import EXAMPLES
    from dotdo.loader import load_kinds
    from dotdo.logs import configure
    from dotdo.options import ServeOptions
    from dotdo.server import quiet_libraries, run
    from dotdo.storage.errors import DotdoError
    from dotdo.storage.options import Durability
    from dotdo.workers import default_workers

    configure(args.log_level, args.log_format)
    quiet_libraries()
    try:
        kinds = load_kinds(args.modules) if args.modules else list(EXAMPLES)
    except DotdoError as exc:
        print(f"dotdo serve: {exc}", file=sys.stderr)
        return 2
    options = ServeOptions(
        host=args.host,
        port=args.port,
        data_dir=args.data,
        durability=Durability(args.durability),
        history=args.history,
        read_only=args.read_only,
        max_body=args.max_body,
        max_ws_message=args.max_ws_message,
        idle_timeout=args.idle_timeout,
        max_active=args.max_active,
        call_timeout=args.call_timeout,
        cpu_limit=args.cpu_limit,
        max_mailbox=args.max_mailbox,
        shutdown_grace=args.shutdown_grace,
        max_connections=args.max_connections,
        max_websockets=args.max_websockets,
        access_log=args.access_log,
        log_format=args.log_format,
        keep_alive_timeout=args.keep_alive_timeout,
        read_timeout=args.read_timeout,
        debug=args.debug,
        env=dict(args.env),
        rpc_port=args.rpc_port,
        token=args.token,
        admin_token=args.admin_token,
        workers=args.workers or default_workers(),
        cluster=args.cluster,
        node=args.node,
        advertise=args.advertise,
        cluster_secret=os.environ.get("DOTDO_CLUSTER_SECRET") or None,
        lease_ttl=args.lease_ttl,
        slots=args.slots,
        drain_timeout=args.drain_timeout,
        replicas=args.replicas,
        ack=args.ack,
    )
    try:
        run(kinds, options)
    except (DotdoError, OSError) as exc:  # a port in use, an unusable data directory
        print(f"dotdo serve: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from dotdo.cluster_cli import main as cluster_main

    return cluster_main(args)


def cmd_call(args: argparse.Namespace) -> int:
    parse = str if args.text else _json_or_text
    body = {"args": [parse(a) for a in args.args], "kwargs": {k: parse(v) for k, v in args.kw}}
    try:
        return _post_and_print(args, ("_rpc", args.namespace, args.id, args.method), body)
    except SystemExit as exc:
        if exc.code == 1 and not args.text:
            _hint_text(args)
        raise


def _hint_text(args: argparse.Namespace) -> None:
    """After a refused call: say which arguments went as JSON values other than text,
    in case the method wanted text."""
    sent = [*args.args, *(v for _, v in args.kw)]
    typed = [(a, value) for a in sent if not isinstance(value := _json_or_text(a), str)]
    if typed:
        listed = ", ".join(f"{a} ({type(value).__name__})" for a, value in typed)
        print(
            f"note: sent as JSON values, not text: {listed}; for text, quote them as JSON ('\"{typed[0][0]}\"') or give --text",
            file=sys.stderr,
        )


def cmd_alarms(args: argparse.Namespace) -> int:
    query = {"namespace": args.namespace} if args.namespace else {}
    rows = _pages(args, ("_admin", "alarms"), "alarms", query, None)
    if _listed_as_json(args, rows):
        return 0
    if not rows:
        print("no pending alarms or schedules")
        return 0
    table = [("NEXT (UTC)", "ACTOR", "WHAT", "RETRIES")]
    for row in rows:
        actor = f"{row['namespace']}/{row['name'] if row['name'] is not None else row['id']}"
        what = "alarm" if row["kind"] == "alarm" else f"schedule {row['item']}: {row['schedule']}"
        table.append((_utc(row["next"]), actor, what, str(row["retries"])))
    _print_table(table)
    return 0


def cmd_actors(args: argparse.Namespace) -> int:
    rows = _pages(args, ("_admin", "actors", args.namespace), "actors", {}, args.after)
    if _listed_as_json(args, rows):
        return 0
    if not rows:
        print(f"no actors of {args.namespace}")
        return 0
    table = [("NAME", "ID", "BYTES", "LAST WRITE (UTC)", "ALARM (UTC)", "SCHEDULES")]
    for row in rows:
        name = row["name"] if row["name"] is not None else "-"
        table.append((name, row["id"][:16], f"{row['bytes']:,}", _utc(row["last_write"]), _utc(row["alarm"]), str(row["schedules"])))
    _print_table(table)
    return 0


def _pages(args: argparse.Namespace, parts: tuple[str, ...], key: str, query: dict[str, str], after: str | None) -> list[dict[str, Any]]:
    """Up to ``args.limit`` rows of a paged listing (``key`` of each page), from
    ``after``, at most 1,000 a request."""
    rows: list[dict[str, Any]] = []
    while len(rows) < args.limit:
        asked = {**query, "limit": str(min(1000, args.limit - len(rows)))}
        if after:
            asked["after"] = after
        page = _request(args, parts, query=asked)
        rows.extend(page[key])
        after = page.get("after")
        if not after:
            break
    return rows


def _listed_as_json(args: argparse.Namespace, rows: list[dict[str, Any]]) -> bool:
    """With ``--json``: print ``rows`` as JSON lines (and say so)."""
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return bool(args.json)


def _utc(iso: str | None) -> str:
    return "-" if iso is None else iso[:19].replace("T", " ")


def _print_table(table: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell (the last one not)."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])


def _print_http_error(exc: urllib.error.HTTPError) -> None:
    try:
        error = json.loads(exc.read())
        print(f"error {exc.code} {error.get('error')}: {error.get('message')}", file=sys.stderr)
    except ValueError:
        print(f"error {exc.code}: {exc.reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    handlers = {"serve": cmd_serve, "call": cmd_call, "alarms": cmd_alarms, "actors": cmd_actors, "cluster": cmd_cluster}
    try:
        code = handlers.get(args.command, cmd_lifecycle)(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (dotdo alarms --json | head): what was asked for was
        # taken; nothing more to say. stdout is pointed at nothing so that the
        # interpreter's own flush at exit does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
